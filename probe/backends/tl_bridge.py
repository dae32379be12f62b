"""TransformerLens 4 `TransformerBridge` hook points as sites.

The bridge wraps (and mutates) the HF model it boots on, so it gets its own deep copy; the core
keeps reading weights from the untouched original, which holds the same values.

Facts this adapter relies on (measured, see ../shared/BACKENDS.md, and re-checked by the tests):
- the bridge re-implements attention and ignores `config.is_causal = False`; setting the flag AND
  `object.__setattr__(block.attn, "is_causal", False)` on every block makes it bidirectional
  with padding and Gemma's sliding windows intact (a 4D mask would drop the windows); a
  block-diffusion MDM's 4D mask is passed as `attention_mask` and the bridge honours it
  (tests/test_probe_blocks.py checks logits, caches, gradients and patches against HF);
- component hook points wrap the HF submodules one to one (`attn.q.hook_out` is the q
  projection's output, reshaped per head; `ln2.hook_in` changes the MLP's input only).
"""

from __future__ import annotations

import copy

from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import device_of
from ar2mdm.common.placement import is_dispatched
from probe.backends.base import Backend, Logits, Mask, Mask4D, SiteFn, SiteFns, TokenIds
from probe.layout import Layout
from probe.moe import is_moe_block

HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{l}.hook_in",
    "q": "blocks.{l}.attn.q.hook_out",
    "k": "blocks.{l}.attn.k.hook_out",
    "v": "blocks.{l}.attn.v.hook_out",
    "z": "blocks.{l}.attn.o.hook_in",
    "attn_out": "blocks.{l}.attn.o.hook_out",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "mlp_in": "blocks.{l}.ln2.hook_in",
    "neurons": "blocks.{l}.mlp.out.hook_in",
    "mlp_out": "blocks.{l}.mlp.hook_out",
    "resid_post": "blocks.{l}.hook_out",
    "final": "ln_final.hook_in",
}
# Sites the bridge shows per head ([B, T, n, d_head]); the core sees them flat.
PER_HEAD = ("q", "k", "v", "z")

ALTERNATIVE = "use backend='torch' or backend='nnsight', which read any layout the probe knows"


def _has_experts(model) -> bool:
    """Whether any module of `model` is a mixture-of-experts block (`probe.moe.is_moe_block`)."""
    return any(is_moe_block(m) for m in model.modules())


def _wrap(fn: SiteFn, per_head: bool):
    def hook(tensor: Tensor, hook) -> Tensor | None:
        flat = tensor.flatten(-2) if per_head else tensor
        new = fn(flat)
        if new is None:
            return None
        return new.view_as(tensor) if per_head else new

    return hook


class TLBackend(Backend):
    name = "tl"
    auto_priority = 2  # preferred where TransformerLens has an adapter (and a tokenizer is at hand)

    @classmethod
    def supports(cls, model, tokenizer=None) -> bool:
        """TransformerLens 4 has a bridge adapter for this HF model's architecture."""
        try:
            from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
        except ImportError:  # pragma: no cover - a dependency of the package
            return False
        # not chosen by "auto" for a model spread over devices: the bridge works on a copy of the model, which
        # would double the memory the map was made to fit (backend="tl" still takes one)
        return (
            tokenizer is not None
            and type(model).__name__ in SUPPORTED_ARCHITECTURES
            and not is_dispatched(model)
            and not _has_experts(model)
        )

    def __init__(self, model, layout: Layout, *, causal: bool, tokenizer=None, source: str = "") -> None:
        try:
            from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise UserError(f"backend 'tl' needs transformer-lens 4 ({err}); {ALTERNATIVE}.") from None
        arch = type(model).__name__
        if layout.moe_layers:
            raise UserError(
                f"{arch} is a mixture of experts, and TransformerLens's bridge has no hook points for its "
                f"router and experts (or no adapter for it); {ALTERNATIVE}."
            )
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UserError(f"TransformerLens has no bridge adapter for {arch}; {ALTERNATIVE}.")
        if tokenizer is None:
            raise UserError(
                f"backend 'tl' needs the model's tokenizer to boot the bridge; pass tokenizer=, or {ALTERNATIVE}."
            )
        self.layout = layout
        self.causal = causal
        own = copy.deepcopy(model)
        try:
            # a model accelerate spread over devices keeps its map: TransformerLens 4 reads hf_device_map
            # from a pre-loaded model (CPU and disk targets, or GPUs only; it refuses GPUs mixed with offload)
            where = {} if is_dispatched(model) else {"device": str(device_of(model))}
            self.bridge = TransformerBridge.boot_transformers(
                source or getattr(model.config, "_name_or_path", "") or arch,
                hf_model=own,
                tokenizer=tokenizer,
                dtype=next(p.dtype for p in model.parameters()),
                **where,
            )
        except Exception as err:  # the bridge raises many kinds; report them as one
            raise UserError(
                f"TransformerLens could not boot a bridge for {arch} ({type(err).__name__}: {err}); {ALTERNATIVE}."
            ) from err
        missing = [h.format(l=0) for h in HOOKS.values() if h.format(l=0) not in self.bridge.hook_dict]
        if missing:
            raise UserError(f"the TransformerLens bridge for {arch} lacks hook points {missing}; {ALTERNATIVE}.")
        if not causal:
            own.config.is_causal = False
            for block in self.bridge.blocks:
                # plain setattr is swallowed by the bridge's attribute forwarding
                object.__setattr__(block.attn, "is_causal", False)

    def forward(
        self, input_ids: TokenIds, attention_mask: Mask | Mask4D, position_ids: TokenIds, fns: SiteFns
    ) -> Logits:
        hooks = [(HOOKS[kind].format(l=layer), _wrap(fn, kind in PER_HEAD)) for (kind, layer), fn in fns.items()]
        with self.bridge.hooks(fwd_hooks=hooks):
            return self.bridge(input_ids, attention_mask=attention_mask, position_ids=position_ids)
