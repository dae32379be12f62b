"""Circuit discovery: score every edge of a model's graph, select circuits, test their faithfulness.

The graph (`analyses.graph`) joins senders (embed, heads, MLPs) to receivers (each head's q/k/v
input, each MLP's input, logits). An edge's importance is how much a task metric M moves when
that one edge carries its value from a *corrupted* input instead of the clean one (RESEARCH.md
section 4). `attribute(pm, data, method=...)` scores every edge and node with any registered
attribution method (`analyses.attribution`: "exact" patching, "eap", "eap-ig-inputs",
"eap-ig-activations").

Scores are estimates of M(edge corrupted) - M(clean) averaged over examples: negative for an
edge the task needs (with M = logit difference or probability). Metrics are read at each example's
shift-aware read position (`ar2mdm.tasks.render` stores it): "logit_diff" (logsumexp of the
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
from tqdm.auto import tqdm

from analyses.attribution import ATTRIBUTIONS, Sums, metric_of
from analyses.batching import Data, batches, pair_inputs
from analyses.graph import Graph, forward_edges, split_edge
from analyses.metrics import METRICS, Targets, clean_reference, metric_values
from analyses.patching import Patch, patch_batch
from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import device_of
from probe.model import ProbedModel

# --- attribution ----------------------------------------------------------------------------------


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
    edges: Sequence[str] | None = None,
    steps_per_pass: int = 1,
    offload: str = "none",
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> Graph:
    """Score every edge (and, with nodes=True, every sender node) of `pm`'s graph on `data`.

    method: a registered attribution method (`analyses.attribution.ATTRIBUTIONS`: "exact", "eap",
    "eap-ig-inputs", "eap-ig-activations", or one of your own).
    metric: "logit_diff", "prob" or "kl". steps: interpolation points of the EAP-IG methods.
    rows_per_pass: exact patching stacks max(1, rows_per_pass // batch rows) interventions per
    forward pass. meta: extra fields recorded in the graph (task, model name, ...).
    per_example: also keep every example's edge scores as `graph.examples` [N, edges] (float32;
    what bootstrap intervals over examples resample).
    edges: score only these edges ("sender->receiver" names): exact patching then runs one
    patched pass per chosen edge (e.g. validating a method's top edges at SmolLM2 scale, where
    all 70k would take hours); the other edges are NaN in the returned graph (last in
    `Graph.order`) and `meta["edges_scored"]` counts the chosen ones. UserError for a name that is
    not an edge of this graph.
    steps_per_pass: EAP-IG points per pass, as stacked copies of the batch (same scores; larger
    passes use a GPU better). offload: gradient methods keep the senders' corrupted-minus-clean
    values on the model's device ("none"), in CPU memory ("cpu") or on disk ("disk").
    log: called with the predicted peak memory (`analyses.attribution_memory`) before the first
    batch runs; on CUDA a prediction above the free memory is refused with a UserError that says
    what to lower. progress: a progress bar over batches.
    Returns a `Graph` whose scores are means over examples; its meta holds the method, metric,
    steps, number of examples and the clean and corrupted metric means.
    """
    scorer = ATTRIBUTIONS.get(method)(
        steps=steps, rows_per_pass=rows_per_pass, steps_per_pass=steps_per_pass, offload=offload
    )
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    graph = Graph(pm.shape)
    chosen = _edge_subset(graph, edges)
    scorer.edge_subset = chosen
    sums = Sums(
        torch.zeros(len(graph.edges), dtype=torch.float64),
        torch.zeros(len(graph.senders), dtype=torch.float64),
        per_example=[] if per_example else None,
    )
    predicted = None
    for i, batch in enumerate(
        tqdm(batches(pm, data, batch_size), desc=f"attribute ({method})", unit="batch", disable=not progress)
    ):
        if i == 0:
            predicted = _predict(pm, scorer, method, batch, per_example, log)
        scorer.accumulate(pm, graph, batch, metric, sums, nodes)
    n = sums.n
    info = {
        "method": method,
        "metric": metric,
        "steps": steps if scorer.uses_steps else None,
        "n_examples": n,
        "clean_metric": sums.clean / n,
        "corrupt_metric": sums.corrupt / n,
        "kind": pm.config.kind,
        "shift": pm.config.shift,
        "family": pm.config.family,
        "kv_receivers": pm.config.kv_receivers,
    }
    if predicted is not None:
        info["memory_predicted"] = predicted.peak
    node_scores = dict(zip(graph.senders, (sums.nodes / n).tolist(), strict=True)) if nodes else None
    examples = torch.cat(sums.per_example) if sums.per_example else None
    scores = sums.edges / n
    if chosen is not None:
        unscored = torch.ones(len(graph.edges), dtype=torch.bool)
        unscored[chosen] = False
        scores[unscored] = float("nan")
        if examples is not None:
            examples[:, unscored] = float("nan")
        info["edges_scored"] = len(chosen)
    return Graph(pm.shape, scores, node_scores, {**info, **(meta or {})}, examples)


def _predict(pm: ProbedModel, scorer, method: str, batch, per_example: bool, log):
    """The first batch's predicted peak (None for methods without a memory model): logged, and
    checked against a GPU's free memory."""
    from analyses.attribution_memory import check_free_memory, predict_for

    B, T = batch.input_ids.shape
    try:
        est = predict_for(
            pm,
            batch=B,
            seq_len=T,
            method=method,
            steps_per_pass=scorer.steps_per_pass,
            offload=scorer.offload,
            per_example=per_example,
            rows_per_pass=scorer.rows_per_pass,
        )
    except UserError:
        return None
    if log is not None:
        log(est.describe())
    device = device_of(pm.model)
    if device.type == "cuda":
        check_free_memory(est, torch.cuda.mem_get_info(device)[0], str(device))
    return est


def _edge_subset(graph: Graph, edges: Sequence[str] | None) -> list[int] | None:
    """Indices of `edges` in `graph.edges` (in graph order), or None for all; UserError for unknown names."""
    if edges is None:
        return None
    index = {e: i for i, e in enumerate(graph.edges)}
    unknown = [e for e in edges if e not in index]
    if unknown:
        raise UserError(
            f"{unknown[0]!r} is not an edge of this model's graph ({len(unknown)} unknown of {len(edges)}); "
            "edges are 'sender->receiver' names as in Graph.edges (analyses.graph.forward_edges)."
        )
    return sorted({index[e] for e in edges})


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
    requested (size / total edges), over the sizes given.

    MIB's circuit-localisation metrics (Mueller et al. 2025, "MIB: a mechanistic
    interpretability benchmark") read the same curve over the same grid of fractions
    (`default_sizes`): `cpr` (integrated circuit performance ratio) is `area`, higher is better;
    `cmd` (integrated circuit-model distance) is the area between the curve and 1,
    integral of |1 - f|, lower is better (0: every circuit size behaves like the whole model)."""

    sizes: list[int]
    kept: list[int]
    values: list[float]
    area: float
    clean: float
    corrupt: float
    total_edges: int
    circuits: list[list[str]] = field(default_factory=list, repr=False)

    @property
    def cpr(self) -> float:
        """MIB's CPR: the area under the curve over the fraction of edges (= `area`)."""
        return self.area

    @property
    def cmd(self) -> float:
        """MIB's CMD: the trapezoidal integral of |1 - f| over the fraction of edges. Where the
        curve crosses 1 inside a segment the segment is split at the crossing, so the area is
        exact for the piecewise-linear curve."""
        x = [s / self.total_edges for s in self.sizes]
        d = [1.0 - v for v in self.values]
        area = 0.0
        for i in range(len(x) - 1):
            w, a, b = x[i + 1] - x[i], d[i], d[i + 1]
            if a * b >= 0:
                area += w * (abs(a) + abs(b)) / 2
            else:  # the curve crosses 1 at fraction a / (a - b) of the segment
                c = a / (a - b)
                area += w * (c * abs(a) + (1 - c) * abs(b)) / 2
        return area

    def to_dict(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "kept": self.kept,
            "values": self.values,
            "area": self.area,
            "cpr": self.cpr,
            "cmd": self.cmd,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "total_edges": self.total_edges,
        }


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
        values = patch_batch(pm, batch, outside, metric_of(metric, targets, ref), corrupt=corrupt)
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
