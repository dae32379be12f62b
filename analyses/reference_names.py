"""ar2mdm's edge names beside those of the reference EAP-IG code (hannamw/EAP-IG, whose graph
follows ACDC's naming), so that a published EAP-IG run and an ar2mdm graph can be read edge for
edge.

    ar2mdm                      reference
    embed                       input
    L{l}.H{h}                   a{l}.h{h}
    L{l}.mlp                    m{l}
    logits                      logits
    S->L{l}.H{h}.q|k|v          S'->a{l}.h{h}<q|k|v>
    S->L{l}.mlp, S->logits      S'->m{l}, S'->logits

The reference code runs on TransformerLens with grouped-query attention ungrouped, so its k/v
edges are per query head: on a grouped-query model, compare it with a graph of the ungrouped
model (`ProbedModel.from_checkpoint(..., ungroup_kv=True)`, `--kv-receivers per-query`).

- `to_reference(edge)`, `from_reference(name)`: one name each way (UserError if malformed).
- `reference_scores(graph)`: {reference edge name: score}.
- `graph_from_reference(shape, scores)`: a `Graph` from reference names and scores: a flat
  mapping, or the reference code's saved JSON ({"edges": {name: {"score": s, ...}}}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analyses.graph import Graph, edge_name, split_edge
from ar2mdm.common.errors import UserError
from probe.names import Shape

_NODE = re.compile(r"a(\d+)\.h(\d+)|m(\d+)|input|logits")
_RECEIVER = re.compile(r"(a\d+\.h\d+)<([qkv])>|(m\d+|logits)")


def _node_to_reference(name: str) -> str:
    if name == "embed":
        return "input"
    if name == "logits":
        return name
    m = re.fullmatch(r"L(\d+)\.H(\d+)", name) or re.fullmatch(r"L(\d+)\.mlp", name)
    if m is None:
        raise UserError(f"{name!r} is not a sender or logits of an ar2mdm graph.")
    return f"a{m[1]}.h{m[2]}" if "H" in name else f"m{m[1]}"


def _node_from_reference(name: str) -> str:
    m = _NODE.fullmatch(name)
    if m is None:
        raise UserError(f"{name!r} is not a node of the reference graph (input, a<l>.h<h>, m<l>, logits).")
    if name in ("input", "logits"):
        return "embed" if name == "input" else name
    return f"L{m[1]}.H{m[2]}" if m[1] is not None else f"L{m[3]}.mlp"


def to_reference(edge: str) -> str:
    """The reference EAP-IG name of an ar2mdm edge ("L0.H1->L2.H3.k" -> "a0.h1->a2.h3<k>")."""
    sender, receiver = split_edge(edge)
    m = re.fullmatch(r"L(\d+)\.H(\d+)\.([qkv])", receiver)
    child = f"a{m[1]}.h{m[2]}<{m[3]}>" if m else _node_to_reference(receiver)
    return f"{_node_to_reference(sender)}->{child}"


def from_reference(name: str) -> str:
    """The ar2mdm name of a reference EAP-IG edge ("input->m0" -> "embed->L0.mlp")."""
    parent, sep, child = name.partition("->")
    m = _RECEIVER.fullmatch(child) if sep else None
    if m is None:
        raise UserError(f"{name!r} is not a reference edge name (parent->a<l>.h<h><q|k|v>, parent->m<l>, ...).")
    if m[1] is not None:
        receiver = f"{_node_from_reference(m[1])}.{m[2]}"
    else:
        receiver = _node_from_reference(m[3])
    return edge_name(_node_from_reference(parent), receiver)


def _per_query(shape: Shape) -> None:
    if shape.n_kv_heads != shape.n_heads:
        raise UserError(
            f"this graph keys k/v receivers per key/value head ({shape.n_kv_heads} of {shape.n_heads} heads); "
            "the reference names them per query head. Attribute the ungrouped model "
            "(ProbedModel.from_checkpoint(..., ungroup_kv=True) or --kv-receivers per-query)."
        )


def reference_scores(graph: Graph) -> dict[str, float]:
    """{reference edge name: score} of every edge of `graph` (UserError for a grouped-query graph
    whose k/v receivers are per key/value head)."""
    _per_query(graph.shape)
    return {to_reference(e): float(s) for e, s in zip(graph.edges, graph.scores, strict=True)}


def graph_from_reference(shape: Shape, scores: Mapping[str, Any] | str | Path, **meta: Any) -> Graph:
    """A Graph of `shape` holding reference-named scores.

    scores: {reference edge name: score}, the reference code's JSON as a dict, or a path to it.
    Raises UserError for a name that is not an edge of this shape, or for edges of the shape
    that the scores lack (the two graphs must be the same).
    """
    _per_query(shape)
    if isinstance(scores, str | Path):
        scores = json.loads(Path(scores).read_text())
    if "edges" in scores and isinstance(scores["edges"], Mapping):
        scores = {name: entry["score"] for name, entry in scores["edges"].items()}
    graph = Graph(shape)
    ours = {from_reference(name): float(value) for name, value in scores.items()}
    unknown = sorted(set(ours) - set(graph.edges))
    missing = [e for e in graph.edges if e not in ours]
    if unknown or missing:
        raise UserError(
            f"the reference scores do not cover this graph: {len(unknown)} edges unknown here "
            f"(e.g. {unknown[:3]}), {len(missing)} edges of the graph missing (e.g. {missing[:3]}). "
            "Check the model (layers, heads) and that k/v receivers are per query head on both sides."
        )
    return Graph(shape, ours, meta={"source": "reference EAP-IG names", **meta})
