"""Every node of a selected circuit lies on a path embed -> ... -> logits through its edges, on
every family's graph and both graph options (per-KV-head and per-query-head k/v receivers).

The failure this guards against (issue 32, part 6): on a grouped-query model (4 query heads
sharing 2 key/value heads) a kept edge into `L{l}.H{g}.k|v` reaches every query head of group g,
so a head of the group that writes into nothing alive was counted in the circuit although no path
leads from it to the logits; an MoE layer's MLP input reaches all its experts alike.

The truth here is an independent path search: the test's own map from a receiver to the nodes it
feeds (written from the naming rules in probe/names.py, not `analyses.graph.receiver_nodes`), a
breadth-first search forward from embed and backward from logits over the kept edges, and the
nodes on a path are those both searches find.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import conftest
import pytest
import replicas
import replicas_moe
import torch
from test_circuits import rendered, toy_examples
from test_probe import _root, folder

from analyses.circuits import attribute
from analyses.graph import Graph, circuit_nodes, prune_edges
from ar2mdm.common.family import FAMILIES as REGISTRY
from probe import ProbedModel
from probe.names import Shape

SIZES = range(1, 41)  # top-N for every N in 1..40
SEEDS = (0, 1, 2)
# Registry families without a replica of their own: the same architecture as a tiny AR model.
SAME_AS = {"a2d-qwen2": "qwen2", "a2d-llama": "llama"}
BUILDERS = {**replicas.BUILDERS, **replicas_moe.BUILDERS}
# Every family with a tiny model in tests/: the AR families of conftest, the registry's MDM families.
ALL = (*conftest.FAMILIES, *sorted({*BUILDERS, *REGISTRY}))


@cache
def checkpoint(family: str) -> Path:
    """A tiny checkpoint of `family`: conftest's AR model, or the family's replica (tests/replicas*.py)."""
    if family in conftest.FAMILIES or family in SAME_AS:
        return folder(SAME_AS.get(family, family))
    return BUILDERS[family](_root() / "paths" / family).path


@cache
def shapes(family: str) -> dict[str, Shape]:
    """The graph shapes of the family's tiny model under both k/v receiver options."""
    path = str(checkpoint(family))
    return {
        "grouped": ProbedModel.from_checkpoint(path, backend="torch").shape,
        "per-query": ProbedModel.from_checkpoint(path, backend="torch", ungroup_kv=True).shape,
    }


# --- the independent truth ------------------------------------------------------------------------


def fed(shape: Shape, receiver: str) -> list[str]:
    """The nodes a receiver feeds, from the naming rules: a q input its query head, a k/v input
    of key/value head g the query heads g*r .. g*r + r - 1, a dense MLP input its MLP, an MoE
    MLP input every expert (the shared one too), a router input the routed experts."""
    if receiver == "logits":
        return ["logits"]
    m = re.fullmatch(r"L(\d+)\.H(\d+)\.([qkv])", receiver)
    if m:
        layer, head, port = int(m[1]), int(m[2]), m[3]
        if port == "q":
            return [f"L{layer}.H{head}"]
        r = shape.n_heads // shape.n_kv_heads
        return [f"L{layer}.H{head * r + j}" for j in range(r)]
    m = re.fullmatch(r"L(\d+)\.(mlp|router)", receiver)
    assert m, receiver
    layer = int(m[1])
    if layer not in shape.moe_layers:
        assert m[2] == "mlp"
        return [receiver]
    routed = [f"L{layer}.expert{e}" for e in range(shape.n_experts)]
    return routed + ([f"L{layer}.shared_expert"] if m[2] == "mlp" and shape.shared_expert else [])


def on_path(shape: Shape, edges: list[str]) -> set[str]:
    """Nodes on a path embed -> ... -> logits through `edges`: found forward from embed and
    backward from logits, breadth first."""
    after: dict[str, set[str]] = {}
    before: dict[str, set[str]] = {}
    for edge in edges:
        sender, receiver = edge.split("->")
        for node in fed(shape, receiver):
            after.setdefault(sender, set()).add(node)
            before.setdefault(node, set()).add(sender)

    def search(start: str, step: dict[str, set[str]]) -> set[str]:
        seen, frontier = {start}, [start]
        while frontier:
            frontier = [n for node in frontier for n in step.get(node, ()) if n not in seen]
            seen.update(frontier)
        return seen

    return search("embed", after) & search("logits", before)


def touched(shape: Shape, edges: list[str]) -> set[str]:
    """Every node an edge of `edges` leaves or feeds: what the circuit's nodes were taken to be."""
    out: set[str] = set()
    for edge in edges:
        sender, receiver = edge.split("->")
        out |= {sender, *fed(shape, receiver)}
    return out


def check(shape: Shape, graph: Graph, n: int) -> bool:
    """Assert the invariant for `graph`'s top-n circuit; True when the edges also feed nodes off
    every path (the case the circuit's nodes must leave out)."""
    circuit = graph.select(top_n=n)
    chosen = graph.top(n)
    nodes = on_path(shape, list(circuit))
    where = f"top {n} of {shape.describe()}"
    assert set(circuit.nodes) == nodes, f"{where}: nodes off every path {set(circuit.nodes) - nodes}"
    assert circuit.nodes == [x for x in graph.senders + ["logits"] if x in nodes], f"{where}: order"
    for edge in circuit:  # every kept edge joins two nodes of the circuit
        sender, receiver = edge.split("->")
        assert sender in nodes and set(fed(shape, receiver)) & nodes, f"{where}: {edge} on no path"
    # pruning loses no path, and keeps every chosen edge on one
    assert on_path(shape, chosen) == nodes, where
    assert circuit_nodes(shape, chosen) == circuit.nodes == graph.select(top_n=n, prune=False).nodes, where
    full = {e for e in chosen if e.split("->")[0] in nodes and set(fed(shape, e.split("->")[1])) & nodes}
    assert set(circuit) == full and len(circuit) == len(full), where
    return bool(touched(shape, list(circuit)) - nodes)


def sweep(shape: Shape) -> int:
    """Check the invariant for every N and seed on random scores; return how many circuits had
    edges feeding nodes off every path."""
    dangling = 0
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(seed)
        graph = Graph(shape, torch.randn(len(Graph(shape)), generator=gen, dtype=torch.float64))
        dangling += sum(check(shape, graph, n) for n in SIZES)
    return dangling


# --- tests ----------------------------------------------------------------------------------------


def test_a_head_that_only_shares_a_kept_kv_input_is_no_node() -> None:
    """embed -> L0.H0.k reaches query heads 0 and 1 (one KV head); only head 1 sends on to logits."""
    shape = Shape(n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=4)
    circuit = prune_edges(shape, ["embed->L0.H0.k", "L0.H1->logits", "L0.H0->L0.mlp"])
    assert circuit == ["embed->L0.H0.k", "L0.H1->logits"]
    assert circuit.nodes == ["embed", "L0.H1", "logits"]
    assert prune_edges(shape, ["embed->L0.H0.k"]).nodes == [] == circuit_nodes(shape, [])


def test_ioi_circuits_of_the_tiny_grouped_query_model_are_connected() -> None:
    """The reported case: EAP-IG on IOI prompts, tiny Llama with 4 query heads on 2 KV heads; its
    top-N circuits for N in 1..40 include ones whose k/v edges feed heads off every path."""
    pm = ProbedModel.from_checkpoint(folder("llama"), backend="torch")
    assert (pm.shape.n_heads, pm.shape.n_kv_heads) == (4, 2)
    graph = attribute(pm, rendered(pm, toy_examples(4)), method="eap-ig-inputs", steps=2, nodes=False)
    assert sum(check(pm.shape, graph, n) for n in SIZES) > 0  # the failure's case occurs


def test_every_family_is_covered() -> None:
    assert set(REGISTRY) <= set(ALL) and set(SAME_AS) <= set(REGISTRY)


@pytest.mark.parametrize("family", ALL)
def test_selected_circuits_lie_on_paths_to_the_logits(family: str) -> None:
    """For each graph option: random scores, every N in 1..40, three seeds."""
    for option, shape in shapes(family).items():
        dangling = sweep(shape)
        grouped = option == "grouped" and shape.n_kv_heads < shape.n_heads
        if grouped or shape.moe_layers:  # receivers feeding several nodes: the case is exercised
            assert dangling > 0, (family, option)
        else:  # one node per receiver: every node an edge touches is on a path
            assert dangling == 0, (family, option)
