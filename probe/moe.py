"""Mixture-of-experts blocks as the probe reads them: a router, routed experts, a shared expert.

transformers 5.x writes every MoE block it ships the same way (Qwen3-MoE's
`Qwen3MoeSparseMoeBlock`, GLM-4-MoE's `Glm4MoeMoE`, OLMoE, Qwen2-MoE): on a token x (the output
of the MLP's norm), with E experts of which each token takes k,

    logits, weights, ids = mlp.gate(x)          logits [N, E]; weights, ids [N, k]
    out = sum_j weights_j * expert_{ids_j}(x)   mlp.experts: gate_up_proj [E, 2 I, D] (gate rows
                                                first, then up), down_proj [E, D, I]
        + shared(x)                             mlp.shared_experts (GLM-4-MoE, LLaDA2) or
                                                sigmoid(mlp.shared_expert_gate(x)) * mlp.shared_expert(x)
                                                (Qwen2-MoE); absent in Qwen3-MoE

where expert_e(x) = down_e(act(gate_e x) * up_e x). The routing algorithm is the router module's
own (softmax top-k with renormalisation in Qwen3-MoE; sigmoid scores, expert bias for the choice,
group-limited top-k and a routed scale in GLM-4-MoE): `MoeBlock.route` calls it and never
re-implements it. The experts' sum is re-computed here, per expert, so that one expert can be
recorded, zeroed or patched and the routing fixed; `MoeBlock.check` compares that re-computation
with the module's own forward on random input, so a block that computes something else is refused
with a UserError, never probed wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn import functional as F

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import is_moe_block

# (activation, gate, up) -> the expert's neurons act(gate) * up, under a pass's backward rules
Product = Callable[[Callable[[Tensor], Tensor], Tensor, Tensor], Tensor]

__all__ = ["MoeBlock", "Routing", "is_moe_block", "topk_of"]


@dataclass
class Routing:
    """One pass's routing of N tokens: router logits [N, E], chosen experts [N, k], weights [N, k]."""

    logits: Float[Tensor, "tokens experts"]
    ids: Int[Tensor, "tokens k"]
    weights: Float[Tensor, "tokens k"]

    def dense(self, n_experts: int) -> Float[Tensor, "tokens experts"]:
        """The gate weights as [N, E]: each token's weight for each expert, 0 outside its top-k."""
        out = torch.zeros(self.ids.shape[0], n_experts, dtype=self.weights.dtype, device=self.weights.device)
        return out.scatter_add(1, self.ids, self.weights)


def topk_of(
    routing: Float[Tensor, "*batch experts"], k: int
) -> tuple[Int[Tensor, "*batch k"], Float[Tensor, "*batch k"]]:
    """(expert ids, weights) of a dense routing tensor (`L{l}.routing`), the k largest weights per
    token, ids ascending within equal weights; experts of weight 0 are read as unchosen only when
    a token has fewer than k positive weights (they add nothing)."""
    weights, ids = torch.topk(routing, k, dim=-1)
    return ids, weights


class MoeBlock:
    """The router, experts and shared expert of one MoE layer (see the module docstring).

    block: the MoE module (`layer.mlp`). Raises UserError when its parts are not laid out as
    transformers' fused experts (gate_up_proj / down_proj 3D parameters) or its router does not
    return (logits, weights, ids).
    """

    def __init__(self, block: nn.Module, where: str) -> None:
        self.module = block
        self.router: nn.Module = block.gate
        self.experts: nn.Module = block.experts
        gate_up = getattr(self.experts, "gate_up_proj", None)
        down = getattr(self.experts, "down_proj", None)
        if not (isinstance(gate_up, Tensor) and isinstance(down, Tensor) and gate_up.ndim == 3 and down.ndim == 3):
            raise UserError(
                f"{where}: its experts are not stored as transformers' fused 3D tensors (gate_up_proj "
                f"[E, 2I, D], down_proj [E, D, I]); the probe reads the MoE blocks of transformers 5.x."
            )
        if getattr(self.experts, "has_bias", False) or getattr(self.experts, "is_transposed", False):
            raise UserError(f"{where}: experts with biases or transposed weights are not read by the probe yet.")
        self.n_experts = int(gate_up.shape[0])
        self.top_k = int(getattr(self.router, "top_k", 0) or 0)
        self.act = getattr(self.experts, "act_fn", None)
        if self.top_k < 1 or self.act is None:
            raise UserError(
                f"{where}: its router states no top_k or its experts no activation; not an MoE block the probe reads."
            )
        self.shared: nn.Module | None = getattr(block, "shared_experts", None) or getattr(block, "shared_expert", None)
        self.shared_gate: nn.Module | None = getattr(block, "shared_expert_gate", None)

    # --- the parts ------------------------------------------------------------------------------

    def route(self, x: Float[Tensor, "tokens d_model"]) -> Routing:
        """The router's own decision on normed tokens x [N, D]."""
        got = self.router(x)
        if not (isinstance(got, tuple) and len(got) == 3):
            raise UserError(
                f"the router {type(self.router).__name__} does not return (logits, weights, ids); "
                "the probe reads transformers 5.x routers."
            )
        logits, weights, ids = got
        return Routing(logits.reshape(x.shape[0], -1), ids.reshape(x.shape[0], -1), weights.reshape(x.shape[0], -1))

    def expert(
        self, e: int, x: Float[Tensor, "tokens d_model"], product: Product | None = None
    ) -> Float[Tensor, "tokens d_model"]:
        """Expert e's output on x [n, D], before its gate weight. product(act, gate, up): how the
        neurons act(gate) * up are formed (a gradient pass's backward rules: `probe.rules`)."""
        gate, up = F.linear(x, self.experts.gate_up_proj[e]).chunk(2, dim=-1)
        neurons = self.act(gate) * up if product is None else product(self.act, gate, up)
        return F.linear(neurons, self.experts.down_proj[e])

    def gated(
        self, e: int, x: Float[Tensor, "tokens d_model"], routing: Routing, product: Product | None = None
    ) -> Float[Tensor, "tokens d_model"]:
        """What expert e writes: weight * expert_e(x) at the tokens routed to it, 0 elsewhere; [N, D]."""
        hit = routing.ids == e  # [N, k]
        rows = hit.any(-1).nonzero().squeeze(-1)
        out = x.new_zeros(x.shape)
        if rows.numel() == 0:
            return out
        w = (routing.weights * hit).sum(-1)[rows, None].to(x.dtype)
        return out.index_copy(0, rows, w * self.expert(e, x[rows], product))

    def shared_out(self, x: Float[Tensor, "tokens d_model"]) -> Float[Tensor, "tokens d_model"] | None:
        """What the shared expert writes on x [N, D] (its sigmoid gate included), or None."""
        if self.shared is None:
            return None
        out = self.shared(x)
        if self.shared_gate is not None:
            out = torch.sigmoid(self.shared_gate(x)) * out
        return out

    def routed(
        self,
        x: Float[Tensor, "tokens d_model"],
        routing: Routing,
        parts: dict[int, Tensor] | None = None,
        product: Product | None = None,
    ) -> Float[Tensor, "tokens d_model"]:
        """The routed experts' sum under `routing`; `parts` gives some experts' gated outputs
        already computed (or replaced: a replaced expert writes its value even where the routing
        does not reach it)."""
        parts = parts or {}
        total = x.new_zeros(x.shape)
        for e in sorted(set(routing.ids.unique().tolist()) | set(parts)):
            total = total + (parts[e] if e in parts else self.gated(e, x, routing, product))
        return total

    def output(
        self,
        x: Float[Tensor, "tokens d_model"],
        routing: Routing,
        parts: dict[int, Tensor] | None = None,
        shared: Float[Tensor, "tokens d_model"] | None = None,
        product: Product | None = None,
    ) -> Float[Tensor, "tokens d_model"]:
        """The block's output under `routing`: the routed experts' sum (`routed`, with `parts`;
        `product` as in `expert`) plus the shared expert's output (`shared`, computed here when
        not given)."""
        total = self.routed(x, routing, parts, product)
        if self.shared is None:
            return total
        return total + (self.shared_out(x) if shared is None else shared)

    def check(self) -> bool:
        """Whether the per-expert re-computation equals the module's forward on random input."""
        p = self.experts.gate_up_proj
        if p.device.type == "meta":
            return True  # offloaded: checked when a pass runs it (the sum is compared there)
        d = int(p.shape[2])
        x = torch.randn(1, 5, d, generator=torch.Generator().manual_seed(0)).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            expected = self.module(x).reshape(5, d)
            flat = x.reshape(5, d)
            got = self.output(flat, self.route(flat))
        tol = 1e-4 if p.dtype in (torch.float32, torch.float64) else 3e-2
        return bool(torch.allclose(got, expected, atol=tol, rtol=tol))
