"""Statistics the analyses share: percentile bootstrap intervals over examples, paired and pooled.

Every interval in ar2mdm's reports is a percentile bootstrap: examples are resampled with
replacement from a seeded generator (`bootstrap_indices`), the statistic is recomputed on each
resample, and the `level` interval is read off the replicates' quantiles. Comparisons of two
models on the same examples resample both with the same indices (paired); claims pooled over
tasks add each task's independent replicates (`pooled`). `verdict` turns an interval into
"holds" / "reversed" / "inconclusive" for a claimed direction (the words: `analyses.verdicts`).

    >>> ci = bootstrap_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]), n_boot=200, seed=0)
    >>> ci.estimate, ci.low <= 2.5 <= ci.high
    (2.5, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analyses.verdicts import HOLDS, INCONCLUSIVE, NO_DIFFERENCE, REVERSED, UNTESTED, WITHIN_FLOOR
from ar2mdm.common.errors import UserError


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval at `level` (NaN bounds: none)."""

    estimate: float | int
    low: float | int
    high: float | int
    level: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def format_interval(d: Interval | Mapping[str, Any] | None, digits: int = 2) -> str:
    """An interval for a report table, "estimate [low, high]" (an `Interval` or its `to_dict`);
    "-" where there is none, the estimate alone where it has no bounds."""
    if isinstance(d, Interval):
        d = d.to_dict()
    if not d or d.get("estimate") is None:
        return "-"
    if d.get("low") is None:
        return f"{d['estimate']:.{digits}f}"
    return f"{d['estimate']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Int[Tensor, "boot examples"]:
    """[n_boot, n] resampling indices drawn with replacement from a seeded generator."""
    if n < 1:
        raise UserError("a bootstrap needs at least one example.")
    if n_boot < 1:
        raise UserError(f"n_boot must be >= 1, got {n_boot}.")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_boot, n), generator=gen)


def percentile_interval(values: Float[Tensor, " boot"], estimate: float, level: float) -> Interval:
    """The `level` percentile interval of bootstrap `values` around `estimate`."""
    if not 0 < level < 1:
        raise UserError(f"level must be in (0, 1), got {level}.")
    alpha = (1 - level) / 2
    q = torch.quantile(values.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return Interval(float(estimate), float(q[0]), float(q[1]), level)


def bootstrap_ci(
    data: Float[Tensor, " examples *_rest"] | Sequence[float],
    statistic: Callable[[Float[Tensor, "boot examples *_rest"]], Float[Tensor, " boot"]] | None = None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over the rows (examples) of `data`.

    data: [N] or [N, ...]; rows are resampled with replacement. statistic: maps a batch of
    resamples [n_boot, N, ...] to [n_boot] values (default: the mean over examples); the
    estimate is the statistic of the data itself. Seeded: same inputs, same interval.
    """
    x = torch.as_tensor(data, dtype=torch.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UserError("bootstrap_ci needs a non-empty [N] or [N, ...] tensor of per-example values.")
    stat = statistic if statistic is not None else (lambda s: s.mean(1))
    idx = bootstrap_indices(x.shape[0], n_boot, seed)
    values = torch.cat([stat(x[chunk]) for chunk in idx.split(256)])
    return percentile_interval(values, float(stat(x[None])[0]), level)


def ratio_of_means(
    num: Float[Tensor, " examples"],
    den: Float[Tensor, " examples"],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """mean(num) / mean(den) with a paired bootstrap interval (rows of num and den resampled together)."""
    both = torch.stack([torch.as_tensor(num, dtype=torch.float64), torch.as_tensor(den, dtype=torch.float64)], 1)
    return bootstrap_ci(both, lambda s: s[..., 0].mean(-1) / s[..., 1].mean(-1), n_boot=n_boot, level=level, seed=seed)


def bootstrap_weights(n: int, n_boot: int, seed: int) -> Float[Tensor, "boot examples"]:
    """[n_boot, n] resampling weights (how often each example is drawn, / n)."""
    idx = bootstrap_indices(n, n_boot, seed)
    counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64)
    )
    return counts / n


def top_mask(scores: Float[Tensor, "batch edges"], k: int) -> Bool[Tensor, "batch edges"]:
    """[b, E] boolean: the k entries of largest |score| in each row."""
    top = scores.abs().topk(k, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


def jaccard_rows(a: Float[Tensor, "batch edges"], b: Float[Tensor, "batch edges"], k: int) -> Float[Tensor, " batch"]:
    """Jaccard overlap of the top-k (by |score|) of each row of a and b ([b, E] each)."""
    ma, mb = top_mask(a, k), top_mask(b, k)
    inter = (ma & mb).sum(1).double()
    return inter / (2 * k - inter)


def jaccard_bootstrap(
    a: Float[Tensor, "examples edges"],
    b: Float[Tensor, "_examples _edges"],
    k: int,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[Interval, Float[Tensor, " boot"]]:
    """Jaccard of the top-k edges of the mean scores of per-example a and b ([N, E], the same N
    examples), with a paired percentile interval; also returns the [n_boot] replicates.
    Raises UserError for scores of different shapes and for k outside 1..edges."""
    from analyses.graph import check_top_k  # the graph module imports the probe: not at import time

    if a.shape != b.shape:
        raise UserError(
            f"per-example scores must cover the same examples and edges, got {list(a.shape)} and {list(b.shape)}."
        )
    check_top_k(k, a.shape[-1])
    estimate = float(jaccard_rows(a.double().mean(0)[None], b.double().mean(0)[None], k)[0])
    idx = bootstrap_indices(a.shape[0], n_boot, seed)
    reps = torch.cat([jaccard_rows(a[c].double().mean(1), b[c].double().mean(1), k) for c in idx.split(64)])
    return percentile_interval(reps, estimate, level), reps


def pooled(
    estimates: Sequence[float],
    replicates: Sequence[Float[Tensor, " boot"]],
    weights: Sequence[float],
    level: float = 0.95,
) -> Interval:
    """sum_i w_i x_i with its interval from combining each term's bootstrap replicates (the terms
    are independent: replicate j of the sum adds replicate j of each term)."""
    est = sum(w * e for w, e in zip(weights, estimates, strict=True))
    reps = sum(w * r.double() for w, r in zip(weights, replicates, strict=True))
    return percentile_interval(reps, est, level)


def verdict(
    interval: Interval | None, direction: Literal[1, -1], *, floor: float | None = None, margin: float = 0.0
) -> str:
    """A claimed direction read off an interval.

    "holds" if the interval excludes 0 on the claimed side, "reversed" on the other, else
    "inconclusive"; "untested" without an interval. margin: an equivalence margin (two one-sided
    tests read off the interval): an interval inside [-margin, margin] is "no difference"
    (with margin 0 only the interval [0, 0] is). floor: the effect two models trained alike with
    different seeds already show (>= 0, see `floor_bound`): an interval that excludes 0 but whose
    near end does not pass the floor is "within the seed floor", not "holds"/"reversed". A claim
    read with no floor at all says so in its verdict (`analyses.verdicts.unfloored`).
    """
    if interval is None or math.isnan(interval.low):
        return UNTESTED
    if -margin <= interval.low and interval.high <= margin:
        return NO_DIFFERENCE
    lo, hi = sorted((direction * interval.low, direction * interval.high))
    bound = 0.0 if floor is None else max(0.0, floor)
    if lo > 0:
        return HOLDS if lo > bound else WITHIN_FLOOR
    if hi < 0:
        return REVERSED if -hi > bound else WITHIN_FLOOR
    return INCONCLUSIVE


def floor_bound(floor: Interval | None, direction: Literal[1, -1], *, signed: bool) -> float | None:
    """How far an effect must reach to clear a seed floor's interval (None: no floor).

    signed: the floor's statistic has a meaningful sign (Jaccard(local) - Jaccard(global) of two
    seeds), so the effect must pass its far end on the claimed side; unsigned: the floor is a
    difference between two seeds whose order is arbitrary (early mass of ARM' - ARM), so the
    effect must pass its largest magnitude either way.
    """
    if floor is None or math.isnan(floor.low):
        return None
    if signed:
        return max(0.0, direction * floor.low, direction * floor.high)
    return max(abs(floor.low), abs(floor.high))


def detectable_effect(interval: Interval | None, power: float = 0.8) -> float | None:
    """The smallest effect the data resolve: (z_(1-a/2) + z_power) x the bootstrap standard error,
    the standard error read off the interval's width (width / (2 z_(1-a/2)), exact for a normal
    bootstrap distribution). With level 0.95 and power 0.8: 0.715 x the width. None without an
    interval."""
    if interval is None or math.isnan(interval.low):
        return None
    normal = torch.distributions.Normal(0.0, 1.0)
    z = float(normal.icdf(torch.tensor(1 - (1 - interval.level) / 2)))
    zp = float(normal.icdf(torch.tensor(power)))
    return (z + zp) * (interval.high - interval.low) / (2 * z)


def pool_for_width(n: int, interval: Interval, half_width: float) -> int | None:
    """Examples needed for the interval's half width to shrink to `half_width` (1 / sqrt(n)
    scaling of a bootstrap interval); None when the interval is missing or already a point."""
    width = (interval.high - interval.low) / 2
    if math.isnan(width) or width <= 0:
        return None
    return max(1, math.ceil(n * (width / half_width) ** 2))
