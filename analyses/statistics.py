"""Statistics the analyses share: percentile bootstrap intervals over examples, paired and pooled.

Every interval in ar2mdm's reports is a percentile bootstrap: examples are resampled with
replacement from a seeded generator (`bootstrap_indices`), the statistic is recomputed on each
resample, and the `level` interval is read off the replicates' quantiles. Comparisons of two
models on the same examples resample both with the same indices (paired); claims pooled over
tasks add each task's independent replicates (`pooled`). `verdict` turns an interval into
"holds" / "reversed" / "inconclusive" for a claimed direction.

    >>> ci = bootstrap_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]), n_boot=200, seed=0)
    >>> ci.estimate, ci.low <= 2.5 <= ci.high
    (2.5, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from common.errors import UserError


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
    examples), with a paired percentile interval; also returns the [n_boot] replicates."""
    if a.shape != b.shape:
        raise UserError(
            f"per-example scores must cover the same examples and edges, got {list(a.shape)} and {list(b.shape)}."
        )
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


def verdict(interval: Interval | None, direction: Literal[1, -1]) -> str:
    """'holds' if the interval excludes 0 on the claimed side, 'reversed' on the other, else 'inconclusive'."""
    if interval is None or math.isnan(interval.low):
        return "untested"
    lo, hi = sorted((direction * interval.low, direction * interval.high))
    if lo > 0:
        return "holds"
    if hi < 0:
        return "reversed"
    return "inconclusive"
