"""Circuit discovery: score every edge of a model's graph, select circuits, test their faithfulness.

The graph (`analyses.graph`) joins senders (embed, heads, MLPs) to receivers (each head's q/k/v
input, each MLP's input, logits). An edge's importance is how much a task metric M moves when
that one edge carries its value from a *corrupted* input instead of the clean one (RESEARCH.md
section 4). Four ways to score it, one call (`attribute`) for all:

- "exact": activation patching, the ground truth. For each edge u->v, one forward pass on the
  clean input in which only v reads u's corrupted output (`probe`'s `patch_edge`); score =
  M(patched) - M(clean). Node scores likewise patch the whole node. One pass per edge (several
  edges share a pass as separate copies of the batch: `rows_per_pass`).
- "eap": edge attribution patching, the first-order estimate from one forward and backward pass
  on the clean input:  score(u->v) = sum over examples and positions of
  (a_u(corrupt) - a_u(clean)) . dM/d(input of v)  (gradient at the clean input).
- "eap-ig-inputs": the gradient averaged over `steps` inputs whose embeddings lie between the
  corrupted and the clean embeddings, alpha_k = (k + 1/2) / steps (midpoint rule; Hanna et al.
  2024). Cost: 2 forward passes and `steps` forward+backward passes per batch.
- "eap-ig-activations": the gradient averaged while one group of senders (the embedding, one
  layer's heads, or one MLP) outputs a_corrupt + alpha_k (a_clean - a_corrupt) and everything
  downstream runs on the clean input; an edge uses the passes of its sender's group.
  Cost: (2 n_layers + 1) x `steps` forward+backward passes per batch.

Scores are estimates of M(edge corrupted) - M(clean) averaged over examples: negative for an
edge the task needs (with M = logit difference or probability). Metrics are read at each example's
shift-aware read position (`tasks.render` stores it): "logit_diff" (logsumexp of the
correct first tokens minus logsumexp of the counterfactual ones, `probe.answer_logit_diff`),
"prob" (probability of the correct first tokens), "kl" (KL(clean || model) of the next-token
distribution; its gradient vanishes at the clean input, so plain EAP scores 0 under it).

Data are `tasks` renderings: a list of `Rendered` (cut into batches of `batch_size`), a
`Batch`, or any iterable of `Batch`es (a dataloader). Each batch runs on the model's device;
scores are summed over batches on the CPU in float64.

Circuits: `Graph.select` picks edges; `faithfulness` runs the model with every edge outside the
circuit patched to its corrupted value in one pass and normalises,
f = (M(circuit) - M(corrupt)) / (M(clean) - M(corrupt)); `faithfulness_curve` does it for a series
of circuit sizes and integrates f over the fraction of edges kept.

    >>> pm = ProbedModel.from_checkpoint("organism")                         # doctest: +SKIP
    >>> items = [render(ex, pm.tokenizer, "ar") for ex in examples]          # doctest: +SKIP
    >>> graph = attribute(pm, items, method="eap-ig-inputs", steps=5)        # doctest: +SKIP
    >>> faithfulness(pm, items, graph.select(top_n=50)).value                # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from analyses.batching import Data, batches, pair_inputs
from analyses.graph import Graph, forward_edges, split_edge
from analyses.metrics import METRICS, Targets, clean_reference, metric_values
from analyses.patching import Patch, patch_batch
from common.errors import UserError
from probe.cache import Cache
from probe.model import ProbedModel
from tasks.base import Batch

METHODS = ("exact", "eap", "eap-ig-inputs", "eap-ig-activations")


# --- data -----------------------------------------------------------------------------------------


# --- metrics --------------------------------------------------------------------------------------


# --- attribution ----------------------------------------------------------------------------------


def _check_options(method: str, metric: str, steps: int) -> None:
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}; choose one of {', '.join(METHODS)}.")
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps (interpolation points of EAP-IG) must be a positive integer, got {steps!r}.")


@dataclass
class _Sums:
    """Per-batch sums over examples, accumulated over batches (CPU, float64)."""

    edges: Tensor
    nodes: Tensor
    clean: float = 0.0
    corrupt: float = 0.0
    n: int = 0
    per_example: list[Tensor] | None = None  # [B, edges] float32 per batch, when kept

    def add_examples(self, rows: Tensor) -> None:
        if self.per_example is not None:
            self.per_example.append(rows.detach().float().cpu())


def attribute(
    pm: ProbedModel,
    data: Data,
    *,
    method: str = "eap-ig-inputs",
    metric: str = "logit_diff",
    steps: int = 5,
    batch_size: int | None = 16,
    rows_per_pass: int = 64,
    nodes: bool = True,
    meta: Mapping[str, Any] | None = None,
    per_example: bool = False,
) -> Graph:
    """Score every edge (and, with nodes=True, every sender node) of `pm`'s graph on `data`.

    method: "exact", "eap", "eap-ig-inputs" or "eap-ig-activations" (see the module docstring).
    metric: "logit_diff", "prob" or "kl". steps: interpolation points of the EAP-IG methods.
    rows_per_pass: exact patching stacks max(1, rows_per_pass // batch rows) interventions per
    forward pass. meta: extra fields recorded in the graph (task, model name, ...).
    per_example: also keep every example's edge scores as `graph.examples` [N, edges] (float32;
    what bootstrap intervals over examples resample).
    Returns a `Graph` whose scores are means over examples; its meta holds the method, metric,
    steps, number of examples and the clean and corrupted metric means.
    """
    _check_options(method, metric, steps)
    if not isinstance(rows_per_pass, int) or rows_per_pass < 1:
        raise UserError(f"rows_per_pass must be a positive integer, got {rows_per_pass!r}.")
    graph = Graph(pm.shape)
    sums = _Sums(torch.zeros(len(graph.edges), dtype=torch.float64), torch.zeros(len(graph.senders), dtype=torch.float64),
                 per_example=[] if per_example else None)
    for batch in batches(pm, data, batch_size):
        if method == "exact":
            _exact_batch(pm, graph, batch, metric, rows_per_pass, nodes, sums)
        else:
            _gradient_batch(pm, graph, batch, metric, method, steps, nodes, sums)
    n = sums.n
    info = {
        "method": method, "metric": metric, "steps": steps if method.startswith("eap-ig") else None,
        "n_examples": n, "clean_metric": sums.clean / n, "corrupt_metric": sums.corrupt / n,
        "kind": pm.config.kind, "shift": pm.config.shift, "family": pm.config.family,
    }
    node_scores = dict(zip(graph.senders, (sums.nodes / n).tolist(), strict=True)) if nodes else None
    examples = torch.cat(sums.per_example) if sums.per_example else None
    return Graph(pm.shape, sums.edges / n, node_scores, {**info, **(meta or {})}, examples)


def _exact_batch(pm: ProbedModel, graph: Graph, batch: Batch, metric: str, rows_per_pass: int, nodes: bool, sums: _Sums) -> None:
    """Patch one edge (or node) at a time (`analyses.patching`), several per pass as stacked
    copies of the batch."""
    clean_in, corrupt_in = pair_inputs(batch)
    targets = Targets.of(batch.items)
    clean_logits = pm(clean_in)
    corrupt_logits, corrupt = pm.run_with_cache(corrupt_in, names=graph.senders)
    ref = clean_reference(metric, clean_logits, targets)
    base = metric_values(metric, clean_logits, targets, ref)
    copies = max(1, rows_per_pass // batch.input_ids.shape[0])

    def effects(patches: list[Patch]) -> Tensor:
        """[patches, examples]: the patched metric minus the clean one."""
        values = patch_batch(pm, batch, patches, _metric_of(metric, targets, ref), corrupt=corrupt, copies=copies)
        return (values - base.to(values)).double().cpu()

    edges = effects([Patch((f"{s}->{r}",)) for s, r in graph.pairs])
    sums.edges += edges.sum(1)
    sums.add_examples(edges.T)
    if nodes:
        sums.nodes += effects([Patch((s,)) for s in graph.senders]).sum(1)
    sums.clean += float(base.sum())
    sums.corrupt += float(metric_values(metric, corrupt_logits, targets, ref).sum())
    sums.n += batch.input_ids.shape[0]


def _metric_of(metric: str, targets: Targets, ref: Tensor | None) -> Callable[[Tensor, Batch], Tensor]:
    """`metric` per row as an `analyses.patching` metric (the batch's targets bound)."""
    return lambda logits, _batch: metric_values(metric, logits, targets, ref)


def _written(pm: ProbedModel, cache: Cache, senders: Sequence[str]) -> dict[str, Tensor]:
    """What each sender adds to the residual stream: its value, or (post-norm models) its exact
    contribution with the norm's scale frozen (`ProbedModel.decompose`)."""
    if not pm.config.post_norms:
        return {s: cache[s] for s in senders}
    parts = pm.decompose(cache).parts
    return {s: parts[s] for s in senders}


def _downstream_receivers(graph: Graph, group: Sequence[str]) -> list[str]:
    reach = {r for s, r in graph.pairs if s in set(group)}
    return [r for r in graph.receivers if r in reach]


def _gradient_batch(pm: ProbedModel, graph: Graph, batch: Batch, metric: str, method: str, steps: int, nodes: bool, sums: _Sums) -> None:
    """EAP and both EAP-IG variants: mean gradients at the receivers over the method's points,
    dotted with each sender's corrupted-minus-clean contribution. A node's score is the sum of
    its outgoing edges' scores (the gradient at a sender's output is the sum of the gradients
    at the receivers it writes to, so this is the node's own attribution)."""
    clean_in, corrupt_in = pair_inputs(batch)
    targets = Targets.of(batch.items)
    senders, receivers = graph.senders, graph.receivers
    corrupt_logits, corrupt = pm.run_with_cache(corrupt_in, names=senders)
    alphas = [(k + 0.5) / steps for k in range(steps)]
    # (senders whose edges are scored, receivers they reach, summed receiver gradients [R, B, T, D],
    # number of points summed)
    gradients: list[tuple[list[str], list[str], Tensor, int]] = []
    if method == "eap":  # one pass at the clean input; it also records the clean activations
        result = pm.run_with_grads(clean_in, _objective(metric, targets, None), receivers=receivers, names=senders)
        clean, clean_logits = result.cache, result.logits
        ref = clean_reference(metric, clean_logits, targets)
        gradients.append((senders, receivers, _accumulate(None, result.inputs, receivers), 1))
    else:
        clean_logits, clean = pm.run_with_cache(clean_in, names=senders)
        ref = clean_reference(metric, clean_logits, targets)
        objective = _objective(metric, targets, ref)
        groups = [["embed"]] if method == "eap-ig-inputs" else _groups(pm)
        for group in groups:
            scored = senders if method == "eap-ig-inputs" else group
            downstream = _downstream_receivers(graph, scored)
            total = None
            for alpha in alphas:
                with pm.intervene() as iv:
                    for name in group:
                        iv.set(name, corrupt[name] + alpha * (clean[name] - corrupt[name]))
                    result = pm.run_with_grads(clean_in, objective, receivers=downstream)
                total = _accumulate(total, result.inputs, downstream)
            gradients.append((scored, downstream, total, steps))

    mask = batch.attention_mask.to(corrupt["embed"].device)[..., None]
    w_clean, w_corrupt = _written(pm, clean, senders), _written(pm, corrupt, senders)
    s_index = {s: i for i, s in enumerate(senders)}
    r_index = {r: i for i, r in enumerate(receivers)}
    B = batch.input_ids.shape[0]
    keep = sums.per_example is not None
    # [B, senders, receivers] per example when kept, else [1, ...] summed over the batch
    full = torch.zeros(B if keep else 1, len(senders), len(receivers), dtype=torch.float64)
    for scored, downstream, total, points in gradients:
        d = torch.stack([(w_corrupt[s] - w_clean[s]) * mask for s in scored])  # [S, B, T, D]
        d = d.to(torch.promote_types(d.dtype, torch.float32))
        g = total.to(d.dtype)
        rows = torch.tensor([s_index[s] for s in scored])
        cols = torch.tensor([r_index[r] for r in downstream])
        if keep:
            block = torch.einsum("sbx,rbx->bsr", d.flatten(2), g.flatten(2))
        else:
            block = (d.flatten(1) @ g.flatten(1).T)[None]
        full[:, rows[:, None], cols[None, :]] = block.double().cpu() / points
    edge_s = torch.tensor([s_index[s] for s, _ in graph.pairs])
    edge_r = torch.tensor([r_index[r] for _, r in graph.pairs])
    per = full[:, edge_s, edge_r]  # upstream (sender, receiver) pairs of `full` are no edges
    edges = per.sum(0)
    sums.add_examples(per)
    sums.edges += edges
    if nodes:
        sums.nodes.index_add_(0, edge_s, edges)
    sums.clean += float(metric_values(metric, clean_logits, targets, ref).sum())
    sums.corrupt += float(metric_values(metric, corrupt_logits, targets, ref).sum())
    sums.n += batch.input_ids.shape[0]


def _accumulate(total: Tensor | None, grads: Cache, names: Sequence[str]) -> Tensor:
    """`total` [R, B, T, D] plus the gradients of `names` (a new buffer when total is None)."""
    if total is None:
        return torch.stack([grads[n] for n in names])
    for i, name in enumerate(names):
        total[i] += grads[name]
    return total


def _objective(metric: str, targets: Targets, ref: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The scalar a backward pass differentiates: the metric summed over the batch's rows."""
    return lambda logits: metric_values(metric, logits, targets, ref).sum()


def _groups(pm: ProbedModel) -> list[list[str]]:
    """The sender groups EAP-IG on activations interpolates one at a time: the embedding, each
    layer's heads (they write together, before their MLP reads), each MLP."""
    out = [["embed"]]
    for layer in range(pm.config.n_layers):
        out.append([f"L{layer}.H{h}" for h in range(pm.config.n_heads)])
        out.append([f"L{layer}.mlp"])
    return out


# --- circuits -------------------------------------------------------------------------------------


@dataclass
class Faithfulness:
    """One circuit's faithfulness: value = (circuit - corrupt) / (clean - corrupt), from the
    metric's means over examples with the circuit's edges clean and every other edge corrupted."""

    value: float
    circuit: float
    clean: float
    corrupt: float
    edges: int


@dataclass
class FaithfulnessCurve:
    """Faithfulness over circuit sizes. sizes: edges requested (top-n); kept: edges left after
    pruning; values: f per size; area: trapezoidal integral of f over the fraction of edges
    requested (size / total edges), over the sizes given (MIB integrates the same curve)."""

    sizes: list[int]
    kept: list[int]
    values: list[float]
    area: float
    clean: float
    corrupt: float
    total_edges: int
    circuits: list[list[str]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "kept": self.kept, "values": self.values, "area": self.area,
                "clean": self.clean, "corrupt": self.corrupt, "total_edges": self.total_edges}


def circuit_metrics(
    pm: ProbedModel,
    data: Data,
    circuits: Sequence[Iterable[str]],
    *,
    metric: str = "logit_diff",
    batch_size: int | None = 16,
) -> tuple[list[float], float, float]:
    """(mean metric with each circuit's edges clean and all others corrupted, clean mean,
    corrupted mean). One patched forward pass per circuit and batch."""
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    pairs = forward_edges(pm.shape)
    known = {f"{s}->{r}" for s, r in pairs}
    chosen = []
    for circuit in circuits:
        edges = set(circuit)
        unknown = edges - known
        if unknown:
            bad = sorted(unknown)[0]
            split_edge(bad)
            raise UserError(f"{bad!r} is not an edge of this model's graph (see analyses.graph.forward_edges).")
        chosen.append(edges)
    totals = [0.0] * len(chosen)
    clean_sum = corrupt_sum = 0.0
    n = 0
    for batch in batches(pm, data, batch_size):
        clean_in, corrupt_in = pair_inputs(batch)
        targets = Targets.of(batch.items)
        clean_logits = pm(clean_in)
        corrupt_logits, corrupt = pm.run_with_cache(corrupt_in, names=pm.senders())
        ref = clean_reference(metric, clean_logits, targets)
        outside = [Patch(tuple(f"{s}->{r}" for s, r in pairs if f"{s}->{r}" not in edges)) for edges in chosen]
        values = patch_batch(pm, batch, outside, _metric_of(metric, targets, ref), corrupt=corrupt)
        for i in range(len(chosen)):
            totals[i] += float(values[i].sum())
        clean_sum += float(metric_values(metric, clean_logits, targets, ref).sum())
        corrupt_sum += float(metric_values(metric, corrupt_logits, targets, ref).sum())
        n += batch.input_ids.shape[0]
    return [t / n for t in totals], clean_sum / n, corrupt_sum / n


def normalised(value: float, clean: float, corrupt: float) -> float:
    """(value - corrupt) / (clean - corrupt); UserError when clean and corrupt agree."""
    if not math.isfinite(clean - corrupt) or abs(clean - corrupt) < 1e-12 * max(1.0, abs(clean)):
        raise UserError(
            f"the metric is the same on clean and corrupted inputs ({clean:.6g}); faithfulness is "
            "undefined. Use examples the model solves and a corruption that changes its answer."
        )
    return (value - corrupt) / (clean - corrupt)


def faithfulness(
    pm: ProbedModel, data: Data, circuit: Iterable[str], *, metric: str = "logit_diff", batch_size: int | None = 16
) -> Faithfulness:
    """Faithfulness of a circuit (edge names `sender->receiver`, e.g. from `Graph.select`)."""
    edges = list(circuit)
    (value,), clean, corrupt = circuit_metrics(pm, data, [edges], metric=metric, batch_size=batch_size)
    return Faithfulness(normalised(value, clean, corrupt), value, clean, corrupt, len(set(edges)))


def default_sizes(n_edges: int) -> list[int]:
    """Circuit sizes at 0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 % of the edges (rounded up)."""
    fractions = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    return sorted({min(n_edges, math.ceil(f * n_edges)) for f in fractions})


def faithfulness_curve(
    pm: ProbedModel,
    data: Data,
    graph: Graph,
    sizes: Sequence[int] | None = None,
    *,
    prune: bool = True,
    metric: str = "logit_diff",
    batch_size: int | None = 16,
) -> FaithfulnessCurve:
    """Faithfulness of `graph`'s top-n circuits for each n in `sizes` (default `default_sizes`)."""
    total = len(graph.edges)
    sizes = default_sizes(total) if sizes is None else sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 0 or sizes[-1] > total:
        raise UserError(f"circuit sizes must lie in 0..{total} (the graph's edges); got {sizes}.")
    circuits = [graph.select(top_n=s, prune=prune) for s in sizes]
    values, clean, corrupt = circuit_metrics(pm, data, circuits, metric=metric, batch_size=batch_size)
    f = [normalised(v, clean, corrupt) for v in values]
    x = [s / total for s in sizes]
    area = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    return FaithfulnessCurve(sizes, [len(c) for c in circuits], f, area, clean, corrupt, total, circuits)
