"""Where one forward pass keeps gradients, and the gradients the caller asked for.

`GradientPoints.track` keeps a tensor's gradient (making it a leaf when nothing upstream needs
one, so the backward pass stops there); after the backward pass `results` maps the requested
node outputs and receiver inputs to their gradients. A receiver that is only differentiated has
no private copy of its input: its gradient is J_norm(x)^T W_h^T g_h, g_h being the gradient at
head h's slice of the q/k/v projection output (`tap_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from probe.backends.base import Site
from probe.cache import Cache
from probe.core import Core, Request
from probe.names import parse
from probe.rules import BackwardRules


class GradientPoints:
    """The gradient-keeping points of one pass (by site) and how to read them back."""

    def __init__(self, core: Core, rules: BackwardRules | None = None) -> None:
        self.core = core
        self.rules = rules
        self.points: dict[Site, Tensor] = {}

    def track(self, site: Site, x: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "batch pos *rest"]:
        """Keep x's gradient (making it a leaf if nothing upstream needs one); return x to use."""
        if not torch.is_grad_enabled():
            return x
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        self.points[site] = x
        return x

    def grad_of(self, site: Site) -> Float[Tensor, "batch pos *rest"]:
        t = self.points[site]
        return torch.zeros_like(t) if t.grad is None else t.grad

    def tap_gradient(
        self, port: str, layer: int, resid_pre: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos _heads d_model"]:
        """[B, T, n, d_model] gradient w.r.t. each head's own copy of its input: J^T W_h^T g_h."""
        core = self.core
        n = core.shape.n_heads if port == "q" else core.shape.n_kv_heads
        d_head = core.layout.d_head
        weight, _ = core.layout.qkv_weight(layer, port)
        t = self.points[(port, layer)]
        g = torch.zeros_like(t) if t.grad is None else t.grad
        dtype = torch.promote_types(g.dtype, torch.float32)
        w = weight.reshape(n, d_head, -1).to(dtype)
        u = torch.einsum("btne,ned->btnd", g.reshape(*g.shape[:2], n, d_head).to(dtype), w)
        x = resid_pre.detach()
        frozen = self.rules is not None and self.rules.freeze_norms
        return core.ln1[layer].vjp(x[:, :, None], u, frozen=frozen).to(g.dtype)

    def results(
        self,
        request: Request,
        taps: set[tuple[str, int]],
        resid_pre: Mapping[int, Float[Tensor, "batch pos d_model"]],
        sink: Callable[[str, Tensor], None] | None = None,
    ) -> tuple[Cache, Cache]:
        """(gradients w.r.t. node outputs, gradients w.r.t. receiver inputs) after backward.

        sink: receive each receiver's gradient as `sink(name, grad)` instead of keeping it (the
        returned receiver cache is then empty); a tapped projection's gradients [B, T, n, D] are
        computed one (port, layer) at a time and dropped after use, so memory holds one of them.
        """
        outs: dict[str, Tensor] = {}
        for name in request.grad_outputs:
            n = parse(name)
            if n.kind == "embed":
                outs[name] = self.grad_of(("embed", 0))
            elif n.kind == "head":
                outs[name] = self.grad_of(("attn_out", n.layer))
            elif n.kind == "mlp":
                outs[name] = self.grad_of(("mlp_out", n.layer))
            elif n.kind == "neurons":
                outs[name] = self.grad_of(("neurons", n.layer))
            elif n.kind == "neuron":
                outs[name] = self.grad_of(("neurons", n.layer))[..., n.neuron]
            elif n.kind == "expert":
                outs[name] = self.grad_of((f"expert{n.expert}", n.layer))
            else:
                outs[name] = self.grad_of((n.kind, n.layer))
        ins: dict[str, Tensor] = {}
        give = sink if sink is not None else ins.__setitem__
        tapped: tuple[Site, Tensor] | None = None
        # receivers grouped by (port, layer), so one tap is alive at a time
        for name in sorted(request.grad_inputs, key=_receiver_order):
            n = parse(name)
            if n.kind == "receiver" and (n.port, n.layer) in taps:
                if tapped is None or tapped[0] != (n.port, n.layer):
                    tapped = None  # free the previous tap before computing the next
                    tapped = ((n.port, n.layer), self.tap_gradient(n.port, n.layer, resid_pre[n.layer]))
                give(name, tapped[1][:, :, n.head])
            elif n.kind == "receiver":
                give(name, self.grad_of((n.port, n.layer))[:, :, n.head])
            elif n.kind == "mlp":
                give(name, self.grad_of(("mlp_in", n.layer)))
            elif n.kind == "router":
                give(name, self.grad_of(("router_in", n.layer)))
            else:
                give(name, self.grad_of(("final", self.core.shape.n_layers)))
        return Cache(outs), Cache(ins)


def _receiver_order(name: str) -> tuple[int, str, int]:
    n = parse(name)
    if n.kind == "receiver":
        return (n.layer, n.port, n.head)
    return (n.layer if n.layer is not None else 1 << 30, n.kind, 0)
