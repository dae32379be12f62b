"""Sites as taps on Hugging Face modules: shared by the torch-hook and nnsight backends.

A tap is (module, "in" or "out", function): the function gets the module's first input or its
output (element `index` of a tuple output) and may return a replacement. Taps come out in forward
order, which nnsight requires and which keeps the two backends' behaviour identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from probe.backends.base import Site, SiteFn
from probe.layout import Layout


@dataclass
class Tap:
    module: nn.Module
    port: Literal["in", "out"]
    fn: SiteFn
    index: int | None = None  # element of a tuple output (read only)


def _fused_qkv(layout: Layout, fns: Mapping[Site, SiteFn], layer: int) -> SiteFn:
    """One function for a fused q|k|v projection: split, apply the q, k, v site functions, join."""

    def fn(x: Tensor) -> Tensor | None:
        parts = list(x.split(layout.qkv_sizes, dim=-1))
        changed = False
        for i, port in enumerate("qkv"):
            f = fns.get((port, layer))
            if f is not None:
                new = f(parts[i])
                if new is not None:
                    parts[i] = new
                    changed = True
        return torch.cat(parts, dim=-1) if changed else None

    return fn


def hf_taps(layout: Layout, fns: Mapping[Site, SiteFn]) -> list[Tap]:
    """The taps realising `fns` on the model of `layout`, in forward order."""
    taps: list[Tap] = []
    for layer, blk in enumerate(layout.blocks):

        def at(kind: str) -> SiteFn | None:
            return fns.get((kind, layer))  # noqa: B023 (used immediately)

        if f := at("resid_pre"):
            taps.append(Tap(blk.module, "in", f))
        if blk.qkv is not None:
            if any(at(p) for p in "qkv"):
                taps.append(Tap(blk.qkv, "out", _fused_qkv(layout, fns, layer)))
        else:
            for port, module in (("q", blk.q), ("k", blk.k), ("v", blk.v)):
                if f := at(port):
                    assert module is not None
                    taps.append(Tap(module, "out", f))
        if f := at("z"):
            taps.append(Tap(blk.o, "in", f))
        if f := at("attn_out"):
            taps.append(Tap(blk.o, "out", f))
        if f := at("pattern"):
            taps.append(Tap(blk.attn, "out", f, index=1))
        if f := at("mlp_in"):
            taps.append(Tap(blk.ln2, "in", f))
        if f := at("moe_in"):
            taps.append(Tap(blk.mlp, "in", f))
        if (f := at("neurons")) and blk.down is not None:
            taps.append(Tap(blk.down, "in", f))
        if f := at("mlp_out"):
            taps.append(Tap(blk.mlp, "out", f))
        if f := at("resid_post"):
            taps.append(Tap(blk.module, "out", f))
    if f := fns.get(("final", layout.n_layers)):
        taps.append(Tap(layout.final_norm, "in", f))
    return taps
