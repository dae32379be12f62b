"""Plain PyTorch forward hooks on the HF modules: the reference backend.

Hooks are registered for one pass and removed in a `finally`, so an exception never leaves a
model with stray hooks. Attention direction is passed per call (`is_causal`), which transformers
>= 5.2 honours for every supported family without touching the saved config; a block-diffusion
MDM's 4D mask is passed as `attention_mask`, where HF uses it in place of its own masks.
"""

from __future__ import annotations

from probe.backends.base import Backend, Logits, Mask, Mask4D, SiteFns, TokenIds
from probe.backends.hf_taps import Tap, hf_taps
from probe.layout import Layout


def _register(tap: Tap):
    fn = tap.fn
    if tap.port == "in":

        def pre_hook(module, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            key = next(iter(kwargs))  # HF passes hidden states first when it passes keywords
            new = fn(kwargs[key])
            return None if new is None else (args, {**kwargs, key: new})

        return tap.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    index = tap.index

    def hook(module, args, output):
        if index is not None:
            fn(output[index])
            return None
        return fn(output)

    return tap.module.register_forward_hook(hook)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model, layout: Layout, *, causal: bool, tokenizer=None, source: str = "") -> None:
        self.model = model
        self.layout = layout
        self.causal = causal

    def forward(
        self, input_ids: TokenIds, attention_mask: Mask | Mask4D, position_ids: TokenIds, fns: SiteFns
    ) -> Logits:
        handles = [_register(tap) for tap in hf_taps(self.layout, fns)]
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                is_causal=self.causal,
                use_cache=False,
            )
        finally:
            for handle in handles:
                handle.remove()
        return out.logits
