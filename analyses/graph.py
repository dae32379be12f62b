"""The computational graph circuits live in: canonical nodes, forward edges, scores, selection.

A transformer reads as a residual stream that *senders* write into and *receivers* read from:

    senders    embed, L{l}.H{h}, L{l}.mlp
    receivers  L{l}.H{h}.q, L{l}.H{g}.k, L{l}.H{g}.v, L{l}.mlp, logits

An edge `sender->receiver` exists when the receiver reads the stream after the sender wrote to it:
the sender's layer is below the receiver's, or the sender is a head of the layer whose MLP
receives (`probe.interventions.downstream`, the rule the probe's edge patching uses). Under
grouped-query attention `L{l}.H{g}.k|v` name key/value head g, which serves query heads
g*r .. g*r + r - 1 (r = n_heads / n_kv_heads). A receiver belongs to a *node*: q/k/v receivers to
their head(s), the MLP receiver to its MLP, logits to itself.

`Graph` holds one score per edge (float64, in canonical order: senders in forward order, then
receivers in forward order) and optionally one per sender node, with the method, metric and data
that produced them (`meta`). Everything here is pure: no model is needed, so selection, pruning,
overlap and importance are checked against hand computations.

- `Graph.top(k)`: the k edges of largest |score| (ties broken by canonical order).
- `Graph.select(top_n=, threshold=, prune=True)` and `prune_edges(shape, edges)`: a `Circuit`,
  keeping only edges on some path from `embed` to `logits`; its `nodes` are the nodes on such a
  path (`circuit_nodes`), so a query head that only shares a kept k/v input of its key/value
  head, or an expert that only shares its MoE layer's kept input, is no node of the circuit.
- `jaccard(a, b, k)` / `jaccard_curve`: overlap of two graphs' top-k edge sets (`check_top_k`
  refuses a K above the graph's edges).
- `node_importance(graph, k)`: s(v) = sum of |score| over the top-k edges entering or leaving v.
- `spearman`, `compare_scores`: rank agreement of two scorings (e.g. EAP-IG vs exact patching).
- `Graph.save` / `Graph.load`: JSON.

    >>> from probe.names import Shape
    >>> g = Graph(Shape(n_layers=1, n_heads=1, n_kv_heads=1, d_mlp=4))
    >>> g.edges[:3]
    ['embed->L0.H0.q', 'embed->L0.H0.k', 'embed->L0.H0.v']
    >>> len(g.edges), len(g.senders), len(g.receivers)
    (8, 3, 5)
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import atomic_write_text
from probe.interventions import downstream
from probe.names import Shape, parse

SEP = "->"
FORMAT = "ar2mdm.circuit-graph"
VERSION = 1


def edge_name(sender: str, receiver: str) -> str:
    return f"{sender}{SEP}{receiver}"


def split_edge(edge: str) -> tuple[str, str]:
    """(sender, receiver) of an edge name; UserError if it is not `sender->receiver`."""
    parts = edge.split(SEP)
    if len(parts) != 2:
        raise UserError(f"{edge!r} is not an edge name; edges look like 'L0.H1->L2.H3.q' or 'embed->logits'.")
    return parts[0], parts[1]


def forward_edges(shape: Shape) -> list[tuple[str, str]]:
    """Every (sender, receiver) pair of the graph, senders in forward order, then receivers."""
    return list(_skeleton(shape)[0])


@functools.lru_cache(maxsize=16)
def _skeleton(shape: Shape) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...], Mapping[str, int]]:
    """(pairs, edge names, name -> index) of a shape's graph, built once per shape (a 120k-edge
    graph takes a second of Python to enumerate; every `Graph` of the shape shares them, read-only)."""
    receivers = [(r, parse(r)) for r in shape.all_receivers()]
    pairs: list[tuple[str, str]] = []
    for s in shape.senders():
        sn = parse(s)
        pairs += [(s, r) for r, rn in receivers if downstream(sn, rn)]
    edges = tuple(edge_name(s, r) for s, r in pairs)
    return tuple(pairs), edges, MappingProxyType({e: i for i, e in enumerate(edges)})


def nodes(shape: Shape) -> list[str]:
    """The graph's nodes in forward order: embed, each layer's heads and MLP, logits."""
    return [*shape.senders(), "logits"]


def receiver_nodes(shape: Shape, receiver: str) -> list[str]:
    """The node(s) a receiver feeds: a q input its head, a k/v input every query head of its
    group (grouped-query attention), an MLP input its MLP, logits itself; in an MoE layer the
    MLP input every expert of the layer (the shared one too) and the router's input the routed
    experts."""
    n = parse(receiver)
    if n.kind == "router":
        return [e for e in shape.experts(n.layer) if not e.endswith("shared_expert")]
    if n.kind == "mlp" and shape.is_moe(n.layer):
        return shape.experts(n.layer)
    if n.kind == "receiver":
        if n.port == "q":
            return [f"L{n.layer}.H{n.head}"]
        r = shape.n_heads // shape.n_kv_heads
        return [f"L{n.layer}.H{h}" for h in range(n.head * r, (n.head + 1) * r)]
    return [receiver]


class Graph:
    """Edge scores (and optional sender-node scores) over one architecture's graph.

    shape: the model's sizes (`ProbedModel.shape`); only layers and heads shape the graph.
    scores: one float per edge, as a tensor in `edges` order or a mapping edge name -> score
        (missing edges score 0); default zeros.
    node_scores: sender name -> score (what patching or attributing that whole node gives).
    meta: how the scores were made (method, metric, steps, model, task, examples, ...).
    examples: optional [N, edges] per-example scores whose mean over examples is `scores`
        (`attribute(..., per_example=True)`); kept in memory for bootstraps, not saved.
    """

    def __init__(
        self,
        shape: Shape,
        scores: Tensor | Mapping[str, float] | None = None,
        node_scores: Mapping[str, float] | None = None,
        meta: Mapping[str, Any] | None = None,
        examples: Tensor | None = None,
    ) -> None:
        if shape.n_kv_heads < 1 or shape.n_heads % shape.n_kv_heads:
            raise UserError(f"n_heads ({shape.n_heads}) must be a multiple of n_kv_heads ({shape.n_kv_heads}).")
        self.shape = shape
        pairs, edges, self.index = _skeleton(shape)  # enumerated once per shape; the index shared
        self.pairs, self.edges = list(pairs), list(edges)
        self.senders = shape.senders()
        self.receivers = shape.all_receivers()
        self.scores = self._scores(scores)
        self.node_scores: dict[str, float] = {}
        for name, value in (node_scores or {}).items():
            if name not in self.senders:
                raise UserError(
                    f"node score for {name!r}: node scores are kept for senders ({', '.join(self.senders[:4])}, ...)."
                )
            self.node_scores[name] = float(value)
        self.meta: dict[str, Any] = dict(meta or {})
        if examples is not None and (examples.ndim != 2 or examples.shape[1] != len(self.edges)):
            raise UserError(
                f"examples must be [N, {len(self.edges)}] per-example edge scores, got {list(examples.shape)}."
            )
        self.examples = examples

    def _scores(self, scores: Tensor | Mapping[str, float] | None) -> Tensor:
        out = torch.zeros(len(self.edges), dtype=torch.float64)
        if scores is None:
            return out
        if isinstance(scores, Tensor):
            if scores.shape != out.shape:
                raise UserError(f"scores has shape {list(scores.shape)}; this graph has {len(self.edges)} edges.")
            return scores.detach().to("cpu", torch.float64).clone()
        for edge, value in scores.items():
            out[self._index(edge)] = float(value)
        return out

    def _index(self, edge: str) -> int:
        try:
            return self.index[edge]
        except KeyError:
            sender, receiver = split_edge(edge)
            self.shape.check(sender)
            self.shape.check(receiver)
            raise UserError(
                f"{edge!r} is not an edge of this graph: senders are embed, L{{l}}.H{{h}}, L{{l}}.mlp; "
                "receivers L{l}.H{h}.q|k|v, L{l}.mlp, logits, strictly downstream of the sender."
            ) from None

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.meta.items() if k in ("method", "metric", "model", "task"))
        return f"Graph({len(self.edges)} edges, {self.shape.n_layers} layers x {self.shape.n_heads} heads{', ' + what if what else ''})"

    def score(self, edge: str) -> float:
        return float(self.scores[self._index(edge)])

    def as_dict(self) -> dict[str, float]:
        """Edge name -> score, in canonical order."""
        return dict(zip(self.edges, self.scores.tolist(), strict=True))

    def matrix(self) -> Float[Tensor, "senders receivers"]:
        """Scores as a [senders, receivers] float64 matrix; NaN where no edge exists."""
        out = torch.full((len(self.senders), len(self.receivers)), math.nan, dtype=torch.float64)
        si = {s: i for i, s in enumerate(self.senders)}
        ri = {r: i for i, r in enumerate(self.receivers)}
        for (s, r), value in zip(self.pairs, self.scores.tolist(), strict=True):
            out[si[s], ri[r]] = value
        return out

    def with_scores(self, scores: Float[Tensor, " edges"] | Mapping[str, float], **meta: Any) -> Graph:
        """A graph of the same shape with other scores (node scores dropped, meta updated)."""
        return Graph(self.shape, scores, None, {**self.meta, **meta})

    # --- selection ------------------------------------------------------------------------------

    def order(self) -> list[int]:
        """Edge indices by descending |score|; ties keep canonical order (a stable sort); NaN
        scores (edges not scored: `attribute(..., edges=)`) come last."""
        key = torch.nan_to_num(-self.scores.abs(), nan=float("inf"))
        return torch.argsort(key, stable=True).tolist()

    def top(self, k: int) -> list[str]:
        """The k edges of largest |score| (all edges if k exceeds their number)."""
        if not isinstance(k, int) or k < 0:
            raise UserError(f"k must be a non-negative integer, got {k!r}.")
        return [self.edges[i] for i in self.order()[:k]]

    def select(self, top_n: int | None = None, threshold: float | None = None, *, prune: bool = True) -> Circuit:
        """A circuit: the top_n edges by |score|, or every edge with |score| >= threshold (exactly
        one of the two), then (prune=True) only the edges on a path from embed to logits.

        Returns a `Circuit`: the edge names in canonical order (a list, what `faithfulness`
        keeps clean) with `nodes`, the nodes on a path embed -> ... -> logits through them. With
        prune=False the edges are every chosen one, dangling ones included; `nodes` is the same."""
        if (top_n is None) == (threshold is None):
            raise UserError(
                "select a circuit with exactly one of top_n= (number of edges) or threshold= (minimum |score|)."
            )
        if top_n is not None:
            chosen = self.top(top_n)
        else:
            if not threshold >= 0:
                raise UserError(f"threshold must be >= 0 (it is compared with |score|), got {threshold!r}.")
            chosen = [e for e, v in zip(self.edges, self.scores.abs().tolist(), strict=True) if v >= threshold]
        kept, on_path = _paths(self.shape, chosen)
        if prune:
            return Circuit(kept, on_path)
        keep = set(chosen)
        return Circuit([e for e in self.edges if e in keep], on_path)

    # --- JSON -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "shape": self.shape.to_dict(),
            "meta": self.meta,
            "edges": self.as_dict(),
            "nodes": self.node_scores,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Graph:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise UserError(f"not a circuit graph (expected a JSON object with format {FORMAT!r}).")
        if data.get("version") != VERSION:
            raise UserError(f"circuit graph version {data.get('version')!r}; this code reads version {VERSION}.")
        try:
            shape = Shape.from_dict(data["shape"])
            edges = dict(data["edges"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"malformed circuit graph: {err}.") from None
        graph = cls(shape, edges, data.get("nodes") or {}, data.get("meta") or {})
        if len(edges) != len(graph.edges):
            raise UserError(f"the file scores {len(edges)} edges; a graph of this shape has {len(graph.edges)}.")
        return graph

    def save(self, path: str | Path) -> Path:
        """Write the graph as JSON (scores as exact decimal floats) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no circuit graph at {path}; write one with Graph.save.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(
                f"{path} is not JSON ({err}): it is damaged or not a circuit graph; write it again with Graph.save."
            ) from None
        return cls.from_dict(data)


# --- pruning ------------------------------------------------------------------------------------


class Circuit(list[str]):
    """A selected circuit: a list of edge names (`sender->receiver`, canonical order), as
    `Graph.select` and `prune_edges` return it, that also names its nodes.

    nodes: the nodes (`nodes(shape)` names, in forward order) on a path embed -> ... -> logits
    through the circuit's edges; [] when no path exists. Under grouped-query attention an edge
    into `L{l}.H{g}.k|v` reaches every query head of group g, but only the heads of the group
    that also send on to logits are nodes: a head whose keys or values the kept edge changes but
    whose output reaches the logits through no edge of the circuit is not part of it (patching
    the circuit, nothing it writes gets to the logits, so it changes nothing). The same holds for
    the experts an MoE layer's MLP or router input reaches. With per-query-head k/v receivers
    (`ungroup_kv=True`) and in dense layers every receiver feeds one node, and the nodes are
    exactly those the edges join. A circuit compares equal to the plain list of its edges.
    """

    def __init__(self, edges: Iterable[str] = (), nodes: Iterable[str] = ()) -> None:
        super().__init__(edges)
        self.nodes: list[str] = list(nodes)


def _paths(shape: Shape, edges: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the edges of `edges` on a path embed -> ... -> logits, the nodes on such a path), both in
    canonical order. UserError for a name that is not an edge of `shape`'s graph.

    A head is reached from the input when an edge into one of its q/k/v receivers comes from a
    reached sender (a k/v receiver reaches every head of its group); an MLP or expert when its
    receiver is. A node is alive (reaches logits) when one of its edges goes to a receiver that
    feeds an alive node. The nodes on a path are those both reached and alive; an edge is on a
    path iff its sender is reached and its receiver feeds an alive node (which the edge then
    reaches): embed reaches the sender and the receiver reaches logits.
    """
    chosen = set(edges)
    pairs = forward_edges(shape)
    known = {edge_name(s, r) for s, r in pairs}
    unknown = chosen - known
    if unknown:
        raise UserError(
            f"not edges of this graph: {sorted(unknown)[:3]}; edges are 'sender->receiver' names as in "
            "Graph.edges (analyses.graph.forward_edges)."
        )
    kept = [(s, r) for s, r in pairs if edge_name(s, r) in chosen]
    feeds = {r: receiver_nodes(shape, r) for r in shape.all_receivers()}
    order = nodes(shape)

    out_of: dict[str, list[str]] = {n: [] for n in order}
    into: dict[str, list[str]] = {n: [] for n in order}  # node -> senders of edges into its receivers
    for s, r in kept:
        out_of[s].append(r)
        for node in feeds[r]:
            into[node].append(s)
    reached = {"embed"}
    for node in order[1:]:
        if any(s in reached for s in into[node]):
            reached.add(node)
    alive = {"logits"}
    for node in reversed(order[:-1]):
        if any(any(n in alive for n in feeds[r]) for r in out_of[node]):
            alive.add(node)
    on_path = [n for n in order if n in reached and n in alive]
    return [edge_name(s, r) for s, r in kept if s in reached and any(n in alive for n in feeds[r])], on_path


def prune_edges(shape: Shape, edges: Iterable[str]) -> Circuit:
    """The edges of `edges` that lie on a path embed -> ... -> logits, as a `Circuit` (canonical
    order) whose `nodes` are the nodes on such a path. UserError for a name that is not an edge
    of `shape`'s graph."""
    return Circuit(*_paths(shape, edges))


def circuit_nodes(shape: Shape, edges: Iterable[str]) -> list[str]:
    """The nodes on a path embed -> ... -> logits through `edges`, in forward order: the `nodes`
    of their `Circuit` (pruned or not, the same). A query head that only shares a k/v input of
    its key/value head with such a path is not one of them (see `Circuit`)."""
    return _paths(shape, edges)[1]


# --- comparing graphs ---------------------------------------------------------------------------


def _same_architecture(a: Graph, b: Graph) -> None:
    """UserError unless the two graphs have the same edges: the same layers, heads and KV heads
    (the MLP width adds no edges)."""
    sa, sb = a.shape, b.shape
    if (sa.n_layers, sa.n_heads, sa.n_kv_heads) != (sb.n_layers, sb.n_heads, sb.n_kv_heads):
        raise UserError(
            f"graphs of different architectures ({a.shape.differences(b.shape, ('first', 'second'))}) "
            "have no common edges to overlap; compare a model with its own conversion."
        )


def check_top_k(k: int, available: int, *, what: str = "edges", option: str = "k") -> int:
    """`k`, checked as the K of a top-K selection from `available` items (a graph's edges or nodes).

    K must be an integer in 1..available: a K above the graph's size would select every item (a
    Jaccard overlap of 1.00 for any two models), so it is refused rather than cut down. option:
    how the caller names K (`--k-edges`, `k_nodes`), for the message. Raises UserError saying the
    largest allowed value.

    >>> check_top_k(82, 82)
    82
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"{option} must be an integer >= 1, got {k!r}.")
    if k > available:
        raise UserError(
            f"{option} is {k}, but this model's graph has only {available} {what}; the largest allowed value "
            f"is {available} (a larger K would select all of them, and any two models would overlap fully)."
        )
    return k


def jaccard(a: Graph, b: Graph, k: int) -> float:
    """|A & B| / |A | B| for the top-k edge sets A of `a` and B of `b` (same architecture).

    Raises UserError for graphs of different architectures and for k outside 1..edges
    (`check_top_k`)."""
    _same_architecture(a, b)
    check_top_k(k, len(a.edges))
    top_a, top_b = set(a.top(k)), set(b.top(k))
    return len(top_a & top_b) / len(top_a | top_b)


def default_ks(n_edges: int, points: int = 24) -> list[int]:
    """About `points` circuit sizes from 1 to n_edges, evenly spaced on a log scale."""
    if n_edges < 1:
        return []
    raw = torch.logspace(0, math.log10(n_edges), points, dtype=torch.float64).round().long().tolist()
    return sorted(set(raw) | {1, n_edges})


def jaccard_curve(a: Graph, b: Graph, ks: Sequence[int] | None = None) -> tuple[list[int], list[float]]:
    """(ks, Jaccard overlap of the top-k edges for each k); default ks: log-spaced 1 .. all edges."""
    _same_architecture(a, b)
    ks = default_ks(len(a.edges)) if ks is None else [int(k) for k in ks]
    return ks, [jaccard(a, b, k) for k in ks]


def node_importance(graph: Graph, k: int | None = None) -> dict[str, float]:
    """s(v): the sum of |score| over the top-k edges (all edges if k is None) entering or leaving v.

    Keys are every node's canonical name in forward order (`embed`, `L{l}.H{h}`, `L{l}.mlp`,
    `logits`), zero where no top edge touches the node. An edge into a head's q receiver counts
    for that head; one into a shared k/v receiver (grouped-query attention) is split equally
    among the heads of its group, so the total is 2 x the top edges' |score| sum either way.
    """
    order = range(len(graph.edges)) if k is None else [graph.index[e] for e in graph.top(k)]
    out = dict.fromkeys(nodes(graph.shape), 0.0)
    feeds: dict[str, list[str]] = {}
    scores = graph.scores.abs().tolist()
    for i in order:
        s, r = graph.pairs[i]
        value = scores[i]
        out[s] += value
        targets = feeds.setdefault(r, receiver_nodes(graph.shape, r))
        for node in targets:
            out[node] += value / len(targets)
    return out


# --- rank agreement -----------------------------------------------------------------------------


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 of x, ties given their average rank (float64)."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty(len(x), dtype=torch.float64)
    i = 0
    values = sorted_x.tolist()
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(
    x: Float[Tensor, "*_shape"] | Sequence[int | float], y: Float[Tensor, "*_shape"] | Sequence[int | float]
) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if a side is constant."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise UserError(f"spearman needs two sequences of equal length, got {len(x)} and {len(y)}.")
    if len(x) < 2:
        raise UserError("spearman needs at least two values.")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


def compare_scores(graph: Graph, reference: Graph, top: int = 100) -> dict[str, float]:
    """How well `graph`'s edge scores rank edges like `reference`'s (e.g. exact patching).

    spearman_all: over every edge (signed scores). spearman_top: over the `top` edges of largest
    |reference score|. spearman_own_top: over `graph`'s own `top` edges (what a circuit built
    from `graph` keeps; the reference need only be scored there). spearman_abs: over every edge,
    on |score|. jaccard_top: overlap of the two top-`top` sets (of every edge when `top` exceeds
    their number; "top" says how many were used).
    """
    _same_architecture(graph, reference)
    top = min(top, len(graph.edges))
    idx = torch.tensor([reference.index[e] for e in reference.top(top)])
    own = torch.tensor([graph.index[e] for e in graph.top(top)])
    return {
        "spearman_all": spearman(graph.scores, reference.scores),
        "spearman_top": spearman(graph.scores[idx], reference.scores[idx]),
        "spearman_own_top": spearman(graph.scores[own], reference.scores[own]),
        "spearman_abs": spearman(graph.scores.abs(), reference.scores.abs()),
        "jaccard_top": jaccard(graph, reference, top),
        "top": float(min(top, len(graph.edges))),
    }
