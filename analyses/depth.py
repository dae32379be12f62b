"""Where in depth a model does a task: layer distribution, logit lens, targeted ablations.

Three views of depth, all in canonical names (`L{l}.H{h}`, `L{l}.mlp`, `L{l}.mlp.neuron{i}`):

1. Layer distribution of important components. Given an importance score per component (from
   `analyses.circuits` node importance, from `node_patching_scores` or `dla_scores` here, or any
   `Mapping[str, float]`), keep the top-K by |score| and ask where they sit:

       mass[l]     = sum of |score| of top-K components in layer l / sum over the whole top-K
                     (weight="count": each top-K component counts 1 instead)
       early_mass  = sum of mass[l] over the first third of layers
       centre      = sum_l mass[l] * (l + 0.5) / n_layers        (normalised depth, in (0, 1))

   A layer is a bin [l, l + 1) of depth; its centre is (l + 0.5) / n_layers, so a uniform mass
   has centre 0.5 and early mass ~1/3. The thirds (`region`) are decided by the bin centre:
   early if (l + 0.5) / n_layers < 1/3, late if > 2/3, middle otherwise (3 layers: L0 | L1 | L2;
   30 layers: L0-L9 | L10-L19 | L20-L29). `embed` and `logits` carry no layer and are left out.
   `compare_depth` puts an ARM and its MDM side by side with paired bootstrap intervals when the
   scores are given per example.

2. Logit lens by layer (`lens_profile`, wrapping `probe.logit_lens`): the rank and probability of
   the first correct answer token, and the logit difference correct - counterfactual (over the
   same candidate sets as `probe.answer_logit_diff`), after the embedding and after every layer,
   at each example's shift-aware read position. The last point is the model's own prediction.

3. Ablations (`ablate`, `targeted_ablation`). The task metric is the logit difference at the read
   position (`probe.answer_logit_diff`); an ablation's effect is its *drop*, clean LD - ablated
   LD per example, reported with a percentile bootstrap interval over examples and as a share of
   the clean - corrupted gap. Methods: "zero" (the node's output set to 0), "mean" (set to its
   mean over every real token of the reference examples, computed streaming), "corrupt" (set to
   its value on the corrupted input: resample ablation / noising patch). `targeted_ablation`
   ablates the top-K components that lie in one third of the layers (default: early) and, with
   the same number of components of the same kinds, three controls: random components from any
   layer (several draws, averaged per example) and the most important components of each other
   third (the importance-matched middle / late controls). Differences target - control are
   paired over examples.

Everything streams over batches of `batch_size` examples; only per-example scalars are kept.
Bootstraps are seeded (`torch.Generator`), so the same call gives the same interval.

    >>> scores = {"L0.H1": 3.0, "L1.mlp": -1.0, "L2.H0": 2.0}
    >>> d = layer_distribution(scores, n_layers=3, k=2)
    >>> d.top, [round(m, 2) for m in d.mass], round(d.early_mass, 2)
    (('L0.H1', 'L2.H0'), [0.6, 0.0, 0.4], 0.6)
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.batching import batches, corrupted_inputs
from analyses.statistics import (
    Interval,
    bootstrap_ci,
    bootstrap_indices,
    percentile_interval,
    ratio_of_means,
)
from common.errors import UserError
from probe.cache import Cache
from probe.lens import answer_logit_diff, logit_lens, read_targets
from probe.names import Name, parse
from tasks.base import Rendered

if TYPE_CHECKING:
    from probe.model import ProbedModel

Region = Literal["early", "middle", "late"]
REGIONS: tuple[Region, ...] = ("early", "middle", "late")
Method = Literal["zero", "mean", "corrupt"]
METHODS: tuple[str, ...] = ("zero", "mean", "corrupt")
Weight = Literal["score", "count"]

# --- layers -----------------------------------------------------------------------------------------

_LAYERED = ("head", "mlp", "neuron", "receiver")


def layer_of(name: str) -> int | None:
    """The layer of a component name; None for `embed` and `logits`.

    Heads, MLPs, neurons and head receivers have a layer; residual-stream points and patterns
    are not components and raise UserError, as does a malformed name.
    """
    n = parse(name)
    if n.kind in ("embed", "logits"):
        return None
    if n.kind not in _LAYERED:
        raise UserError(
            f"{name!r} is not a component; depth analyses take scores of heads (L{{l}}.H{{h}}), "
            "MLPs (L{l}.mlp) or neurons (L{l}.mlp.neuron{i})."
        )
    return n.layer


def region(layer: int, n_layers: int) -> Region:
    """The third of the depth a layer's bin centre (l + 0.5) / n_layers falls in."""
    if n_layers < 1 or not 0 <= layer < n_layers:
        raise UserError(f"layer {layer} does not exist in a model with {n_layers} layers.")
    centre = (layer + 0.5) / n_layers
    return "early" if centre < 1 / 3 else "late" if centre > 2 / 3 else "middle"


def early_mass(mass: Float[Tensor, "*batch layers"]) -> Float[Tensor, "*batch"]:
    """Share of `mass` (normalised per layer, last dim) in the first third of layers."""
    n = mass.shape[-1]
    keep = torch.tensor([region(layer, n) == "early" for layer in range(n)])
    return (mass * keep.to(mass)).sum(-1)


def centre_of_mass(mass: Float[Tensor, "*batch layers"]) -> Float[Tensor, "*batch"]:
    """Normalised depth sum_l mass[l] * (l + 0.5) / n_layers (mass sums to 1 over the last dim)."""
    n = mass.shape[-1]
    depth = (torch.arange(n, dtype=mass.dtype) + 0.5) / n
    return (mass * depth).sum(-1)


# --- layer distribution -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDistribution:
    """Where the top-K components of a score map sit.

    top: the K components, most important first. mass: share per layer (sums to 1; NaN when the
    top-K scores are all zero). weight: "score" (|score| mass) or "count" (one per component).
    """

    n_layers: int
    k: int
    weight: str
    top: tuple[str, ...]
    scores: tuple[float, ...]
    mass: tuple[float, ...]

    @property
    def early_mass(self) -> float:
        return float(early_mass(torch.tensor(self.mass, dtype=torch.float64)))

    @property
    def centre(self) -> float:
        return float(centre_of_mass(torch.tensor(self.mass, dtype=torch.float64)))

    @property
    def mean_layer(self) -> float:
        """The centre in layer units: sum_l mass[l] * l."""
        return float(sum(m * layer for layer, m in enumerate(self.mass)))

    def to_dict(self) -> dict:
        return {
            "n_layers": self.n_layers, "k": self.k, "weight": self.weight, "top": list(self.top),
            "scores": list(self.scores), "mass": list(self.mass), "early_mass": self.early_mass,
            "centre": self.centre, "mean_layer": self.mean_layer,
        }


def _layered_scores(scores: Mapping[str, float], n_layers: int) -> list[tuple[str, int, float]]:
    """(name, layer, score) of every layered component, in the order given; checks everything."""
    if n_layers < 1:
        raise UserError(f"n_layers must be >= 1, got {n_layers}.")
    out = []
    for name, value in scores.items():
        layer = layer_of(name)
        if layer is None:
            continue
        if layer >= n_layers:
            raise UserError(f"{name}: layer {layer} does not exist in a {n_layers}-layer model; pass the model's n_layers.")
        v = float(value)
        if not math.isfinite(v):
            raise UserError(f"the score of {name} is {v}; scores must be finite numbers.")
        out.append((name, layer, v))
    if not out:
        raise UserError("no head, MLP or neuron scores given; a layer distribution needs some.")
    return out


def _check_k(k: int | None, available: int) -> int:
    if k is None:
        return available
    if not isinstance(k, int) or k < 1:
        raise UserError(f"k must be a positive integer (or None for all components), got {k!r}.")
    if k > available:
        raise UserError(f"k={k} but only {available} components have scores; pass k <= {available} or k=None.")
    return k


def top_components(scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """The k components with the largest |score| (embed/logits included), ties in given order."""
    items = list(scores.items())
    k = _check_k(k, len(items))
    order = sorted(range(len(items)), key=lambda i: -abs(float(items[i][1])))
    return [items[i][0] for i in order[:k]]


def layer_distribution(
    scores: Mapping[str, float], n_layers: int, k: int | None = None, *, weight: Weight = "score"
) -> LayerDistribution:
    """The top-`k` components of `scores` (by |score|; None: all) and their mass per layer.

    Ties keep the order of `scores`. See the module docstring for the definitions.
    """
    if weight not in ("score", "count"):
        raise UserError(f"weight={weight!r}; use 'score' (|score| mass) or 'count' (one per component).")
    entries = _layered_scores(scores, n_layers)
    k = _check_k(k, len(entries))
    order = sorted(range(len(entries)), key=lambda i: -abs(entries[i][2]))[:k]
    chosen = [entries[i] for i in order]
    mass = [0.0] * n_layers
    for _, layer, v in chosen:
        mass[layer] += abs(v) if weight == "score" else 1.0
    total = sum(mass)
    mass = [m / total if total > 0 else math.nan for m in mass]
    return LayerDistribution(n_layers, k, weight, tuple(n for n, _, _ in chosen), tuple(v for _, _, v in chosen), tuple(mass))


# --- bootstrap --------------------------------------------------------------------------------------


# --- comparing ARM and MDM --------------------------------------------------------------------------


@dataclass
class DepthComparison:
    """One task's layer distributions in two models and the differences b - a (paired intervals
    when per-example scores of the same examples were given; NaN bounds otherwise)."""

    task: str
    a: LayerDistribution
    b: LayerDistribution
    early_mass_diff: Interval
    centre_diff: Interval
    early_mass: dict[str, Interval] = field(default_factory=dict)
    centre: dict[str, Interval] = field(default_factory=dict)
    # bootstrap replicates of the differences ("early_mass_diff", "centre_diff"; [n_boot] each),
    # for statistics pooled over tasks; empty without per-example scores. Not in to_dict.
    samples: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "task": self.task, "a": self.a.to_dict(), "b": self.b.to_dict(),
            "early_mass_diff": self.early_mass_diff.to_dict(), "centre_diff": self.centre_diff.to_dict(),
            "early_mass": {k: v.to_dict() for k, v in self.early_mass.items()},
            "centre": {k: v.to_dict() for k, v in self.centre.items()},
        }


def mean_scores(per_example: Mapping[str, Tensor | float]) -> dict[str, float]:
    """The mean over examples of each component's per-example scores (floats pass through)."""
    return {name: float(torch.as_tensor(v, dtype=torch.float64).mean()) for name, v in per_example.items()}


def _score_matrix(per_example: Mapping[str, Tensor | float], n_layers: int) -> tuple[list[str], Tensor, Tensor] | None:
    """(names, [N, C] scores, [C] layers) of the layered components, or None if any is a float."""
    names, cols, layers = [], [], []
    for name, v in per_example.items():
        layer = layer_of(name)
        if layer is None:
            continue
        t = torch.as_tensor(v, dtype=torch.float64)
        if t.ndim != 1:
            return None
        names.append(name)
        cols.append(t)
        layers.append(layer)
    if not cols or len({len(c) for c in cols}) != 1:
        if cols:
            raise UserError("per-example scores must have the same number of examples for every component.")
        return None
    _layered_scores(mean_scores(dict(zip(names, cols, strict=True))), n_layers)  # checks names and values
    return names, torch.stack(cols, 1), torch.tensor(layers)


def _boot_depth(matrix: Tensor, layers: Tensor, n_layers: int, k: int, weight: Weight, idx: Tensor) -> tuple[Tensor, Tensor]:
    """(early mass [n_boot], centre [n_boot]) of the top-k distribution of each resample's means."""
    early, centre = [], []
    for chunk in idx.split(64):
        means = matrix[chunk].mean(1).abs()  # [b, C]
        vals, top = means.topk(k, dim=1)
        w = vals if weight == "score" else torch.ones_like(vals)
        mass = torch.zeros(len(chunk), n_layers, dtype=torch.float64).scatter_add_(1, layers[top], w)
        mass = mass / mass.sum(1, keepdim=True)
        early.append(early_mass(mass))
        centre.append(centre_of_mass(mass))
    return torch.cat(early), torch.cat(centre)


def compare_depth(
    a: Mapping[str, Tensor | float],
    b: Mapping[str, Tensor | float],
    n_layers: int,
    k: int | None = None,
    *,
    task: str = "",
    labels: tuple[str, str] = ("ar", "mdm"),
    weight: Weight = "score",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> DepthComparison:
    """Layer distributions of two models on one task and the differences b - a.

    a, b: component scores, either floats or per-example tensors [N] (then distributions are
    taken of the means, and intervals come from resampling examples: the same resample for both
    models when they share N examples, i.e. the same pool; independent resamples otherwise).
    """
    da = layer_distribution(mean_scores(a), n_layers, k, weight=weight)
    db = layer_distribution(mean_scores(b), n_layers, k, weight=weight)
    nan = math.nan
    em_diff = Interval(db.early_mass - da.early_mass, nan, nan, level)
    c_diff = Interval(db.centre - da.centre, nan, nan, level)
    out = DepthComparison(task, da, db, em_diff, c_diff)
    ma, mb = _score_matrix(a, n_layers), _score_matrix(b, n_layers)
    if ma is None or mb is None:
        return out
    idx_a = bootstrap_indices(ma[1].shape[0], n_boot, seed)
    idx_b = idx_a if mb[1].shape[0] == ma[1].shape[0] else bootstrap_indices(mb[1].shape[0], n_boot, seed + 1)
    ea, ca = _boot_depth(ma[1], ma[2], n_layers, da.k, weight, idx_a)
    eb, cb = _boot_depth(mb[1], mb[2], n_layers, db.k, weight, idx_b)
    out.samples = {"early_mass_diff": eb - ea, "centre_diff": cb - ca}
    out.early_mass_diff = percentile_interval(eb - ea, db.early_mass - da.early_mass, level)
    out.centre_diff = percentile_interval(cb - ca, db.centre - da.centre, level)
    out.early_mass = {labels[0]: percentile_interval(ea, da.early_mass, level), labels[1]: percentile_interval(eb, db.early_mass, level)}
    out.centre = {labels[0]: percentile_interval(ca, da.centre, level), labels[1]: percentile_interval(cb, db.centre, level)}
    return out


# --- batches ----------------------------------------------------------------------------------------


@torch.no_grad()
def baseline_logit_diffs(pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(clean LD [N], corrupted LD [N]) at each example's read position."""
    clean, corrupt = [], []
    for batch in batches(pm, items, batch_size):
        clean.append(answer_logit_diff(pm(batch), batch).cpu())
        corrupt.append(answer_logit_diff(pm(corrupted_inputs(batch)), batch).cpu())
    return torch.cat(clean), torch.cat(corrupt)


# --- logit lens -------------------------------------------------------------------------------------


@dataclass
class LensProfile:
    """Logit lens at the read positions: `points` ("L0.resid_pre" = after the embedding, then
    "L{l}.resid_post"); `ranks` (first correct id; 0 = top-1), `logprobs` (of that id) and
    `logit_diffs` (logsumexp over the correct set - over the counterfactual set) are [points, N]."""

    points: list[str]
    ranks: Tensor
    logprobs: Tensor
    logit_diffs: Tensor

    def summary(self) -> dict[str, list[float]]:
        return {
            "points": self.points,
            "mean_rank": self.ranks.float().mean(1).tolist(),
            "median_rank": self.ranks.float().median(1).values.tolist(),
            "top1": (self.ranks == 0).float().mean(1).tolist(),
            "mean_prob": self.logprobs.exp().mean(1).tolist(),
            "mean_logit_diff": self.logit_diffs.mean(1).tolist(),
        }

    def first_point(self, top1: float = 0.5) -> str | None:
        """The first point at which at least a `top1` share of examples rank the answer first."""
        shares = (self.ranks == 0).float().mean(1)
        hits = (shares >= top1).nonzero()
        return self.points[int(hits[0])] if len(hits) else None


def _set_logprob(pm: ProbedModel, cache: Cache, pos: Tensor, sets: list[Tensor]) -> Tensor:
    """[points, B] log P(any id of each example's set) through the lens."""
    width = max(len(s) for s in sets)
    parts = []
    for j in range(width):
        ids = torch.tensor([int(s[j]) if j < len(s) else int(s[0]) for s in sets])
        lp = logit_lens(pm, cache, pos, ids).logprobs
        absent = torch.tensor([j >= len(s) for s in sets])
        parts.append(lp.masked_fill(absent[None], -math.inf))
    return torch.logsumexp(torch.stack(parts), 0)


def lens_profile(pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64) -> LensProfile:
    """The logit lens of every example at its read position, streamed over batches."""
    ranks, logprobs, diffs, points = [], [], [], None
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, ["L0.resid_pre", "L*.resid_post"])
        pos, correct, _ = read_targets(batch)
        curve = logit_lens(pm, cache, pos, correct)
        points = curve.points
        ranks.append(curve.ranks)
        logprobs.append(curve.logprobs)
        rows = batch.items
        if any(len(r.counterfactual_ids) == 0 for r in rows):
            raise UserError("an example has no counterfactual answer; the lens logit difference needs one.")
        good = _set_logprob(pm, cache, pos, [r.correct_ids for r in rows])
        bad = _set_logprob(pm, cache, pos, [r.counterfactual_ids for r in rows])
        diffs.append(good - bad)
    assert points is not None
    return LensProfile(points, torch.cat(ranks, 1), torch.cat(logprobs, 1), torch.cat(diffs, 1))


# --- ablations --------------------------------------------------------------------------------------


def _component(pm: ProbedModel, name: str) -> Name:
    n = pm.shape.check(name)
    if n.kind not in ("head", "mlp", "neuron"):
        raise UserError(f"cannot ablate {name!r}: ablations act on heads (L{{l}}.H{{h}}), MLPs (L{{l}}.mlp) and neurons (L{{l}}.mlp.neuron{{i}}).")
    return n


def _stored(n: Name) -> str:
    """The cache entry a component is read from (neurons live in their layer's vector)."""
    return f"L{n.layer}.mlp.neurons" if n.kind == "neuron" else str(n)


def layer_components(pm: ProbedModel, layers: int | Sequence[int]) -> list[str]:
    """Every head and the MLP of each layer in `layers` (a whole-layer ablation)."""
    out = []
    for layer in [layers] if isinstance(layers, int) else layers:
        pm.shape.check(f"L{layer}.mlp")
        out += pm.shape.heads(layer) + [f"L{layer}.mlp"]
    return out


@torch.no_grad()
def reference_means(pm: ProbedModel, items: Sequence[Rendered], components: Sequence[str], *, batch_size: int = 64) -> dict[str, Tensor]:
    """Each component's mean output over every real token of the clean `items` (streamed):
    [d_model] for heads and MLPs, a scalar for neurons."""
    parsed = [_component(pm, c) for c in components]
    stored = sorted({_stored(n) for n in parsed})
    sums: dict[str, Tensor] = {}
    count = 0.0
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, stored)
        mask = batch.attention_mask.to(torch.float64)
        count += float(mask.sum())
        for s in stored:
            x = cache[s].to(torch.float64)
            part = (x * mask.to(x.device)[..., None]).sum((0, 1)).cpu()
            sums[s] = sums[s] + part if s in sums else part
    out = {}
    for c, n in zip(components, parsed, strict=True):
        mean = sums[_stored(n)] / count
        out[c] = (mean[n.neuron] if n.kind == "neuron" else mean).float()
    return out


def _ablation_edits(iv, parsed: list[Name], names: Sequence[str], method: str,
                    means: Mapping[str, Tensor] | None, corrupt: Cache | None) -> None:
    for name, n in zip(names, parsed, strict=True):
        if method == "zero":
            iv.zero(str(n))
        elif method == "mean":
            assert means is not None
            iv.set(str(n), means[name])
        else:
            assert corrupt is not None
            iv.patch(str(n), corrupt)


def _check_method(method: str, means: Mapping[str, Tensor] | None, components: Sequence[str]) -> None:
    if method not in METHODS:
        raise UserError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "mean":
        missing = [c for c in components if means is None or c not in means]
        if missing:
            raise UserError(f"mean ablation needs a reference mean for {missing[:3]}...: pass means=reference_means(pm, reference_items, components).")


@torch.no_grad()
def ablated_logit_diffs(
    pm: ProbedModel,
    items: Sequence[Rendered],
    components: Sequence[str],
    *,
    method: Method = "mean",
    means: Mapping[str, Tensor] | None = None,
    batch_size: int = 64,
) -> Tensor:
    """[N] logit differences with every component in `components` ablated by `method` at every
    position ("mean" needs `means` from `reference_means`; "corrupt" reads each example's
    corrupted input). An empty list gives the clean logit differences."""
    parsed = [_component(pm, c) for c in components]
    _check_method(method, means, components)
    out = []
    for batch in batches(pm, items, batch_size):
        corrupt = None
        if method == "corrupt" and parsed:
            _, corrupt = pm.run_with_cache(corrupted_inputs(batch), sorted({_stored(n) for n in parsed}))
        with pm.intervene() as iv:
            _ablation_edits(iv, parsed, components, method, means, corrupt)
            out.append(answer_logit_diff(pm(batch), batch).cpu())
    return torch.cat(out)


@dataclass
class AblationResult:
    """One ablation over N examples. clean / ablated / corrupted: LD per example [N] (for several
    random draws, `ablated` is the mean over draws per example and `draws` each draw's mean drop).
    drop: mean(clean - ablated) with its interval; gap_share: mean drop / mean(clean - corrupted)."""

    label: str
    components: tuple[str, ...]
    method: str
    clean: Tensor
    ablated: Tensor
    corrupted: Tensor
    drop: Interval
    gap_share: Interval
    draws: tuple[float, ...] = ()
    draw_components: tuple[tuple[str, ...], ...] = ()

    def to_dict(self) -> dict:
        return {
            "label": self.label, "components": list(self.components), "method": self.method,
            "n": len(self.clean), "mean_clean": float(self.clean.mean()), "mean_ablated": float(self.ablated.mean()),
            "mean_corrupted": float(self.corrupted.mean()), "drop": self.drop.to_dict(),
            "gap_share": self.gap_share.to_dict(), "draws": list(self.draws),
            "draw_components": [list(c) for c in self.draw_components],
        }


def summarise_ablation(label: str, components: Sequence[str], method: str, clean: Tensor, ablated: Tensor,
                       corrupted: Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                       draws: Sequence[float] = (), draw_components: Sequence[Sequence[str]] = ()) -> AblationResult:
    """An `AblationResult` from per-example logit differences."""
    drop = clean.double() - ablated.double()
    return AblationResult(
        label, tuple(components), method, clean, ablated, corrupted,
        bootstrap_ci(drop, n_boot=n_boot, level=level, seed=seed),
        ratio_of_means(drop, clean.double() - corrupted.double(), n_boot=n_boot, level=level, seed=seed),
        tuple(draws), tuple(tuple(c) for c in draw_components),
    )


def ablate(
    pm: ProbedModel,
    items: Sequence[Rendered],
    components: Sequence[str],
    *,
    method: Method = "mean",
    means: Mapping[str, Tensor] | None = None,
    label: str = "ablation",
    batch_size: int = 64,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> AblationResult:
    """Ablate `components` together and report the drop of the logit difference (see module
    docstring). "mean" without `means` takes the means over `items` themselves."""
    if method == "mean" and means is None:
        means = reference_means(pm, items, components, batch_size=batch_size)
    clean, corrupted = baseline_logit_diffs(pm, items, batch_size=batch_size)
    ablated = ablated_logit_diffs(pm, items, components, method=method, means=means, batch_size=batch_size)
    return summarise_ablation(label, components, method, clean, ablated, corrupted, n_boot=n_boot, level=level, seed=seed)


# --- node scores ------------------------------------------------------------------------------------


def _nodes(pm: ProbedModel, nodes: Sequence[str] | None) -> list[str]:
    return [n for n in pm.senders() if n != "embed"] if nodes is None else [str(_component(pm, n)) for n in nodes]


@torch.no_grad()
def node_patching_scores(
    pm: ProbedModel, items: Sequence[Rendered], nodes: Sequence[str] | None = None, *, batch_size: int = 64
) -> dict[str, Tensor]:
    """Exact node activation patching (noising): for each node (default every head and MLP),
    clean LD - LD with that node alone set to its value on the corrupted input; [N] per node.
    One forward pass per node and batch."""
    names = _nodes(pm, nodes)
    parsed = [parse(n) for n in names]
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for batch in batches(pm, items, batch_size):
        clean = answer_logit_diff(pm(batch), batch).cpu()
        _, corrupt = pm.run_with_cache(corrupted_inputs(batch), sorted({_stored(n) for n in parsed}))
        for name in names:
            with pm.intervene() as iv:
                iv.patch(name, corrupt)
                out[name].append(clean - answer_logit_diff(pm(batch), batch).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


@torch.no_grad()
def dla_scores(pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64) -> dict[str, Tensor]:
    """Direct logit attribution of every head and MLP to logit(correct) - logit(counterfactual)
    (first ids of each set) at the read position, [N] per node (`probe.direct_logit_attribution`).
    Direct effects only: an early component that works through later ones scores ~0 here."""
    from probe.lens import direct_logit_attribution

    names = _nodes(pm, None)
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, ["embed", "L*.H*", "L*.mlp", f"L{pm.config.n_layers - 1}.resid_post"])
        pos, correct, counter = read_targets(batch)
        dla = direct_logit_attribution(pm, cache, pos, correct, counter)
        for n in names:
            out[n].append(dla.parts[n].cpu())
    return {n: torch.cat(v) for n, v in out.items()}


# --- targeted ablation ------------------------------------------------------------------------------


def _kind(name: str) -> str:
    return parse(name).kind


def _universe(pm: ProbedModel, kind: str) -> list[str]:
    if kind == "head":
        return [f"L{layer}.H{h}" for layer in range(pm.config.n_layers) for h in range(pm.config.n_heads)]
    if kind == "mlp":
        return [f"L{layer}.mlp" for layer in range(pm.config.n_layers)]
    return [f"L{layer}.mlp.neuron{i}" for layer in range(pm.config.n_layers) for i in range(pm.config.d_mlp)]


def random_matched(pm: ProbedModel, target: Sequence[str], rng: random.Random, *,
                   layers: Sequence[int] | None = None) -> list[str]:
    """Random components with the same count of each kind as `target`, none of them in `target`,
    drawn from every layer (or from `layers` when given)."""
    chosen: list[str] = []
    taken = set(target)
    for kind in sorted({_kind(t) for t in target}):
        need = sum(_kind(t) == kind for t in target)
        pool = [c for c in _universe(pm, kind) if c not in taken and (layers is None or layer_of(c) in layers)]
        if len(pool) < need:
            raise UserError(f"only {len(pool)} {kind} components are left to draw a random control of {need} from; ablate fewer.")
        chosen += rng.sample(pool, need)
    return chosen


def region_matched(pm: ProbedModel, target: Sequence[str], scores: Mapping[str, float], where: Region) -> list[str]:
    """The most important (|score|) components of region `where` with the kinds of `target`
    (same count per kind where the region has them; the rest filled with its next most important
    components of any kind; fewer only if the region is smaller than `target`)."""
    n_layers = pm.config.n_layers
    taken = set(target)

    def key(c: str) -> float:
        return -abs(float(scores.get(c, 0.0)))

    members = {kind: sorted((c for c in _universe(pm, kind) if c not in taken and region(layer_of(c), n_layers) == where), key=key)
               for kind in {_kind(t) for t in target}}
    chosen: list[str] = []
    for kind in sorted(members):
        need = sum(_kind(t) == kind for t in target)
        chosen += members[kind][:need]
    rest = sorted((c for ms in members.values() for c in ms if c not in chosen), key=key)
    chosen += rest[: len(target) - len(chosen)]
    return chosen


@dataclass
class TargetedAblation:
    """Ablating the top-K components of one region against size-matched controls.

    target: the region's top-K components ablated together. controls: "random" (random draws of
    the same kinds from any layer), and one per other region (its most important components).
    versus: paired interval of drop(target) - drop(control) per control.
    """

    task: str
    k: int
    region: str
    method: str
    target: AblationResult
    controls: dict[str, AblationResult]
    versus: dict[str, Interval]

    def to_dict(self) -> dict:
        return {
            "task": self.task, "k": self.k, "region": self.region, "method": self.method,
            "target": self.target.to_dict(), "controls": {k: v.to_dict() for k, v in self.controls.items()},
            "versus": {k: v.to_dict() for k, v in self.versus.items()},
        }


def targeted_ablation(
    pm: ProbedModel,
    items: Sequence[Rendered],
    scores: Mapping[str, float],
    *,
    k: int,
    where: Region = "early",
    method: Method = "mean",
    n_random: int = 5,
    task: str = "",
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    batch_size: int = 64,
    means: Mapping[str, Tensor] | None = None,
) -> TargetedAblation:
    """Ablate the components of region `where` among the top-`k` of `scores` (the circuit's
    early-layer part by default) and size-matched controls; see the module docstring.

    scores: importance per head / MLP (or neuron) in canonical names. means: reference means for
    method="mean" (default: over `items`, clean).
    """
    if where not in REGIONS:
        raise UserError(f"where={where!r}; use one of {', '.join(REGIONS)}.")
    if n_random < 1:
        raise UserError(f"n_random must be >= 1, got {n_random}.")
    n_layers = pm.config.n_layers
    dist = layer_distribution(scores, n_layers, k)
    target = [c for c in dist.top if region(layer_of(c), n_layers) == where]
    if not target:
        raise UserError(f"none of the top-{k} components lies in the {where} third of the layers ({list(dist.top)}); raise k or pick another region.")
    for c in target:
        _component(pm, c)
    rng = random.Random(seed)
    randoms = [random_matched(pm, target, rng) for _ in range(n_random)]
    others = {r: region_matched(pm, target, scores, r) for r in REGIONS if r != where}
    every = sorted(set(target) | {c for d in randoms for c in d} | {c for o in others.values() for c in o})
    if method == "mean" and means is None:
        means = reference_means(pm, items, every, batch_size=batch_size)
    clean, corrupted = baseline_logit_diffs(pm, items, batch_size=batch_size)

    def run(components: Sequence[str]) -> Tensor:
        return ablated_logit_diffs(pm, items, components, method=method, means=means, batch_size=batch_size)

    opts = {"n_boot": n_boot, "level": level, "seed": seed}
    tgt_ld = run(target)
    target_res = summarise_ablation(f"{where} top-{k}", target, method, clean, tgt_ld, corrupted, **opts)
    draws = [run(d) for d in randoms]
    rand_ld = torch.stack(draws).mean(0)
    controls = {"random": summarise_ablation(
        "random", (), method, clean, rand_ld, corrupted,
        draws=[float((clean - d).mean()) for d in draws], draw_components=randoms, **opts)}
    lds = {"random": rand_ld}
    for r, comps in others.items():
        if comps:
            lds[r] = run(comps)
            controls[r] = summarise_ablation(r, comps, method, clean, lds[r], corrupted, **opts)
    # drop(target) - drop(control) = control LD - target LD, paired over examples
    versus = {name: bootstrap_ci(ld.double() - tgt_ld.double(), **opts) for name, ld in lds.items()}
    return TargetedAblation(task, k, where, method, target_res, controls, versus)
