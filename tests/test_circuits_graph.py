"""The circuit graph without a model: edges, pruning, top-k, Jaccard, s(v), Spearman and JSON,
each against a hand computation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analyses.graph import (
    Graph,
    check_top_k,
    compare_scores,
    default_ks,
    forward_edges,
    jaccard,
    jaccard_curve,
    node_importance,
    prune_edges,
    spearman,
)
from ar2mdm.common.errors import UserError
from probe.interventions import Interventions
from probe.names import Shape

GQA = Shape(n_layers=1, n_heads=2, n_kv_heads=1, d_mlp=4)  # both query heads share KV head 0
MHA = Shape(n_layers=2, n_heads=2, n_kv_heads=2, d_mlp=4)
TINY = Shape(n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64)  # tests/conftest.py's tiny models


def test_edges_by_hand() -> None:
    g = Graph(GQA)
    assert g.senders == ["embed", "L0.H0", "L0.H1", "L0.mlp"]
    assert g.receivers == ["L0.H0.q", "L0.H1.q", "L0.H0.k", "L0.H0.v", "L0.mlp", "logits"]
    assert g.edges == [
        "embed->L0.H0.q",
        "embed->L0.H1.q",
        "embed->L0.H0.k",
        "embed->L0.H0.v",
        "embed->L0.mlp",
        "embed->logits",
        "L0.H0->L0.mlp",
        "L0.H0->logits",
        "L0.H1->L0.mlp",
        "L0.H1->logits",
        "L0.mlp->logits",
    ]
    # embed -> 19 receivers; each L0 head -> L0.mlp, 9 receivers of L1, logits; L0.mlp -> 9 + logits;
    # each L1 head -> L1.mlp, logits; L1.mlp -> logits
    assert len(Graph(TINY)) == 19 + 4 * 11 + 10 + 4 * 2 + 1 == 82


def test_edges_are_exactly_what_probe_can_patch() -> None:
    iv = Interventions(TINY)
    iv.patch_edge("*", "*", torch.zeros(()))
    assert [f"{e.sender}->{e.receiver}" for e in iv.edges] == Graph(TINY).edges
    assert len(forward_edges(TINY)) == len(iv.edges)


def test_top_k_orders_by_magnitude_with_stable_ties() -> None:
    g = Graph(GQA, {"L0.H1->logits": -3.0, "embed->L0.H0.k": 2.0, "embed->logits": 2.0, "L0.mlp->logits": 0.5})
    assert g.top(3) == ["L0.H1->logits", "embed->L0.H0.k", "embed->logits"]  # tie: canonical order
    assert g.top(0) == []
    assert len(g.top(100)) == len(g)
    assert g.select(threshold=2.0, prune=False) == ["embed->L0.H0.k", "embed->logits", "L0.H1->logits"]


def test_pruning_by_hand_gqa() -> None:
    # embed -> L0.H0.k feeds KV head 0, shared by query heads 0 and 1: both are reached.
    # L0.H0 -> L0.mlp leads nowhere (L0.mlp sends nothing), so it goes; L0.H1 -> logits stays.
    # L0.H0 is reached but sends nothing on: no node of the circuit (tests/test_circuit_paths.py)
    circuit = ["embed->L0.H0.k", "L0.H1->logits", "L0.H0->L0.mlp"]
    assert prune_edges(GQA, circuit) == ["embed->L0.H0.k", "L0.H1->logits"]
    assert prune_edges(GQA, circuit).nodes == ["embed", "L0.H1", "logits"]


def test_pruning_by_hand_two_layers() -> None:
    chain = ["embed->L0.H0.q", "L0.H0->L1.H1.v", "L1.H1->logits"]
    dangling = [
        "L0.H1->logits",  # L0.H1 reads nothing from embed
        "embed->L1.mlp",  # L1.mlp writes nowhere
        "L1.H0->logits",
    ]  # L1.H0 reads nothing
    assert prune_edges(MHA, chain + dangling) == chain
    assert prune_edges(MHA, chain[:2]) == []  # no path reaches logits
    assert prune_edges(MHA, ["embed->logits"]) == ["embed->logits"]
    g = Graph(MHA, {e: float(i + 1) for i, e in enumerate(chain + dangling)})
    assert g.select(top_n=6) == chain
    assert g.select(top_n=6, prune=False) == [e for e in g.edges if e in chain + dangling]


def test_jaccard_by_hand() -> None:
    a = Graph(MHA, {"embed->logits": 5.0, "L0.H0->logits": -4.0, "L1.mlp->logits": 1.0})
    b = Graph(MHA, {"L0.H0->logits": 9.0, "L1.mlp->logits": -8.0, "embed->logits": 0.5})
    assert jaccard(a, b, 1) == 0.0  # {embed->logits} vs {L0.H0->logits}
    assert jaccard(a, b, 2) == pytest.approx(1 / 3)  # {e, h} vs {h, m}: 1 shared of 3
    assert jaccard(a, b, 3) == 1.0
    ks, values = jaccard_curve(a, b, [1, 2, 3])
    assert ks == [1, 2, 3] and values == [0.0, pytest.approx(1 / 3), 1.0]
    ks, values = jaccard_curve(a, a)
    assert ks[0] == 1 and ks[-1] == len(a) and all(v == 1.0 for v in values)
    assert default_ks(1) == [1] and default_ks(0) == []


def test_top_k_up_to_the_edge_count_is_accepted_beyond_it_refused() -> None:
    """K equal to the graph's edges is a valid (if extreme) Jaccard; one more would silently be
    the same selection, so it is refused with the largest allowed value."""
    a = Graph(MHA, {"embed->logits": 5.0, "L0.H0->logits": -4.0})
    b = Graph(MHA, {"L1.mlp->logits": 1.0})
    n = len(a.edges)
    assert check_top_k(n, n) == n
    assert jaccard(a, b, n) == 1.0
    with pytest.raises(UserError, match=f"only {n} edges; the largest allowed value is {n}"):
        jaccard(a, b, n + 1)
    with pytest.raises(UserError, match="k_nodes is 11, but this model's graph has only 10 nodes"):
        check_top_k(11, 10, what="nodes", option="k_nodes")
    with pytest.raises(UserError, match="must be an integer >= 1"):
        check_top_k(0, 10)
    assert compare_scores(a, b, top=10_000)["top"] == n  # compare_scores documents its cut


def test_architecture_mismatch_names_the_differing_field() -> None:
    """Graphs that differ only in KV heads: the message shows that field and both full shapes."""
    other = Shape(n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=4)
    with pytest.raises(UserError, match=r"KV heads per layer 2 \(first\) vs 1 \(second\)"):
        jaccard(Graph(MHA), Graph(other), 1)
    assert MHA.differences(MHA) == ""


def test_node_importance_by_hand_with_shared_kv() -> None:
    g = Graph(GQA, {"L0.H1->logits": -3.0, "embed->L0.H0.k": 2.0, "embed->logits": 1.0, "embed->L0.H1.q": 0.5})
    s = node_importance(g, 3)  # top 3: L0.H1->logits, embed->L0.H0.k, embed->logits
    assert list(s) == ["embed", "L0.H0", "L0.H1", "L0.mlp", "logits"]
    assert s == {"embed": 3.0, "L0.H0": 1.0, "L0.H1": 3.0 + 1.0, "L0.mlp": 0.0, "logits": 4.0}
    everything = node_importance(g)
    assert everything["L0.H1"] == 3.0 + 1.0 + 0.5
    assert sum(everything.values()) == pytest.approx(2 * g.scores.abs().sum().item())


def test_spearman_by_hand() -> None:
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(1.5 * 2))  # average ranks
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    a = Graph(MHA, torch.arange(len(Graph(MHA)), dtype=torch.float64))
    cmp = compare_scores(a, a, top=5)
    assert (
        cmp["spearman_all"] == pytest.approx(1.0)
        and cmp["spearman_top"] == pytest.approx(1.0)
        and cmp["jaccard_top"] == 1.0
    )


def test_json_round_trip_is_exact(tmp_path) -> None:
    scores = torch.randn(len(Graph(TINY)), generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 3
    g = Graph(TINY, scores, {"L0.H1": -0.1234567890123, "embed": 1e-300}, {"method": "eap", "n_examples": 4})
    back = Graph.load(g.save(tmp_path / "sub" / "g.json"))
    assert torch.equal(back.scores, g.scores)
    assert back.node_scores == g.node_scores and back.meta == g.meta and back.shape == g.shape
    data = json.loads((tmp_path / "sub" / "g.json").read_text())
    assert data["format"] == "ar2mdm.circuit-graph" and list(data["edges"]) == g.edges


def test_graph_errors(tmp_path) -> None:
    g = Graph(MHA)
    with pytest.raises(UserError, match="not an edge of this graph"):
        Graph(MHA, {"L1.H0->L0.H1.q": 1.0})
    with pytest.raises(UserError, match="not an edge name"):
        g.score("embed")
    with pytest.raises(UserError, match="layer 5 does not exist"):
        g.score("L5.H0->logits")
    with pytest.raises(UserError, match="exactly one of top_n"):
        g.select()
    with pytest.raises(UserError, match="exactly one of top_n"):
        g.select(top_n=3, threshold=0.1)
    with pytest.raises(UserError, match="threshold must be >= 0"):
        g.select(threshold=-1.0)
    with pytest.raises(UserError, match="different architectures"):
        jaccard(g, Graph(TINY), 3)
    with pytest.raises(UserError, match="scores has shape"):
        Graph(MHA, torch.zeros(3))
    with pytest.raises(UserError, match="node scores are kept for senders"):
        Graph(MHA, node_scores={"logits": 1.0})
    with pytest.raises(UserError, match="no circuit graph at"):
        Graph.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a circuit graph"):
        Graph.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not edges of this graph"):
        prune_edges(MHA, ["embed->L9.mlp"])
