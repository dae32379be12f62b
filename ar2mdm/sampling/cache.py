"""Key/value caches for MDM decoding: which calls can reuse which keys and values, and how exact.

An MDM sampler decodes a *window* at a time (each row's current block; under shift also the
position before it, whose logits predict the block's first token). Positions outside the window
do not change while it fills in, so their keys and values can be computed once, at the window's
first step, and reused; each later step then runs the model on the window alone, its queries
attending to the cached keys plus the window's own. Three caches (`CACHES`):

=======  ====================================================  ===============  ================
cache    reused keys / values (recomputed: the window)         block diffusion  bidirectional
=======  ====================================================  ===============  ================
none     nothing: the whole canvas every call                  exact            exact
prefix   everything left of the window (the window and the     exact            approximate
         suffix after it are recomputed every call)
dual     left and right of the window (Fast-dLLM's DualCache)  exact            approximate
=======  ====================================================  ===============  ================

Why exact or not. In a block-diffusion checkpoint a finished block never attends to a later one,
so the prefix's keys and values cannot change while a later block fills in; and the window's
queries may not see later blocks, so the suffix's cached keys are masked off (dual = prefix). In
a bidirectional MDM every position attends to every other, so cached keys and values are the
ones computed when the window was still masked (Fast-dLLM, Wu et al. 2025, sec. 3.1, reports them
nearly unchanged between adjacent steps; `drift` measures by how much). `refresh=k` recomputes
the whole canvas every k calls inside a window (k = 1 is exact for every checkpoint), and every
window starts with a full call.

Rows of a batch decode independently (each in its own current block); the window is the union
of the rows' windows. Models whose cache cannot be cut (sliding-window layers: Gemma-2/3) run
without one. Keys carry their rotary position (RoPE is applied before caching), so their order in
the cache does not matter: the window's keys are appended after the cached prefix and suffix, and
the 4D mask says who may see whom by true position.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import kv_cache_kwargs, param_dtype, position_ids, returned_kv_cache
from ar2mdm.diffusion.attention import block_causal, to_additive
from ar2mdm.sampling.base import State, align, aligned_logits, mdm_forward_kwargs

CACHES = ("none", "prefix", "dual")
CACHE_EXACTNESS = (
    "none: exact. prefix: exact for block-diffusion checkpoints, approximate for bidirectional ones "
    "(the prefix's keys are those computed while the block was masked). dual (Fast-dLLM DualCache: "
    "prefix and suffix reused, the block recomputed): exact for block diffusion, approximate for "
    "bidirectional. refresh=k recomputes everything every k calls (k=1: exact everywhere)."
)


def check_cache(cache: str, refresh: int | None) -> None:
    """Raise UserError for an unknown cache or a refresh period below 1."""
    if cache not in CACHES:
        raise UserError(f"unknown cache {cache!r}; use one of {', '.join(CACHES)} ({CACHE_EXACTNESS})")
    if refresh is not None and refresh < 1:
        raise UserError(f"refresh must be >= 1 model calls (1 = recompute every call), got {refresh}.")


def croppable(model: torch.nn.Module) -> bool:
    """True if the model's KV cache can be cut to a window (no sliding-window layers)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        return all(t == "full_attention" for t in layer_types)
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def window(state: State, cache: str) -> tuple[int, int]:
    """[start, stop) positions recomputed each call: the rows' current blocks (union), from one
    position earlier under shift; `prefix` recomputes everything to the end of the canvas."""
    cur = state.current_block()
    in_block = (state.blocks == cur[:, None]) & (cur[:, None] >= 0)
    T = in_block.shape[1]
    cols = torch.arange(T, device=in_block.device)
    if not bool(in_block.any()):
        return 0, T
    start = int(torch.where(in_block, cols, T).min())
    stop = int(torch.where(in_block, cols + 1, 0).max())
    start = max(0, start - (1 if state.ctx.shift else 0))
    return start, (T if cache == "prefix" else stop)


def _key_positions(T: int, start: int, stop: int, device: torch.device) -> Int[Tensor, " keys"]:
    """Canvas positions of the keys a window call sees, in cache order: kept, then the window."""
    cols = torch.arange(T, device=device)
    return torch.cat([cols[:start], cols[stop:], cols[start:stop]])


def window_mask(state: State, start: int, stop: int, dtype: torch.dtype) -> Float[Tensor, "batch 1 q keys"]:
    """Additive [B, 1, stop - start, T] mask of a window call (keys in cache order): padding
    blocked; block-diffusion checkpoints also block keys in later blocks than the query's."""
    am = state.attention_mask.bool()
    B, T = am.shape
    keys = _key_positions(T, start, stop, am.device)
    q = torch.arange(start, stop, device=am.device)
    if state.ctx.block_size is not None:
        allowed = block_causal(q, keys, state.ctx.block_size)
    else:
        allowed = torch.ones(q.numel(), keys.numel(), dtype=torch.bool, device=am.device)
    return to_additive(allowed.expand(B, -1, -1), am[:, keys], dtype)


def _cut(cache: Any, start: int, stop: int) -> None:
    """Remove positions [start, stop) from every layer of an HF DynamicCache, in place."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None:
            continue
        layer.keys = torch.cat([layer.keys[..., :start, :], layer.keys[..., stop:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., stop:, :]], dim=-2)


class WindowCache:
    """Logits of a canvas with keys and values outside the decoding window reused (see module).

    kind: one of CACHES; refresh: recompute the whole canvas every `refresh` calls inside a window
    (None: only at each window's first call). Keeps its state in `state.scratch["kv"]`.
    """

    def __init__(self, kind: str = "prefix", refresh: int | None = None):
        check_cache(kind, refresh)
        self.kind, self.refresh = kind, refresh

    def init(self, state: State) -> None:
        state.scratch["kv"] = None  # ((start, stop), cache, calls since the last full call)

    def logits(self, model: torch.nn.Module, state: State) -> Float[Tensor, "batch pos vocab"]:
        """Aligned float32 logits [B, T, V] (`ar2mdm.sampling.base.align`); outside the window they are
        the last full call's values for positions after it and zeros before it (not read)."""
        if self.kind == "none" or not croppable(model):
            return aligned_logits(model, state)
        start, stop = window(state, self.kind)
        kv = state.scratch["kv"]
        stale = kv is None or kv[0] != (start, stop) or (self.refresh is not None and kv[2] >= self.refresh)
        T = state.ids.shape[1]
        if (start, stop) == (0, T):
            return aligned_logits(model, state)
        if stale:
            kwargs = mdm_forward_kwargs(state.ctx, state.ids, state.attention_mask, param_dtype(model))
            out = state.forward(model, "mdm", use_cache=True, **kwargs)
            cache = returned_kv_cache(out)
            _cut(cache, start, stop)
            state.scratch["kv"] = ((start, stop), cache, 1)
            return align(out.logits, state.ctx)
        cache = kv[1]
        pos = position_ids(state.attention_mask)[:, start:stop]
        out = state.forward(
            model,
            "mdm",
            input_ids=state.ids[:, start:stop],
            attention_mask=window_mask(state, start, stop, param_dtype(model)),
            position_ids=pos,
            use_cache=True,
            **kv_cache_kwargs(model, cache),
        )
        cache.crop(-(stop - start))  # drop the window's keys this call appended
        state.scratch["kv"] = (kv[0], cache, kv[2] + 1)
        raw = torch.zeros(
            (state.ids.shape[0], T, out.logits.shape[-1]), dtype=out.logits.dtype, device=out.logits.device
        )
        raw[:, start:stop] = out.logits
        return align(raw, state.ctx)


def drift(
    sampler: Any,
    model: torch.nn.Module,
    ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    ctx: Any,
    **run_kwargs: Any,
) -> list[float]:
    """Per-step cache drift of `sampler` (one with a `WindowCache` as `.kv`): at every step, the
    largest |cached - recomputed| logit over the positions the step may commit (each row's
    current block), against a full uncached call on the same canvas. 0.0 where the cache is
    exact. Runs the sampler to the end (its own NFE is unchanged: the reference calls are not
    counted). Returns one float per step."""
    from ar2mdm.sampling.base import run

    out: list[float] = []
    original = sampler.kv.logits

    def checked(m: torch.nn.Module, state: State) -> Tensor:
        got = original(m, state)
        kwargs = mdm_forward_kwargs(state.ctx, state.ids, state.attention_mask, param_dtype(m))
        ref = align(m(**kwargs).logits, state.ctx)
        active = state.active()
        finite = torch.isfinite(ref) & active[..., None]
        diff = (got - ref).abs().masked_fill(~finite, 0.0)
        out.append(float(diff.max()))
        return got

    sampler.kv.logits = checked
    try:
        run(sampler, model, ids, attention_mask, ctx, **run_kwargs)
    finally:
        del sampler.kv.logits
    return out
