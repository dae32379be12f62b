"""Attribution methods: how much each edge, node or unit of a model matters to a task metric.

Every method is a subclass of `AttributionMethod` that registers itself in `ATTRIBUTIONS` by its
`name`, with the `levels` it scores:

- "edge" and "node" (`accumulate`): one batch's scores of every edge of the graph
  (`analyses.graph`) and of every sender node, added into `Sums`; `analyses.circuits.attribute`
  drives it over the data;
- "unit" (`unit_scores`): one batch's per-position attributions of units (MLP neurons, heads),
  for `analyses.neurons`.

Built in (RESEARCH.md section 4):

- "exact": activation patching, the ground truth (edge, node). For each edge u->v, one forward
  pass on the clean input in which only v reads u's corrupted output; score = M(patched) -
  M(clean). Node scores patch the whole node (`analyses.patching`, several patches per pass).
- "eap": edge attribution patching, the first-order estimate from one forward and backward pass
  on the clean input (edge, node, unit): score(u->v) = sum over examples and positions of
  (a_u(corrupt) - a_u(clean)) . dM/d(input of v) (gradient at the clean input). For units, the
  same with a unit's value: attribution patching (AtP).
- "eap-ig-inputs": the gradient averaged over `steps` inputs whose embeddings lie between the
  corrupted and the clean embeddings, alpha_k = (k + 1/2) / steps (midpoint rule; Hanna et al.
  2024). Cost: 2 forward passes and `steps` forward+backward passes per batch.
- "eap-ig-activations": the gradient averaged while one group of senders (the embedding, one
  layer's heads, or one MLP) outputs a_corrupt + alpha_k (a_clean - a_corrupt) and everything
  downstream runs on the clean input; an edge uses the passes of its sender's group. Cost:
  (2 n_layers + 1) x `steps` forward+backward passes per batch.

For the gradient methods a node's score is the sum of its outgoing edges' scores (the gradient at
a sender's output is the sum of the gradients at the receivers it writes to, so this is the
node's own attribution). A new method is one subclass (docs/EXTENDING.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.batching import corrupted_inputs, pair_inputs
from analyses.graph import Graph
from analyses.metrics import Targets, clean_reference, metric_values
from analyses.patching import Metric, Patch, patch_batch
from common.errors import UserError
from common.registry import Registry
from probe.cache import Cache
from probe.lens import answer_logit_diff
from probe.model import ProbedModel
from tasks.base import Batch

LEVELS = ("edge", "node", "unit")


@dataclass
class Sums:
    """Per-batch sums over examples, accumulated over batches (CPU, float64): edge scores [E],
    node scores [senders], the clean and corrupted metric, the number of examples, and (when
    kept) every example's edge scores, [B, E] float32 per batch."""

    edges: Float[Tensor, " edges"]
    nodes: Float[Tensor, " senders"]
    clean: float = 0.0
    corrupt: float = 0.0
    n: int = 0
    per_example: list[Float[Tensor, "_batch edges"]] | None = None

    def add_examples(self, rows: Float[Tensor, "batch edges"]) -> None:
        if self.per_example is not None:
            self.per_example.append(rows.detach().float().cpu())


class AttributionMethod:
    """Base class of attribution methods (see the module docstring).

    steps: interpolation points of integrated-gradient methods. rows_per_pass: methods that
    patch stack max(1, rows_per_pass // batch rows) patches per forward pass.
    """

    name: ClassVar[str] = ""
    levels: ClassVar[frozenset[str]] = frozenset({"edge", "node"})
    uses_steps: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ATTRIBUTIONS.add(cls)

    # indices of the edges to score (`attribute(..., edges=)`); None: all. Methods that get every
    # edge at once (gradients) ignore it; `attribute` sets the others to NaN.
    edge_subset: list[int] | None = None

    def __init__(self, *, steps: int = 5, rows_per_pass: int = 64) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps (interpolation points of EAP-IG) must be a positive integer, got {steps!r}.")
        if not isinstance(rows_per_pass, int) or rows_per_pass < 1:
            raise UserError(f"rows_per_pass must be a positive integer, got {rows_per_pass!r}.")
        self.steps, self.rows_per_pass = steps, rows_per_pass

    def accumulate(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, sums: Sums, nodes: bool) -> None:
        """Add one batch's edge (and, with `nodes`, sender-node) scores into `sums`."""
        raise UserError(
            f"attribution method {self.name!r} does not score edges or nodes; use one of {methods_for('edge')}."
        )

    def unit_scores(
        self, pm: ProbedModel, batch: Batch, stored: Sequence[str]
    ) -> tuple[dict[str, Float[Tensor, "batch pos *_units"]], Cache]:
        """({stored name: per-example, per-position attribution [B, T, ...]}, clean cache) of
        the units held in `stored` (e.g. `L{l}.mlp.neurons`, `L{l}.H{h}`), metric: the logit
        difference at the read position. Padding positions are 0."""
        raise UserError(f"attribution method {self.name!r} does not score units; use one of {methods_for('unit')}.")


ATTRIBUTIONS: Registry[AttributionMethod] = Registry("attribution method")


def methods_for(level: str) -> list[str]:
    """Names of the registered methods that score `level` ("edge", "node" or "unit")."""
    if level not in LEVELS:
        raise UserError(f"unknown attribution level {level!r}; use one of {', '.join(LEVELS)}.")
    return [name for name, cls in ATTRIBUTIONS.items() if level in cls.levels]


# --- exact patching --------------------------------------------------------------------------------


class ExactPatching(AttributionMethod):
    """Activation patching of one edge (or node) at a time (`analyses.patching`)."""

    name = "exact"

    def accumulate(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, sums: Sums, nodes: bool) -> None:
        clean_in, corrupt_in = pair_inputs(batch)
        targets = Targets.of(batch.items)
        clean_logits = pm(clean_in)
        corrupt_logits, corrupt = pm.run_with_cache(corrupt_in, names=graph.senders)
        ref = clean_reference(metric, clean_logits, targets)
        base = metric_values(metric, clean_logits, targets, ref)
        copies = max(1, self.rows_per_pass // batch.input_ids.shape[0])

        def effects(patches: list[Patch]) -> Tensor:
            """[patches, examples]: the patched metric minus the clean one."""
            values = patch_batch(pm, batch, patches, metric_of(metric, targets, ref), corrupt=corrupt, copies=copies)
            return (values - base.to(values)).double().cpu()

        chosen = range(len(graph.pairs)) if self.edge_subset is None else self.edge_subset
        pairs = [graph.pairs[i] for i in chosen]
        scored = effects([Patch((f"{s}->{r}",)) for s, r in pairs])
        edges = torch.zeros(len(graph.pairs), scored.shape[1], dtype=scored.dtype)
        edges[list(chosen)] = scored
        sums.edges += edges.sum(1)
        sums.add_examples(edges.T)
        if nodes:
            sums.nodes += effects([Patch((s,)) for s in graph.senders]).sum(1)
        sums.clean += float(base.sum())
        sums.corrupt += float(metric_values(metric, corrupt_logits, targets, ref).sum())
        sums.n += batch.input_ids.shape[0]


def metric_of(metric: str, targets: Targets, ref: Float[Tensor, "batch vocab"] | None) -> Metric:
    """`metric` per row as an `analyses.patching` metric (the batch's targets bound)."""
    return lambda logits, _batch: metric_values(metric, logits, targets, ref)


# --- gradient methods ------------------------------------------------------------------------------

# (senders whose edges are scored, receivers they reach, summed receiver gradients [R, B, T, D],
# number of points summed)
Gradients = list[tuple[list[str], list[str], Float[Tensor, "_receivers batch pos d_model"], int]]


class GradientAttribution(AttributionMethod):
    """EAP and both EAP-IG variants: mean gradients at the receivers over the method's points
    (`gradients`), dotted with each sender's corrupted-minus-clean contribution."""

    def gradients(
        self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, targets: Targets, corrupt: Cache
    ) -> tuple[Gradients, Cache, Float[Tensor, "batch pos vocab"], Float[Tensor, "batch vocab"] | None]:
        """(gradient blocks, clean cache of the senders, clean logits, the metric's reference)."""
        raise NotImplementedError

    def accumulate(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, sums: Sums, nodes: bool) -> None:
        targets = Targets.of(batch.items)
        senders, receivers = graph.senders, graph.receivers
        corrupt_logits, corrupt = pm.run_with_cache(pair_inputs(batch)[1], names=senders)
        blocks, clean, clean_logits, ref = self.gradients(pm, graph, batch, metric, targets, corrupt)
        mask = batch.attention_mask.to(corrupt["embed"].device)[..., None]
        w_clean, w_corrupt = written(pm, clean, senders), written(pm, corrupt, senders)
        s_index = {s: i for i, s in enumerate(senders)}
        r_index = {r: i for i, r in enumerate(receivers)}
        B = batch.input_ids.shape[0]
        keep = sums.per_example is not None
        # [B, senders, receivers] per example when kept, else [1, ...] summed over the batch
        full = torch.zeros(B if keep else 1, len(senders), len(receivers), dtype=torch.float64)
        for scored, downstream, total, points in blocks:
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
        sums.n += B


class EAP(GradientAttribution):
    """Edge attribution patching: one gradient at the clean input; also attribution patching of
    units (AtP)."""

    name = "eap"
    levels = frozenset({"edge", "node", "unit"})

    def gradients(self, pm, graph, batch, metric, targets, corrupt):  # type: ignore[no-untyped-def]
        # one pass at the clean input; it also records the clean activations
        result = pm.run_with_grads(
            pair_inputs(batch)[0], objective(metric, targets, None), receivers=graph.receivers, names=graph.senders
        )
        ref = clean_reference(metric, result.logits, targets)
        return (
            [(graph.senders, graph.receivers, accumulate(None, result.inputs, graph.receivers), 1)],
            result.cache,
            result.logits,
            ref,
        )

    def unit_scores(
        self, pm: ProbedModel, batch: Batch, stored: Sequence[str]
    ) -> tuple[dict[str, Float[Tensor, "batch pos *_units"]], Cache]:
        _, corrupt = pm.run_with_cache(corrupted_inputs(batch), list(stored))
        g = pm.run_with_grads(
            batch, lambda logits: answer_logit_diff(logits, batch).sum(), outputs=list(stored), names=list(stored)
        )
        real = batch.attention_mask.bool().to(g.logits.device)
        return {name: (corrupt[name] - g.cache[name]) * g.outputs[name] * real[..., None] for name in stored}, g.cache


class IntegratedGradients(GradientAttribution):
    """EAP-IG: gradients averaged over `steps` points between the corrupted and the clean run,
    one sender group at a time (`groups`)."""

    uses_steps = True

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        """(interpolated senders, senders whose edges their passes score) per group."""
        raise NotImplementedError

    def gradients(self, pm, graph, batch, metric, targets, corrupt):  # type: ignore[no-untyped-def]
        clean_in = pair_inputs(batch)[0]
        clean_logits, clean = pm.run_with_cache(clean_in, names=graph.senders)
        ref = clean_reference(metric, clean_logits, targets)
        target = objective(metric, targets, ref)
        alphas = [(k + 0.5) / self.steps for k in range(self.steps)]
        blocks: Gradients = []
        for group, scored in self.groups(pm, graph.senders):
            downstream = downstream_receivers(graph, scored)
            total = None
            for alpha in alphas:
                with pm.intervene() as iv:
                    for name in group:
                        iv.set(name, corrupt[name] + alpha * (clean[name] - corrupt[name]))
                    result = pm.run_with_grads(clean_in, target, receivers=downstream)
                total = accumulate(total, result.inputs, downstream)
            blocks.append((scored, downstream, total, self.steps))
        return blocks, clean, clean_logits, ref


class EAPIGInputs(IntegratedGradients):
    """EAP-IG on inputs: the embedding interpolated; every edge scored from the same passes."""

    name = "eap-ig-inputs"

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        return [(["embed"], list(senders))]


class EAPIGActivations(IntegratedGradients):
    """EAP-IG on activations: the embedding, each layer's heads (they write together, before
    their MLP reads) and each MLP interpolated in turn; a group's passes score its own edges."""

    name = "eap-ig-activations"

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        out = [["embed"]]
        for layer in range(pm.config.n_layers):
            out.append([f"L{layer}.H{h}" for h in range(pm.config.n_heads)])
            out.append([f"L{layer}.mlp"])
        return [(g, g) for g in out]


def written(pm: ProbedModel, cache: Cache, senders: Sequence[str]) -> dict[str, Float[Tensor, "batch pos d_model"]]:
    """What each sender adds to the residual stream: its value, or (post-norm models) its exact
    contribution with the norm's scale frozen (`ProbedModel.decompose`)."""
    if not pm.config.post_norms:
        return {s: cache[s] for s in senders}
    parts = pm.decompose(cache).parts
    return {s: parts[s] for s in senders}


def downstream_receivers(graph: Graph, group: Sequence[str]) -> list[str]:
    """The receivers the senders in `group` write into, in graph order."""
    reach = {r for s, r in graph.pairs if s in set(group)}
    return [r for r in graph.receivers if r in reach]


def accumulate(
    total: Float[Tensor, "receivers batch pos d_model"] | None, grads: Cache, names: Sequence[str]
) -> Float[Tensor, "receivers batch pos d_model"]:
    """`total` [R, B, T, D] plus the gradients of `names` (a new buffer when total is None)."""
    if total is None:
        return torch.stack([grads[n] for n in names])
    for i, name in enumerate(names):
        total[i] += grads[name]
    return total


def objective(
    metric: str, targets: Targets, ref: Float[Tensor, "batch vocab"] | None
) -> Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]]:
    """The scalar a backward pass differentiates: the metric summed over the batch's rows."""
    return lambda logits: metric_values(metric, logits, targets, ref).sum()
