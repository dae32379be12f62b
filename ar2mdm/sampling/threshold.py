"""Parallel decoding (Fast-dLLM): confidence-threshold and factor rules, with KV caches.

Each step predicts every masked position of each row's current block and commits

* ``threshold`` (Fast-dLLM's threshold rule): the most confident one (so every step makes
  progress) plus every other one whose confidence p(token) is >= tau;
* ``factor`` (Fast-dLLM's factor rule, `factor_commit`): the n most confident, n the largest
  count with (n + 1) * (1 - c_n) < f, c_n the n-th highest confidence (at least one).

The number of model calls adapts to how sure the model is: an easy block takes one call, a hard
one up to one per token. Rows decode independently (each its own block, own commits; a row's
result does not depend on the batch). `stop_at_eos` ends a row once it has decided an
end-of-sequence token with nothing undecided before it: the positions after it become EOS
without further calls.

Caches (`ar2mdm.sampling.cache`, which says how each is exact): ``prefix`` (default) reuses the keys and
values left of the block, ``dual`` (Fast-dLLM's DualCache) also those right of it, ``none``
recomputes the canvas every call; `refresh=k` recomputes everything every k calls. On a
block-diffusion checkpoint every cache is exact; on a bidirectional MDM prefix and dual are
approximate.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.sampling.base import Sampler, State, check_options, propose, provisional
from ar2mdm.sampling.cache import CACHES, WindowCache
from ar2mdm.sampling.confidence import top_k_per_row

__all__ = ["CACHES", "FactorSampler", "ThresholdSampler", "factor_commit", "threshold_commit"]


def threshold_commit(
    conf: Float[Tensor, "batch pos"], active: Bool[Tensor, "batch pos"], tau: float
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: per row, the most confident active position plus every active one with
    confidence >= tau (the Fast-dLLM threshold rule)."""
    top1 = top_k_per_row(conf, active, torch.ones(conf.shape[0], dtype=torch.long))
    return top1 | (active & (conf >= tau))


def factor_commit(
    conf: Float[Tensor, "batch pos"], active: Bool[Tensor, "batch pos"], factor: float
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: per row, the n most confident active positions, n the largest count with
    (n + 1) * (1 - c_n) < factor where c_1 >= c_2 >= ... are the row's confidences (the Fast-dLLM
    factor rule, Wu et al. 2025, sec. 3.3); at least one position per row that has any."""
    score = conf.double().masked_fill(~active, float("-inf"))
    ranked = score.sort(dim=1, descending=True).values  # [B, T]
    n = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=torch.float64)
    ok = ((n + 1) * (1 - ranked) < factor) & torch.isfinite(ranked)
    # (n + 1)(1 - c_n) grows with n (c_n falls), so the qualifying n form a prefix: count them
    k = ok.long().cumprod(1).sum(1).clamp(min=1)
    return top_k_per_row(conf, active, k)


class ThresholdSampler(Sampler):
    """Threshold parallel decoding (see the module). tau: commit confidence; block_length:
    semi-autoregressive blocks; cache / refresh: `ar2mdm.sampling.cache` (prefix | dual | none; exact on
    block-diffusion checkpoints, approximate prefix / dual on bidirectional ones); stop_at_eos:
    end a row at its first decided EOS."""

    name = "threshold"
    needs = "absorbing"

    def __init__(
        self,
        *,
        tau: float = 0.9,
        block_length: int | None = None,
        temperature: float = 0.0,
        cache: str = "prefix",
        refresh: int | None = None,
        stop_at_eos: bool = False,
    ):
        if not 0.0 < tau <= 1.0:
            raise UserError(f"tau must be in (0, 1], got {tau}; Fast-dLLM uses 0.9.")
        check_options(None, block_length, temperature)
        self.kv = WindowCache(cache, refresh)
        self.tau, self.block_length, self.temperature = tau, block_length, temperature
        self.cache, self.refresh, self.stop_at_eos = cache, refresh, stop_at_eos

    def commit(self, conf: Float[Tensor, "batch pos"], active: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        return threshold_commit(conf, active, self.tau)

    def _init(self, model: torch.nn.Module, state: State) -> None:
        self.kv.init(state)

    def step(self, model: torch.nn.Module, state: State) -> State:
        logits = self.kv.logits(model, state)
        active = state.active()
        tokens, conf = propose(logits, active, self.temperature, state)
        commit = self.commit(conf, active)
        state.record(commit, conf, provisional(logits, state))
        state.ids = torch.where(commit, tokens, state.ids)
        state.masked = state.masked & ~commit
        if self.stop_at_eos:
            state.finish_after_eos()
        return state


class FactorSampler(ThresholdSampler):
    """Factor-rule parallel decoding (`factor_commit`); the options of `ThresholdSampler`, with
    `factor` (Fast-dLLM's f; larger commits more per call) in place of tau."""

    name = "factor"

    def __init__(
        self,
        *,
        factor: float = 1.0,
        block_length: int | None = None,
        temperature: float = 0.0,
        cache: str = "prefix",
        refresh: int | None = None,
        stop_at_eos: bool = False,
    ):
        if not factor > 0:
            raise UserError(f"factor must be > 0, got {factor}; Fast-dLLM uses about 1.")
        super().__init__(
            block_length=block_length, temperature=temperature, cache=cache, refresh=refresh, stop_at_eos=stop_at_eos
        )
        self.factor = factor

    def commit(self, conf: Float[Tensor, "batch pos"], active: Bool[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
        return factor_commit(conf, active, self.factor)
