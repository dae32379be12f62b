"""Residual-stream accounting: each sender's exact contribution to the final residual stream.

Without post-norms a contribution is the node's value and the parts sum to the last block's
output with the output projections' biases. With post-norms (Gemma) a sublayer's output is
normalised before it joins the stream, so a head or MLP contributes its image under its post-norm
with the norm's scale fixed at that layer's actual output: linear in the node, and the parts still
sum exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from probe.cache import Cache
from probe.core import Core


@dataclass
class Decomposition:
    """Each node's contribution to the final residual stream ([B, T, d_model] per name) and the
    rest (`bias`: output-projection biases), which sum to `L{n-1}.resid_post`."""

    parts: dict[str, Float[Tensor, "batch pos d_model"]]
    bias: Float[Tensor, "batch pos d_model"]

    def total(self) -> Float[Tensor, "batch pos d_model"]:
        return sum(self.parts.values()) + self.bias


def decompose(core: Core, cache: Cache) -> Decomposition:
    """Each sender's exact contribution to the final residual stream.

    Needs `embed`, every `L{l}.H{h}` and every `L{l}.mlp` in `cache`. Without post-norms a
    contribution is the node's value; with them (Gemma), it is the node's image under its
    post-norm with the norm's scale fixed at that layer's actual output, which sums exactly.
    """
    parts: dict[str, Tensor] = {"embed": cache["embed"]}
    bias = torch.zeros_like(parts["embed"])
    for layer in range(core.shape.n_layers):
        heads = cache.heads(layer)
        o_bias = core.layout.o_bias(layer)
        whole = heads.sum(2) + (0 if o_bias is None else o_bias.to(heads))
        norm = core.attn_post[layer]
        if norm is not None:
            core.require_exact_norms([norm], "decompose")
            for h in range(core.shape.n_heads):
                parts[f"L{layer}.H{h}"] = norm.linear(heads[:, :, h], whole)
            if o_bias is not None:
                bias = bias + norm.linear(o_bias.to(heads).expand_as(whole), whole)
        else:
            for h in range(core.shape.n_heads):
                parts[f"L{layer}.H{h}"] = heads[:, :, h]
            if o_bias is not None:
                bias = bias + o_bias.to(heads)
        mlp = cache[f"L{layer}.mlp"]
        mnorm = core.mlp_post[layer]
        parts[f"L{layer}.mlp"] = mlp if mnorm is None else mnorm.linear(mlp, mlp)
    return Decomposition(parts, bias)
