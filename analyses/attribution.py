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
- "relp", "relp-ah", "gim": EAP with local backward rules in place of the chain rule
  (`probe.rules`): RelP's LRP rules (Jafari et al. 2025), with the AH-rule ("relp-ah"), and GIM
  (Edin et al. 2025). Same cost as EAP.
- "eap-ig-inputs": the gradient averaged over `steps` inputs whose embeddings lie between the
  corrupted and the clean embeddings, alpha_k = (k + 1/2) / steps (midpoint rule; Hanna et al.
  2024). Cost: 2 forward passes and `steps` forward+backward passes per batch.
- "eap-gp": EAP-IG on inputs along a path built from the model's gradients (GradPath, Zhang et
  al. 2025) instead of the straight line; 2 x `steps` forward+backward passes.
- "eap-ig-activations": the gradient averaged while one group of senders (the embedding, one
  layer's heads, or one MLP) outputs a_corrupt + alpha_k (a_clean - a_corrupt) and everything
  downstream runs on the clean input; an edge uses the passes of its sender's group. Cost:
  (2 n_layers + 1) x `steps` forward+backward passes per batch.

For the gradient methods a node's score is the sum of its outgoing edges' scores (the gradient at
a sender's output is the sum of the gradients at the receivers it writes to, so this is the
node's own attribution). A new method is one subclass (docs/EXTENDING.md).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Shaped
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from analyses.batching import corrupted_inputs, pair_inputs
from analyses.graph import Graph
from analyses.metrics import Targets, clean_reference, metric_values, row_values
from analyses.patching import Metric, Patch, patch_batch
from ar2mdm.common.errors import UserError
from ar2mdm.common.registry import Registry
from ar2mdm.tasks.base import Batch
from probe.cache import Cache, head_differences
from probe.lens import answer_logit_diff
from probe.model import ProbedModel
from probe.names import parse
from probe.rules import GIM, RELP, RELP_AH, BackwardRules

LEVELS = ("edge", "node", "unit")
OFFLOADS = ("none", "cpu", "disk")
CHUNK_BYTES = 64 * 2**20  # senders multiplied with the gradients at a time: at most this much float32


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
    patch stack max(1, rows_per_pass // batch rows) patches per forward pass. steps_per_pass:
    interpolation points that share one pass of integrated-gradient methods (stacked copies of
    the batch; scores are the same). offload: where gradient methods keep the senders'
    corrupted-minus-clean values during the passes: "none" (the model's device), "cpu", "disk"
    (a temporary file).
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

    def __init__(
        self, *, steps: int = 5, rows_per_pass: int = 64, steps_per_pass: int = 1, offload: str = "none"
    ) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps (interpolation points of EAP-IG) must be a positive integer, got {steps!r}.")
        if not isinstance(rows_per_pass, int) or rows_per_pass < 1:
            raise UserError(f"rows_per_pass must be a positive integer, got {rows_per_pass!r}.")
        if not isinstance(steps_per_pass, int) or steps_per_pass < 1:
            raise UserError(
                f"steps_per_pass (EAP-IG points per pass) must be a positive integer, got {steps_per_pass!r}."
            )
        if offload not in OFFLOADS:
            raise UserError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}.")
        self.steps, self.rows_per_pass = steps, rows_per_pass
        self.steps_per_pass, self.offload = min(steps_per_pass, steps), offload

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

# (senders whose edges are scored, receivers they reach, summed receiver gradients [R, B, T, D] in
# float32 or wider, number of points summed)
Gradients = list[tuple[list[str], list[str], Float[Tensor, "_receivers batch pos d_model"], int]]


class SenderDeltas:
    """What each sender writes on the corrupted input minus the clean one, zero at padding: one
    [B, T, D] tensor per sender in the model's dtype, kept on the model's device
    (offload="none"), in CPU memory ("cpu") or in a temporary safetensors file ("disk", read back
    a chunk of senders at a time). Built in place from the corrupted cache, which it consumes."""

    def __init__(self, values: dict[str, Tensor], offload: str) -> None:
        self.offload = offload
        self._tmp: tempfile.TemporaryDirectory | None = None
        if offload == "disk":
            self._tmp = tempfile.TemporaryDirectory(prefix="ar2mdm-deltas-")
            self.file = Path(self._tmp.name) / "deltas.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(self.file))
            self.values: dict[str, Tensor] = {}
        else:
            self.values = {k: v.cpu() for k, v in values.items()} if offload == "cpu" else values

    @classmethod
    def of(
        cls,
        pm: ProbedModel,
        clean: Cache,
        corrupt: Cache,
        senders: Sequence[str],
        mask: Shaped[Tensor, "batch pos"],
        offload: str,
    ) -> SenderDeltas:
        """(written(corrupt) - written(clean)) * mask per sender; `corrupt`'s tensors are reused."""
        values = {}
        if pm.config.post_norms:
            w_clean, w_corrupt = written(pm, clean, senders), written(pm, corrupt, senders)
        else:
            w_clean, w_corrupt = clean, corrupt
            # heads recorded lazily (probe.cache.LazyHead): one product of the z difference per
            # layer, no head of either run is made
            layers: dict[int, list[str]] = {}
            for s in senders:
                n = parse(s)
                if n.kind == "head":
                    layers.setdefault(n.layer, []).append(s)
            for names in layers.values():
                values.update(head_differences(corrupt, clean, names))
        for s in senders:
            v = values[s] if s in values else w_corrupt[s].sub_(w_clean[s])
            values[s] = v.mul_(mask.to(v)[..., None])
        return cls(values, offload)

    def stack(
        self, names: Sequence[str], device: torch.device, dtype: torch.dtype
    ) -> Float[Tensor, "senders batch pos d_model"]:
        if self.offload == "disk":
            with safe_open(str(self.file), framework="pt") as fh:
                parts = [fh.get_tensor(n) for n in names]
        else:
            parts = [self.values[n] for n in names]
        return torch.stack([p.to(device=device, dtype=dtype) for p in parts])

    def close(self) -> None:
        self.values = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass
class GradientRun:
    """One batch's gradient blocks, sender deltas and the clean / corrupted metric per row [B]."""

    blocks: Gradients
    deltas: SenderDeltas
    clean: Float[Tensor, " batch"]
    corrupt: Float[Tensor, " batch"]


class GradientAttribution(AttributionMethod):
    """EAP and both EAP-IG variants: mean gradients at the receivers over the method's points
    (`gradients`), dotted with each sender's corrupted-minus-clean contribution.

    Memory (analyses.attribution_memory predicts it): the corrupted and clean sender values
    exist together only until their difference is taken (in place); the gradient passes then hold
    the differences [S, B, T, D] (model dtype, or offloaded), the summed receiver gradients
    [R, B, T, D] (float32) and one pass's autograd state; receivers' gradients are streamed into
    the sum (`run_with_grads(receiver_sink=)`), no graph is retained, and the final product runs
    over chunks of senders. Scores are accumulated in float64 on the CPU.
    """

    def gradients(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, targets: Targets) -> GradientRun:
        raise NotImplementedError

    def accumulate(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, sums: Sums, nodes: bool) -> None:
        senders, receivers = graph.senders, graph.receivers
        run = self.gradients(pm, graph, batch, metric, targets=Targets.of(batch.items))
        s_index = {s: i for i, s in enumerate(senders)}
        r_index = {r: i for i, r in enumerate(receivers)}
        B = batch.input_ids.shape[0]
        keep = sums.per_example is not None
        # [B, senders, receivers] per example when kept, else [1, ...] summed over the batch
        full = torch.zeros(B if keep else 1, len(senders), len(receivers), dtype=torch.float64)
        try:
            for scored, downstream, total, points in run.blocks:
                g = total.flatten(2)  # [R, B, T*D]
                per_chunk = max(1, CHUNK_BYTES // (g[0].numel() * g.element_size()))
                cols = torch.tensor([r_index[r] for r in downstream])
                for start in range(0, len(scored), per_chunk):
                    chunk = scored[start : start + per_chunk]
                    d = run.deltas.stack(chunk, total.device, total.dtype).flatten(2)  # [S, B, T*D]
                    if keep:
                        block = torch.einsum("sbx,rbx->bsr", d, g)
                    else:
                        block = (d.flatten(1) @ g.flatten(1).T)[None]
                    rows = torch.tensor([s_index[s] for s in chunk])
                    full[:, rows[:, None], cols[None, :]] = block.double().cpu() / points
        finally:
            run.deltas.close()
        edge_s = torch.tensor([s_index[s] for s, _ in graph.pairs])
        edge_r = torch.tensor([r_index[r] for _, r in graph.pairs])
        per = full[:, edge_s, edge_r]  # upstream (sender, receiver) pairs of `full` are no edges
        edges = per.sum(0)
        sums.add_examples(per)
        sums.edges += edges
        if nodes:
            sums.nodes.index_add_(0, edge_s, edges)
        sums.clean += float(run.clean.sum())
        sums.corrupt += float(run.corrupt.sum())
        sums.n += B


def corrupted_run(
    pm: ProbedModel, graph: Graph, batch: Batch, targets: Targets
) -> tuple[Float[Tensor, "batch vocab"], Cache]:
    """(logits at the read positions [B, V], senders' values) on the corrupted input."""
    logits, cache = pm.run_with_cache(pair_inputs(batch)[1], names=graph.senders)
    return targets.rows(logits), cache


def summed_gradients(downstream: Sequence[str], like: Tensor) -> tuple[Tensor, Callable[[str, Tensor], None]]:
    """A zero [R, B, T, D] float32-or-wider buffer and a `receiver_sink` adding a pass's
    gradients into it (a pass of k stacked copies of the batch [k B, T, D] adds their sum)."""
    B, T, D = like.shape
    total = torch.zeros(
        len(downstream), B, T, D, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device
    )
    index = {r: i for i, r in enumerate(downstream)}

    def sink(name: str, grad: Tensor) -> None:
        total[index[name]] += grad if grad.shape[0] == B else grad.reshape(-1, B, T, D).sum(0)

    return total, sink


class EAP(GradientAttribution):
    """Edge attribution patching: one gradient at the clean input; also attribution patching of
    units (AtP). Subclasses set `rules` to replace the chain rule by local backward rules
    (`probe.rules`): RelP and GIM."""

    name = "eap"
    levels = frozenset({"edge", "node", "unit"})
    rules: ClassVar[BackwardRules | None] = None

    def gradients(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, targets: Targets) -> GradientRun:
        corrupt_rows, corrupt = corrupted_run(pm, graph, batch, targets)
        total, sink = summed_gradients(graph.receivers, corrupt["embed"])
        # one pass at the clean input; it also records the clean activations
        result = pm.run_with_grads(
            pair_inputs(batch)[0],
            objective(metric, targets, None),
            receivers=graph.receivers,
            names=graph.senders,
            receiver_sink=sink,
            rules=self.rules,
        )
        ref = clean_reference(metric, result.logits, targets)
        clean_rows = targets.rows(result.logits)
        deltas = SenderDeltas.of(pm, result.cache, corrupt, graph.senders, batch.attention_mask, self.offload)
        return GradientRun(
            [(graph.senders, graph.receivers, total, 1)],
            deltas,
            row_values(metric, clean_rows, targets, ref),
            row_values(metric, corrupt_rows, targets, ref),
        )

    def unit_scores(
        self, pm: ProbedModel, batch: Batch, stored: Sequence[str]
    ) -> tuple[dict[str, Float[Tensor, "batch pos *_units"]], Cache]:
        _, corrupt = pm.run_with_cache(corrupted_inputs(batch), list(stored))
        g = pm.run_with_grads(
            batch,
            lambda logits: answer_logit_diff(logits, batch).sum(),
            outputs=list(stored),
            names=list(stored),
            rules=self.rules,
        )
        real = batch.attention_mask.bool().to(g.logits.device)
        return {name: (corrupt[name] - g.cache[name]) * g.outputs[name] * real[..., None] for name in stored}, g.cache


class RelP(EAP):
    """Relevance patching (Jafari et al. 2025, arXiv 2508.21258): EAP whose backward pass follows
    LRP rules: norm scales constant (LN-rule), activations pass relevance through (Identity
    rule), each factor of a gated MLP's product gets half (Half rule); attention by the chain
    rule. Cost: EAP's (2 forward passes, 1 backward pass)."""

    name = "relp"
    rules = RELP


class RelPAH(EAP):
    """RelP with the AH-rule (Ali et al. 2022): attention patterns constant, so q and k
    receivers get no gradient and a head is attributed through its values only."""

    name = "relp-ah"
    rules = RELP_AH


class GIMAttribution(EAP):
    """Gradient interaction modifications (Edin et al. 2025, arXiv 2505.17630): EAP whose backward
    pass freezes norm statistics, takes the attention softmax's gradient at temperature 2, and
    scales the gradients of q, k, v by 1/4, 1/4, 1/2 and of a gated MLP's gate and up by 1/2
    (gim-explain's defaults). Cost: EAP's."""

    name = "gim"
    rules = GIM


class IntegratedGradients(GradientAttribution):
    """EAP-IG: gradients averaged over `steps` points between the corrupted and the clean run,
    one sender group at a time (`groups`); `steps_per_pass` points share a pass as stacked
    copies of the batch (same scores, fewer and larger passes: for GPUs)."""

    uses_steps = True

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        """(interpolated senders, senders whose edges their passes score) per group."""
        raise NotImplementedError

    def path(
        self, pm: ProbedModel, group: Sequence[str], ends: Ends, along: PathContext
    ) -> Iterator[dict[str, Tensor]]:
        """The group's values at each of the `steps` points whose gradients are averaged:
        corrupted + alpha_k (clean - corrupted), alpha_k = (k + 1/2) / steps (midpoint rule)."""
        like = ends[group[0]][0]
        for k in range(self.steps):
            a = torch.tensor((k + 0.5) / self.steps, dtype=like.dtype, device=like.device)
            yield {name: ends[name][0] + a * (ends[name][1] - ends[name][0]) for name in group}

    def gradients(self, pm: ProbedModel, graph: Graph, batch: Batch, metric: str, targets: Targets) -> GradientRun:
        corrupt_rows, corrupt = corrupted_run(pm, graph, batch, targets)
        clean_in = pair_inputs(batch)[0]
        clean_logits, clean = pm.run_with_cache(clean_in, names=graph.senders)
        ref = clean_reference(metric, clean_logits, targets)
        clean_rows = targets.rows(clean_logits)
        del clean_logits
        groups = self.groups(pm, graph.senders)
        # the values interpolated between (corrupted, clean); the corrupted ones are copied, as the
        # differences are taken in place
        ends = {name: (corrupt[name].clone(), clean[name]) for group, _ in groups for name in group}
        like = corrupt["embed"]
        deltas = SenderDeltas.of(pm, clean, corrupt, graph.senders, batch.attention_mask, self.offload)
        del clean, corrupt
        along = PathContext(clean_in, targets, corrupt_rows, batch.attention_mask)
        target = objective(metric, targets.repeat(self.steps_per_pass), _repeat(ref, self.steps_per_pass))
        blocks: Gradients = []
        for group, scored in groups:
            downstream = downstream_receivers(graph, scored)
            total, sink = summed_gradients(downstream, like)
            points = self.path(pm, group, ends, along)
            n = 0
            while chunk := list(itertools.islice(points, self.steps_per_pass)):
                k = len(chunk)
                n += k
                with pm.intervene() as iv:
                    for name in group:
                        iv.set(name, torch.cat([p[name] for p in chunk]) if k > 1 else chunk[0][name])
                    step_target = (
                        target if k == self.steps_per_pass else objective(metric, targets.repeat(k), _repeat(ref, k))
                    )
                    pm.run_with_grads(
                        _repeat_inputs(clean_in, k), step_target, receivers=downstream, receiver_sink=sink
                    )
            blocks.append((scored, downstream, total, n))
        return GradientRun(
            blocks, deltas, row_values(metric, clean_rows, targets, ref), row_values(metric, corrupt_rows, targets, ref)
        )


# (corrupted value, clean value) of each interpolated sender, [B, T, D]
Ends = dict[str, tuple[Tensor, Tensor]]


@dataclass
class PathContext:
    """What a path between the corrupted and the clean run may read: the clean inputs, the
    targets, the corrupted logits at the read positions [B, V] and the padding mask [B, T]."""

    clean_in: dict[str, Tensor]
    targets: Targets
    corrupt_rows: Float[Tensor, "batch vocab"]
    mask: Shaped[Tensor, "batch pos"]


def _repeat(t: Tensor | None, k: int) -> Tensor | None:
    """k copies of a batch-first tensor stacked along the batch."""
    if t is None or k == 1:
        return t
    return t.repeat(k, *[1] * (t.ndim - 1))


def _repeat_inputs(inputs: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    return {key: _repeat(v, k) for key, v in inputs.items()}


class EAPIGInputs(IntegratedGradients):
    """EAP-IG on inputs: the embedding interpolated; every edge scored from the same passes."""

    name = "eap-ig-inputs"

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        return [(["embed"], list(senders))]


class EAPGP(EAPIGInputs):
    """EAP-GP (Zhang et al. 2025, arXiv 2502.06852): EAP-IG on inputs whose integration path
    (GradPath) is built from the model instead of a straight line. It starts at the clean
    embedding and takes `steps` steps, each down the gradient of the squared distance between
    the logits at the read positions and the corrupted run's, ||G(gamma) - G(x')||^2, normalised
    per example; each step is ||x - x'|| / steps long (per example, so the path is as long as
    EAP-IG's; the paper normalises the direction and leaves the length to the implementation).
    The gradients of the metric are averaged over the path's `steps` points gamma_1..gamma_m.
    Cost: 2 forward passes and 2 x `steps` forward+backward passes per batch."""

    name = "eap-gp"

    def path(
        self, pm: ProbedModel, group: Sequence[str], ends: Ends, along: PathContext
    ) -> Iterator[dict[str, Tensor]]:
        corrupt, clean = ends["embed"]
        real = along.mask.to(clean)[..., None]
        length = ((clean - corrupt) * real).flatten(1).norm(dim=1).view(-1, 1, 1) / self.steps  # of one step
        target = along.corrupt_rows.detach()

        def distance(logits: Tensor) -> Tensor:
            return (along.targets.rows(logits).to(target.dtype) - target).pow(2).sum()

        gamma = clean
        for _ in range(self.steps):
            with pm.intervene() as iv:
                iv.set("embed", gamma)
                g = pm.run_with_grads(along.clean_in, distance, outputs=["embed"]).outputs["embed"] * real
            norm = g.flatten(1).norm(dim=1).view(-1, 1, 1)
            step = torch.where(norm > 0, length / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
            gamma = (gamma - step * g).to(clean.dtype)
            yield {"embed": gamma}


class EAPIGActivations(IntegratedGradients):
    """EAP-IG on activations: the embedding, each layer's heads (they write together, before
    their MLP reads) and each MLP (an MoE layer's experts together) interpolated in turn; a
    group's passes score its own edges."""

    name = "eap-ig-activations"

    def groups(self, pm: ProbedModel, senders: Sequence[str]) -> list[tuple[list[str], list[str]]]:
        out = [["embed"]]
        for layer in range(pm.config.n_layers):
            out.append([f"L{layer}.H{h}" for h in range(pm.config.n_heads)])
            out.append(pm.shape.mlp_senders(layer))
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
    members = set(group)
    reach = {r for s, r in graph.pairs if s in members}
    return [r for r in graph.receivers if r in reach]


def objective(
    metric: str, targets: Targets, ref: Float[Tensor, "batch vocab"] | None
) -> Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]]:
    """The scalar a backward pass differentiates: the metric summed over the batch's rows."""
    return lambda logits: metric_values(metric, logits, targets, ref).sum()
