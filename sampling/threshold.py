"""Threshold parallel decoding (Fast-dLLM), with a prefix KV cache.

Each step predicts every masked position of each row's current block and commits the most
confident one (the top-1, so every step makes progress) plus every other masked position of the
block whose confidence p(token) is >= tau. The number of model calls adapts to how sure the model
is: an easy block takes one call, a hard one up to one per token.

Cache. Everything left of the current block is final, so its keys and values can be computed once
per block and reused: at the first step of a block the whole canvas is run with `use_cache=True`,
the cache is cut back to the prefix, and later steps of the block run only the positions from the
block on. For a block-diffusion checkpoint this is exact (a finished block never attends to a
later one, so its keys and values cannot change). For a bidirectional checkpoint it is Fast-dLLM's
approximate prefix cache: the prefix's keys and values are the ones computed when the block was
still masked, and are not refreshed while the block fills in. `cache="none"` runs the whole
canvas at every step. A model with sliding-window layers (Gemma-2/3) cannot crop its cache; it
runs without one.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from common.errors import UserError
from common.modeling import param_dtype, position_ids
from diffusion.attention import block_inference_mask
from sampling.base import Sampler, State, align, aligned_logits, check_options, mdm_forward_kwargs, propose, provisional
from sampling.confidence import top_k_per_row

CACHES = ("prefix", "none")


def threshold_commit(
    conf: Float[Tensor, "batch pos"], active: Bool[Tensor, "batch pos"], tau: float
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: per row, the most confident active position plus every active one with
    confidence >= tau (the Fast-dLLM rule)."""
    top1 = top_k_per_row(conf, active, torch.ones(conf.shape[0], dtype=torch.long))
    return top1 | (active & (conf >= tau))


class ThresholdSampler(Sampler):
    name = "threshold"
    needs = "absorbing"

    def __init__(
        self, *, tau: float = 0.9, block_length: int | None = None, temperature: float = 0.0, cache: str = "prefix"
    ):
        if not 0.0 < tau <= 1.0:
            raise UserError(f"tau must be in (0, 1], got {tau}; Fast-dLLM uses 0.9.")
        if cache not in CACHES:
            raise UserError(f"unknown cache {cache!r}; use one of {', '.join(CACHES)}.")
        check_options(None, block_length, temperature)
        self.tau, self.block_length, self.temperature, self.cache = tau, block_length, temperature, cache

    def _init(self, model: torch.nn.Module, state: State) -> None:
        state.scratch["kv"] = None  # (prefix length, cache)

    def step(self, model: torch.nn.Module, state: State) -> State:
        logits = self._logits(model, state)
        active = state.active()
        tokens, conf = propose(logits, active, self.temperature, state)
        commit = threshold_commit(conf, active, self.tau)
        state.record(commit, conf, provisional(logits, state))
        state.ids = torch.where(commit, tokens, state.ids)
        state.masked = state.masked & ~commit
        return state

    # -- the cached forward ----------------------------------------------------------------------

    def _prefix_length(self, state: State) -> int:
        """Positions every row has finished: left of the earliest current block (minus one under
        shift, whose first block token is read from the position before it)."""
        cur = state.current_block()
        in_block = (state.blocks == cur[:, None]) & (cur[:, None] >= 0)
        starts = torch.where(in_block, torch.arange(in_block.shape[1], device=in_block.device), in_block.shape[1])
        first = int(starts.min(1).values.min())
        return max(0, first - (1 if state.ctx.shift else 0))

    def _logits(self, model: torch.nn.Module, state: State) -> Tensor:
        if self.cache == "none" or not _croppable(model):
            return aligned_logits(model, state)
        prefix = self._prefix_length(state)
        kv = state.scratch["kv"]
        if prefix == 0:
            return aligned_logits(model, state)
        if kv is None or kv[0] != prefix:
            # First step of a block: the whole canvas, keeping its cache cut to the prefix.
            kwargs = _full_kwargs(state, model)
            out = state.forward(model, "mdm", use_cache=True, **kwargs)
            cache = out.past_key_values
            cache.crop(-(state.ids.shape[1] - prefix))
            state.scratch["kv"] = (prefix, cache)
            return align(out.logits, state.ctx)
        cache = kv[1]
        kwargs = _suffix_kwargs(state, model, prefix)
        out = state.forward(model, "mdm", past_key_values=cache, use_cache=True, **kwargs)
        cache.crop(-(state.ids.shape[1] - prefix))  # drop what this call appended
        raw = torch.zeros(
            (state.ids.shape[0], state.ids.shape[1], out.logits.shape[-1]),
            dtype=out.logits.dtype,
            device=out.logits.device,
        )
        raw[:, prefix:] = out.logits
        return align(raw, state.ctx)


def _croppable(model: torch.nn.Module) -> bool:
    """True if the model's KV cache can be cut back to a prefix (no sliding-window layers)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def _full_kwargs(state: State, model: torch.nn.Module) -> dict[str, Any]:
    return mdm_forward_kwargs(state.ctx, state.ids, state.attention_mask, param_dtype(model))


def _suffix_kwargs(state: State, model: torch.nn.Module, prefix: int) -> dict[str, Any]:
    am = state.attention_mask
    pos = position_ids(am)[:, prefix:]
    ids = state.ids[:, prefix:]
    if state.ctx.block_size is not None:
        mask = block_inference_mask(am, state.ctx.block_size, q_start=prefix, dtype=param_dtype(model))
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    return {"input_ids": ids, "attention_mask": am, "position_ids": pos, "is_causal": False}
