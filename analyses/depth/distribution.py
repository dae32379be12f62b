"""Layer distribution of important components, and two models compared on it.

Given an importance score per component (from `analyses.circuits` node importance, from
`node_patching_scores` or `dla_scores`, or any `Mapping[str, float]` in canonical names), keep
the top-K by |score| and ask where they sit:

    mass[l]     = sum of |score| of top-K components in layer l / sum over the whole top-K
                  (weight="count": each top-K component counts 1 instead)
    early_mass  = sum of mass[l] over the first third of layers
    centre      = sum_l mass[l] * (l + 0.5) / n_layers        (normalised depth, in (0, 1))

A layer is a bin [l, l + 1) of depth; its centre is (l + 0.5) / n_layers, so a uniform mass has
centre 0.5 and early mass ~1/3. The thirds (`region`) are decided by the bin centre: early if
(l + 0.5) / n_layers < 1/3, late if > 2/3, middle otherwise (3 layers: L0 | L1 | L2; 30 layers:
L0-L9 | L10-L19 | L20-L29). `embed` and `logits` carry no layer and are left out.
`compare_depth` puts an ARM and its MDM side by side with paired bootstrap intervals (seeded)
when the scores are given per example.

    >>> scores = {"L0.H1": 3.0, "L1.mlp": -1.0, "L2.H0": 2.0}
    >>> d = layer_distribution(scores, n_layers=3, k=2)
    >>> d.top, [round(m, 2) for m in d.mass], round(d.early_mass, 2)
    (('L0.H1', 'L2.H0'), [0.6, 0.0, 0.4], 0.6)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.statistics import Interval, bootstrap_indices, percentile_interval
from ar2mdm.common.errors import UserError
from probe.names import parse

Region = Literal["early", "middle", "late"]
REGIONS: tuple[Region, ...] = ("early", "middle", "late")
Weight = Literal["score", "count"]

# --- layers -----------------------------------------------------------------------------------------

_LAYERED = ("head", "mlp", "neuron", "receiver", "expert", "shared_expert", "router")


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
            "MLPs (L{l}.mlp), experts (L{l}.expert{e}) or neurons (L{l}.mlp.neuron{i})."
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
            "n_layers": self.n_layers,
            "k": self.k,
            "weight": self.weight,
            "top": list(self.top),
            "scores": list(self.scores),
            "mass": list(self.mass),
            "early_mass": self.early_mass,
            "centre": self.centre,
            "mean_layer": self.mean_layer,
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
            raise UserError(
                f"{name}: layer {layer} does not exist in a {n_layers}-layer model; pass the model's n_layers."
            )
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
    return LayerDistribution(
        n_layers, k, weight, tuple(n for n, _, _ in chosen), tuple(v for _, _, v in chosen), tuple(mass)
    )


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
    samples: dict[str, Float[Tensor, " boot"]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "early_mass_diff": self.early_mass_diff.to_dict(),
            "centre_diff": self.centre_diff.to_dict(),
            "early_mass": {k: v.to_dict() for k, v in self.early_mass.items()},
            "centre": {k: v.to_dict() for k, v in self.centre.items()},
        }


def mean_scores(per_example: Mapping[str, Float[Tensor, " examples"] | float]) -> dict[str, float]:
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


def _boot_depth(
    matrix: Tensor, layers: Tensor, n_layers: int, k: int, weight: Weight, idx: Tensor
) -> tuple[Tensor, Tensor]:
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
    a: Mapping[str, Float[Tensor, " examples"] | float],
    b: Mapping[str, Float[Tensor, " _examples"] | float],
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
    out.early_mass = {
        labels[0]: percentile_interval(ea, da.early_mass, level),
        labels[1]: percentile_interval(eb, db.early_mass, level),
    }
    out.centre = {
        labels[0]: percentile_interval(ca, da.centre, level),
        labels[1]: percentile_interval(cb, db.centre, level),
    }
    return out


# --- batches ----------------------------------------------------------------------------------------


# --- logit lens -------------------------------------------------------------------------------------


# --- ablations --------------------------------------------------------------------------------------


# --- node scores ------------------------------------------------------------------------------------


# --- targeted ablation ------------------------------------------------------------------------------
