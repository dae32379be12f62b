"""How concentrated a vector is: the specialisation metrics of units, as pure functions.

Descriptive metrics (pure functions on the last dimension; tested against hand computations).
Measures of concentration act on magnitudes |x|:

    selectivity[u, t]   = (m[u, t] - mean_{s != t} m[u, s]) / sqrt(mean_s var[u, s])
                          a standardised (Cohen's-d-like) contrast of task t against the other
                          tasks, each task weighted equally; m, var: the per-example mean and
                          population variance of the unit's value on each task (NaN if var = 0)
    selectivity_index   = (x_max - mean of the others) / (x_max + mean of the others), in [0, 1]
                          (Morcos et al. 2018 class selectivity, over tasks): 0 = the same on
                          every task, 1 = active on one task only
    normalised_entropy  = -sum p log p / log n with p = |x| / sum |x|: 0 = one task, 1 = uniform
                          (LAPE-style, over tasks)
    gini                = sum_i (2i - n - 1) x_(i) / (n sum x), x sorted ascending: 0 = equal,
                          (n - 1)/n = one non-zero entry
    hoyer               = (sqrt(n) - ||x||_1 / ||x||_2) / (sqrt(n) - 1): 0 = equal, 1 = one entry
    excess_kurtosis     = m4 / m2^2 - 3 with population central moments (Gurnee et al. 2024 use
                          kurtosis of a neuron's activation distribution: heavy tails = a unit
                          that fires rarely and strongly)
    units_for_share     = the fewest units whose |attribution| reaches 50 / 80 / 90 % of the total

All act on the last dimension and are tested against hand computations. `Moments` accumulates
streaming central moments (mean, variance, kurtosis) without keeping the values.

    >>> float(gini(torch.tensor([0.0, 0.0, 0.0, 1.0]))), float(hoyer(torch.tensor([0.0, 0.0, 1.0])))
    (0.75, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ar2mdm.common.errors import UserError

SHARES: tuple[float, ...] = (0.5, 0.8, 0.9)


def _nonempty(x: Tensor, what: str, minimum: int = 1) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim == 0 or x.shape[-1] < minimum:
        raise UserError(
            f"{what} needs a vector of at least {minimum} values (last dimension); got shape {list(x.shape)}."
        )
    return x


def gini(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """Gini coefficient of |x| over the last dimension (NaN where all are zero)."""
    v = _nonempty(x, "gini").abs().sort(-1).values
    n = v.shape[-1]
    i = torch.arange(1, n + 1, dtype=torch.float64)
    total = v.sum(-1)
    g = ((2 * i - n - 1) * v).sum(-1) / (n * total)
    return torch.where(total > 0, g, torch.nan)


def hoyer(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """Hoyer sparsity of |x| over the last dimension (n >= 2; NaN where all are zero)."""
    v = _nonempty(x, "hoyer", 2).abs()
    n = v.shape[-1]
    l2 = v.norm(dim=-1)
    h = (math.sqrt(n) - v.sum(-1) / l2) / (math.sqrt(n) - 1)
    return torch.where(l2 > 0, h, torch.nan)


def excess_kurtosis(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """m4 / m2^2 - 3 over the last dimension, population moments (NaN for constant vectors)."""
    v = _nonempty(x, "kurtosis", 2)
    d = v - v.mean(-1, keepdim=True)
    m2 = d.pow(2).mean(-1)
    m4 = d.pow(4).mean(-1)
    return torch.where(m2 > 0, m4 / m2.pow(2) - 3, torch.nan)


def normalised_entropy(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """Entropy of p = |x| / sum |x| over the last dimension, divided by log n (n >= 2)."""
    v = _nonempty(x, "normalised_entropy", 2).abs()
    total = v.sum(-1, keepdim=True)
    p = v / total
    h = -(p * torch.log(p)).nan_to_num(0.0).sum(-1) / math.log(v.shape[-1])
    return torch.where(total[..., 0] > 0, h, torch.nan)


def selectivity_index(x: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    """(max - mean of the others) / (max + mean of the others) of |x| over the last dimension."""
    v = _nonempty(x, "selectivity_index", 2).abs()
    top = v.max(-1).values
    rest = (v.sum(-1) - top) / (v.shape[-1] - 1)
    return torch.where(top + rest > 0, (top - rest) / (top + rest), torch.nan)


def selectivity(
    means: Float[Tensor, "*units tasks"], variances: Float[Tensor, "*_units _tasks"]
) -> Float[Tensor, "*units tasks"]:
    """Standardised contrast of each task against the others (module docstring); NaN where the
    pooled variance is zero."""
    m = _nonempty(means, "selectivity", 2)
    var = torch.as_tensor(variances, dtype=torch.float64)
    if var.shape != m.shape:
        raise UserError(f"selectivity: means {list(m.shape)} and variances {list(var.shape)} differ in shape.")
    n = m.shape[-1]
    others = (m.sum(-1, keepdim=True) - m) / (n - 1)
    sd = var.mean(-1, keepdim=True).sqrt()
    return torch.where(sd > 0, (m - others) / sd, torch.nan)


def units_for_share(x: Float[Tensor, " units"], shares: Sequence[float] = SHARES) -> dict[float, int]:
    """The fewest units (largest |x| first) whose |x| sums to at least each share of the total."""
    v = _nonempty(x, "units_for_share")
    if v.ndim != 1:
        raise UserError(f"units_for_share takes one vector of unit scores; got shape {list(v.shape)}.")
    cum = v.abs().sort(descending=True).values.cumsum(0)
    total = float(cum[-1])
    if total <= 0:
        raise UserError("every unit's attribution is zero; there is no total to reach a share of.")
    out = {}
    for s in shares:
        if not 0 < s <= 1:
            raise UserError(f"shares must lie in (0, 1]; got {s}.")
        out[float(s)] = int((cum < s * total * (1 - 1e-12)).sum()) + 1
    return out


class Moments:
    """Streaming count, mean, variance and excess kurtosis of each column of [n, U] batches.

    Power sums of (x - shift) in float64, shift = the first batch's mean (keeps the sums small).
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sums: Tensor | None = None

    def update(self, x: Float[Tensor, " n *units"]) -> None:
        x = torch.as_tensor(x, dtype=torch.float64).reshape(x.shape[0], -1)
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(0)
            self.sums = torch.zeros(4, x.shape[1], dtype=torch.float64)
        d = x - self.shift
        self.sums += torch.stack([d.sum(0), d.pow(2).sum(0), d.pow(3).sum(0), d.pow(4).sum(0)])
        self.n += x.shape[0]

    def _central(self) -> tuple[Tensor, Tensor, Tensor]:
        if self.sums is None or self.n == 0:
            raise UserError("no values were accumulated.")
        s1, s2, s3, s4 = self.sums / self.n
        m2 = s2 - s1**2
        m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
        return s1, m2.clamp(min=0), m4

    @property
    def mean(self) -> Float[Tensor, " units"]:
        s1, _, _ = self._central()
        return self.shift + s1

    @property
    def var(self) -> Float[Tensor, " units"]:
        """Population variance."""
        return self._central()[1]

    @property
    def kurtosis(self) -> Float[Tensor, " units"]:
        """Excess kurtosis (NaN for constant columns)."""
        _, m2, m4 = self._central()
        return torch.where(m2 > 1e-300, m4 / m2.pow(2) - 3, torch.nan)
