"""nnsight 0.8 over the HF modules: the same taps as the torch backend, driven from a trace.

Inside `trace`, nnsight runs the body beside the real forward pass and hands it real tensors, so
the core's site functions run unchanged. nnsight requires modules to be touched in forward order;
`hf_taps` yields them in that order.
"""

from __future__ import annotations

from torch import nn

from ar2mdm.common.errors import UserError
from probe.backends.base import Backend, Logits, Mask, Mask4D, SiteFns, TokenIds
from probe.backends.hf_taps import Tap, hf_taps
from probe.layout import Layout


class NNsightBackend(Backend):
    name = "nnsight"
    auto_priority = 1  # any HF decoder the probe's layout reads

    def __init__(self, model, layout: Layout, *, causal: bool, tokenizer=None, source: str = "") -> None:
        try:
            from nnsight import NNsight
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise UserError(f"backend 'nnsight' needs the nnsight package ({err}); use backend='torch'.") from None
        self.model = model
        self.layout = layout
        self.causal = causal
        self.wrapped = NNsight(model)
        self._paths = {module: path for path, module in model.named_modules()}
        self._envoys: dict[nn.Module, object] = {}

    def _envoy(self, module: nn.Module):
        envoy = self._envoys.get(module)
        if envoy is None:
            envoy = self.wrapped
            for part in self._paths[module].split("."):
                envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
            self._envoys[module] = envoy
        return envoy

    def _drive(self, taps: list[Tap]) -> None:
        for tap in taps:
            envoy = self._envoy(tap.module)
            if tap.port == "in":
                new = tap.fn(envoy.input)
                if new is not None:
                    envoy.input = new
            elif tap.index is not None:
                tap.fn(envoy.output[tap.index])
            else:
                new = tap.fn(envoy.output)
                if new is not None:
                    envoy.output = new

    def forward(
        self, input_ids: TokenIds, attention_mask: Mask | Mask4D, position_ids: TokenIds, fns: SiteFns
    ) -> Logits:
        taps = hf_taps(self.layout, fns)
        with self.wrapped.trace(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, is_causal=self.causal, use_cache=False
        ):
            self._drive(taps)
            logits = self.wrapped.output.logits.save()
        return logits
