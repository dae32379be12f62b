"""Randomness of the samplers: per-row streams and exact Gumbel-max draws.

Every random number a sampler uses comes from a `RowRandom` stream keyed by (seed, row id, step,
purpose[, position]), so a row's output never depends on the batch it is in nor on the canvas
width, and a replay with the same seed is identical. Gumbel noise is drawn in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


class RowRandom:
    """Per-row random streams keyed by (seed, row id, step, purpose): a row's draws never depend
    on the batch it is in nor on the canvas width (right padding keeps positions), and every step
    draws afresh, so a replay with the same seed is identical."""

    def __init__(self, seed: int, row_ids: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seed = int(seed)
        self.rows = [int(r) for r in row_ids]

    def _gens(self, key: int, purpose: int) -> list[torch.Generator]:
        return [torch.Generator(device="cpu").manual_seed(_mix(self.seed, r, key, purpose)) for r in self.rows]

    def rand(self, length: int, key: int, purpose: int = 0) -> Float[Tensor, "batch pos"]:
        """Uniform(0, 1) float64 [B, length]."""
        return torch.stack([torch.rand(length, generator=g, dtype=torch.float64) for g in self._gens(key, purpose)]).to(
            self.device
        )

    def gumbel(self, shape_per_row: tuple[int, ...], key: int, purpose: int = 1) -> Float[Tensor, " batch *shape"]:
        """Standard Gumbel noise [B, *shape_per_row] in float64."""
        u = torch.stack([torch.rand(shape_per_row, generator=g, dtype=torch.float64) for g in self._gens(key, purpose)])
        u = u.clamp(min=1e-300, max=1.0 - 1e-16)
        return (-torch.log(-torch.log(u))).to(self.device)

    def gumbel_at(
        self, rows: Int[Tensor, " n"], cols: Int[Tensor, " n"], width: int, key: int, purpose: int = 4
    ) -> Float[Tensor, "n vocab"]:
        """Gumbel noise [N, width] in float64 for the positions (rows[i], cols[i]): one stream per
        (seed, row id, step, position), so a position's draw depends on nothing else."""
        out = torch.empty((rows.numel(), width), dtype=torch.float64)
        for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            g = torch.Generator(device="cpu").manual_seed(_mix(self.seed, self.rows[r], key, purpose, c))
            torch.rand(width, generator=g, dtype=torch.float64, out=out[i])
        out = out.clamp_(min=1e-300, max=1.0 - 1e-16)
        return (-torch.log(-torch.log(out))).to(self.device)

    def randint(self, high: int, length: int, key: int, purpose: int = 2) -> Int[Tensor, "batch pos"]:
        return torch.stack([torch.randint(0, high, (length,), generator=g) for g in self._gens(key, purpose)]).to(
            self.device
        )


def _mix(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (2**61 - 1)
    return h


def sample_tokens(
    logits: Float[Tensor, "batch pos vocab"], temperature: float, rng: RowRandom | None, key: int = 0
) -> Int[Tensor, "batch pos"]:
    """Token ids [B, T] from logits [B, T, V]: argmax at temperature 0, else Gumbel-max in float64
    (argmax(logits / T + g) is an exact draw from softmax(logits / T))."""
    if temperature <= 0 or rng is None:
        return logits.argmax(-1)
    noisy = logits.double() / temperature + rng.gumbel(tuple(logits.shape[1:]), key)
    return noisy.argmax(-1)
