"""What one pass is asked to do (`Request`) and what the engine knows about a model (`Core`).

A `Request` is in canonical names, already validated: names to record, node edits, edge patches,
gradient targets (node outputs, receiver inputs), and where recorded tensors are kept. `Core`
holds a model's `Layout`, its sizes (`Shape`) and its norms as `FrozenNorm`s (the maps the
engine evaluates on its own to give a head a private input or to read through a post-norm).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ar2mdm.common.errors import UserError
from ar2mdm.common.placement import offload_holder
from probe.interventions import EdgePatch, NodeEdit
from probe.layout import FrozenNorm, Layout
from probe.names import Shape

if TYPE_CHECKING:
    from probe.rules import BackwardRules


@dataclass
class Request:
    """What one pass must do. Names are canonical strings, already validated."""

    record: set[str] = field(default_factory=set)
    edits: list[NodeEdit] = field(default_factory=list)
    edges: list[EdgePatch] = field(default_factory=list)
    grad_outputs: set[str] = field(default_factory=set)
    grad_inputs: set[str] = field(default_factory=set)
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    rules: BackwardRules | None = None  # backward rules of a gradient pass (`probe.rules`)


class Core:
    """What the engine needs to know about one model: its layout, sizes and norms."""

    def __init__(self, layout: Layout, shape: Shape) -> None:
        self.layout = layout
        self.shape = shape

        # a norm in a block accelerate offloaded (device_map) is read in with its block to be frozen
        def frozen(norm: torch.nn.Module | None) -> FrozenNorm | None:
            return None if norm is None else FrozenNorm(norm, offload_holder(layout.model, norm))

        self.ln1 = [frozen(b.ln1) for b in layout.blocks]
        # the MLP norms of MoE layers (a router reading its own copy of the stream goes through it)
        self.ln2 = [frozen(b.ln2) if b.moe is not None else None for b in layout.blocks]
        self.attn_post = [frozen(b.attn_post_norm) for b in layout.blocks]
        self.mlp_post = [frozen(b.mlp_post_norm) for b in layout.blocks]
        self.final = frozen(layout.final_norm)
        self._o_heads: dict[int, tuple[int, list[torch.Tensor]]] = {}

    def o_heads(self, layer: int) -> list[torch.Tensor]:
        """W_O of `layer` split per head: n_heads views [d_model, d_head] (detached), remembered
        while the weight's storage stays the same (a model moved or cast gets new slices)."""
        w = self.layout.o_weight(layer).detach()
        key = w.data_ptr()
        held = self._o_heads.get(layer)
        if held is None or held[0] != key:
            dh = self.layout.d_head
            held = (key, [w[:, h * dh : (h + 1) * dh] for h in range(self.shape.n_heads)])
            self._o_heads[layer] = held
        return held[1]

    def require_exact_norms(self, norms: Iterable[FrozenNorm | None], why: str) -> None:
        for norm in norms:
            if norm is not None and not norm.exact:
                raise UserError(
                    f"{why} needs to evaluate the model's {type(norm.module).__name__} on its own, "
                    "and that norm is not an RMSNorm or LayerNorm the probe can reproduce."
                )
