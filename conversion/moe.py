"""Converting a mixture-of-experts ARM: its routers trained or frozen, and the auxiliary
load-balancing loss its pretraining used.

A Qwen3-MoE ARM (Qwen3-30B-A3B, the source of RND1 and SDAR-30B-A3B) was pretrained with the
Switch Transformer load-balancing loss (Fedus et al. 2021, eqs. 4-6) at `router_aux_loss_coef`
(0.001); GLM-4-MoE-style ARMs (Ling 2.0, the source of LLaDA2) balance with an expert bias
instead and state no coefficient. `TrainConfig.aux_loss = "source"` keeps what the source used;
a number sets the coefficient, "off" drops the loss. The loss itself is transformers'
`load_balancing_loss_func`, on the router logits collected from every MoE layer of one forward
pass (`RouterLogits`), padding excluded. `TrainConfig.router = "freeze"` keeps every router's
weights (and expert bias) as the source had them, so the conversion changes which experts a
token takes only through the experts' inputs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import is_moe_block


def routers(model: nn.Module) -> list[nn.Module]:
    """The router (`mlp.gate`) of every MoE layer of `model`, in order ([] for a dense model)."""
    return [m.gate for m in model.modules() if is_moe_block(m)]


def moe_settings(model: nn.Module, router: str, aux_loss: str) -> tuple[bool, float]:
    """(freeze the routers, the load-balancing coefficient) for `model`. UserError when a dense
    model is asked to freeze routers or to balance experts it does not have."""
    gates = routers(model)
    coef = source_aux_coefficient(model) if aux_loss == "source" else 0.0 if aux_loss == "off" else float(aux_loss)
    if not gates and (router == "freeze" or (aux_loss not in ("source", "off") and coef > 0)):
        raise UserError(
            f"--router {router} / --aux-loss {aux_loss}: the source model has no mixture-of-experts layers; "
            "drop these options (they apply to MoE models such as Qwen3-MoE)."
        )
    return router == "freeze" and bool(gates), coef if gates else 0.0


def source_aux_coefficient(model: nn.Module) -> float:
    """The load-balancing coefficient the source's config states (0 where it states none)."""
    config = getattr(model, "config", None)
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


def freeze_routers(model: nn.Module) -> int:
    """Stop every router's parameters from training; returns how many tensors were frozen."""
    count = 0
    for gate in routers(model):
        for p in gate.parameters():
            p.requires_grad_(False)
            count += 1
    return count


class RouterLogits(AbstractContextManager):
    """Collects the router logits [N, E] of every MoE layer during the forward passes run inside
    it (forward hooks on the routers); `loss(attention_mask)` is the load-balancing loss of what
    one pass collected, and clears it."""

    def __init__(self, model: nn.Module) -> None:
        self.gates = routers(model)
        self.top_k = int(getattr(self.gates[0], "top_k", 0)) if self.gates else 0
        self.logits: list[Tensor] = []
        self.handles: list[Any] = []

    def __enter__(self) -> RouterLogits:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.logits.append(output[0] if isinstance(output, tuple) else output)

        self.handles = [g.register_forward_hook(keep) for g in self.gates]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def loss(self, attention_mask: Tensor | None) -> Tensor:
        """The Switch load-balancing loss over the collected layers (mask [B, T]: 1 = token)."""
        if not self.logits:
            raise UserError("no router ran in the forward pass: the model has no MoE layers to balance.")
        n_experts = int(self.logits[0].shape[-1])
        mask = None if attention_mask is None or attention_mask.dim() != 2 else attention_mask
        loss = load_balancing_loss_func(tuple(self.logits), n_experts, self.top_k, mask)
        self.logits = []
        return loss if isinstance(loss, Tensor) else torch.tensor(float(loss))
