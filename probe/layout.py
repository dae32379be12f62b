"""Where each role lives inside a Hugging Face decoder, found by module names, not model classes.

Every decoder the probe reads is the same machine: an embedding, L blocks of
`norm -> attention (q, k, v, o) -> [post-norm] -> add -> norm -> MLP (..., down) -> [post-norm]
-> add`, a final norm and an unembedding. HF families only name the parts differently
(`self_attn.q_proj` / `attn.c_attn`, `post_attention_layernorm` / `ln_2`, ...). `Layout` finds the
parts once, by the names HF uses, and exposes the weights the probe needs in one orientation
(`[out, in]`, like `nn.Linear`), whatever the storage (GPT-2's `Conv1D` stores `[in, out]`).

Families whose block is not that machine (parallel attention + MLP such as GPT-J or Falcon,
post-norm-only blocks) are refused with a `UserError` rather than probed wrongly.

`FrozenNorm` turns a norm into the per-token linear map it is once its scale is fixed: the tool
behind the exact decomposition of post-norm models and direct logit attribution. It checks itself
against the module on random input, so an unfamiliar norm is detected, not trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ar2mdm.common.errors import UserError
from ar2mdm.common.placement import offload_holder, weights_at_hand
from probe.moe import MoeBlock, is_moe_block

SUPPORTED = (
    "Llama-like blocks (self_attn.{q,k,v,o}_proj, input_layernorm, post_attention_layernorm, "
    "mlp.down_proj: Llama, Mistral, Qwen2/3, SmolLM, ...), Gemma-like blocks (the same plus "
    "pre/post_feedforward_layernorm), GPT-2-like blocks (attn.c_attn, attn.c_proj, ln_1, ln_2, "
    "mlp.c_proj) and transformers' mixture-of-experts blocks (mlp.gate router, mlp.experts fused: "
    "Qwen3-MoE, GLM-4-MoE, Qwen2-MoE, OLMoE)"
)


def _first(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def linear_weight(module: nn.Module) -> Float[Tensor, "d_out d_in"]:
    """The module's weight as [out, in] (nn.Linear layout), for Linear and GPT-2's Conv1D."""
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, Conv1D):
        return module.weight.T
    raise UserError(f"cannot read the weight of a {type(module).__name__}; expected Linear or Conv1D.")


def linear_bias(module: nn.Module) -> Float[Tensor, " d_out"] | None:
    return getattr(module, "bias", None)


@dataclass
class Block:
    """The modules of one decoder block. `qkv` is set instead of q/k/v for fused projections;
    `moe` instead of `down` for a mixture-of-experts MLP."""

    module: nn.Module
    ln1: nn.Module
    attn: nn.Module
    q: nn.Module | None
    k: nn.Module | None
    v: nn.Module | None
    qkv: nn.Module | None
    o: nn.Module
    attn_post_norm: nn.Module | None
    ln2: nn.Module
    mlp: nn.Module
    down: nn.Module | None
    mlp_post_norm: nn.Module | None
    moe: MoeBlock | None = None


class Layout:
    """The roles of an HF causal LM's modules, and its sizes.

    >>> layout = Layout(model)                                   # doctest: +SKIP
    >>> layout.n_layers, layout.blocks[0].o                      # doctest: +SKIP
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        config = model.config
        what = f"{type(model).__name__} (model_type {getattr(config, 'model_type', '?')!r})"
        base = getattr(model, "base_model", None)
        layers = _first(base, ("layers", "h")) if base is not None else None
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise UserError(f"{what}: no list of decoder blocks found. The probe reads {SUPPORTED}.")
        self.embed = model.get_input_embeddings()
        self.unembed = model.get_output_embeddings()
        self.final_norm = _first(base, ("norm", "ln_f", "final_layernorm"))
        if self.unembed is None or self.final_norm is None:
            raise UserError(f"{what}: no LM head or final norm found. The probe reads {SUPPORTED}.")
        self.blocks = [self._block(b, i, what) for i, b in enumerate(layers)]

        self.n_layers = len(self.blocks)
        self.n_heads = int(_config_value(config, ("num_attention_heads", "n_head"), what))
        self.n_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.d_model = int(self.embed.weight.shape[1])
        self.d_head = int(getattr(config, "head_dim", None) or self.d_model // self.n_heads)
        dense = [b for b in self.blocks if b.down is not None]
        self.d_mlp = int(linear_weight(dense[0].down).shape[1]) if dense else 0  # type: ignore[arg-type]
        moe = [b.moe for b in self.blocks if b.moe is not None]
        self.moe_layers = tuple(i for i, b in enumerate(self.blocks) if b.moe is not None)
        self.n_experts = moe[0].n_experts if moe else 0
        self.top_k = moe[0].top_k if moe else 0
        self.shared_expert = bool(moe and moe[0].shared is not None)
        if any(
            (m.n_experts, m.top_k, m.shared is not None) != (self.n_experts, self.top_k, self.shared_expert)
            for m in moe
        ):
            raise UserError(
                f"{what}: its MoE layers differ in expert count, top-k or shared expert; the probe reads uniform ones."
            )
        self.d_vocab = int(self.unembed.weight.shape[0])
        q_out = self.n_heads * self.d_head
        kv_out = self.n_kv_heads * self.d_head
        self.qkv_sizes = (q_out, kv_out, kv_out)
        if int(linear_weight(self.blocks[0].o).shape[1]) != q_out:
            raise UserError(
                f"{what}: the output projection reads {linear_weight(self.blocks[0].o).shape[1]} "
                f"features, not n_heads * head_dim = {q_out}; the probe cannot split it into heads."
            )
        self.post_norms = self.blocks[0].attn_post_norm is not None

    @staticmethod
    def _block(block: nn.Module, index: int, what: str) -> Block:
        attn = _first(block, ("self_attn", "attn", "attention"))
        ln1 = _first(block, ("input_layernorm", "ln_1"))
        mlp = _first(block, ("mlp", "feed_forward"))
        if attn is None or ln1 is None or mlp is None:
            raise UserError(
                f"{what}: block {index} has no attention, pre-attention norm or MLP under the "
                f"names the probe knows. The probe reads {SUPPORTED}."
            )
        pre_ff = _first(block, ("pre_feedforward_layernorm",))
        if pre_ff is not None:  # Gemma 2/3: post_attention_layernorm normalises the attention output
            ln2 = pre_ff
            attn_post = _first(block, ("post_attention_layernorm",))
            mlp_post = _first(block, ("post_feedforward_layernorm",))
        else:
            ln2 = _first(block, ("post_attention_layernorm", "ln_2"))
            attn_post = mlp_post = None
        if ln2 is None:
            raise UserError(
                f"{what}: block {index} has no norm in front of its MLP (parallel attention and "
                f"MLP, as in GPT-J or Falcon?). The probe reads {SUPPORTED}."
            )
        q, k, v = (_first(attn, (n,)) for n in ("q_proj", "k_proj", "v_proj"))
        qkv = None if q is not None else _first(attn, ("c_attn", "qkv_proj"))
        o = _first(attn, ("o_proj", "c_proj", "out_proj", "dense"))
        moe = None
        if is_moe_block(mlp):
            moe = MoeBlock(mlp, f"{what} block {index}")
            if not moe.check():
                raise UserError(
                    f"{what}: the mixture of experts in block {index} ({type(mlp).__name__}) does not compute "
                    "the sum of its routed experts' gated outputs and its shared expert, which the probe "
                    "re-computes per expert; it cannot be probed."
                )
            down = None
            if pre_ff is not None:
                raise UserError(
                    f"{what}: block {index} is a mixture of experts with post-norms; the probe does not read that yet."
                )
        else:
            down = _first(mlp, ("down_proj", "c_proj", "fc2"))
        if (q is None or k is None or v is None) and qkv is None or o is None or (down is None and moe is None):
            raise UserError(
                f"{what}: block {index} lacks q/k/v, output or down projections under the names "
                f"the probe knows. The probe reads {SUPPORTED}."
            )
        return Block(block, ln1, attn, q, k, v, qkv, o, attn_post, ln2, mlp, down, mlp_post, moe)

    # --- weights in [out, in] orientation -----------------------------------------------------
    # A model accelerate dispatched with offloading (device_map to "cpu" or "disk" beside a GPU, or
    # to "disk") holds meta tensors between calls: outside its forward, a weight is read in and
    # copied (`_at_hand`); inside the forward it is the live tensor, as on one device.

    def _at_hand(self, module: nn.Module, read: Callable[[], Any]) -> Any:
        first = read()
        probe = first[0] if isinstance(first, tuple) else first
        if probe is None or probe.device.type != "meta":
            return first
        with torch.no_grad(), weights_at_hand(module, offload_holder(self.model, module)):
            got = read()
            if isinstance(got, tuple):
                return tuple(None if t is None else t.detach().clone() for t in got)
            return got.detach().clone()

    def qkv_weight(self, layer: int, port: str) -> tuple[Float[Tensor, "proj d_model"], Float[Tensor, " proj"] | None]:
        """(W [n * d_head, d_model], b [n * d_head] or None) of the q, k or v projection."""
        return self._at_hand(self.blocks[layer].module, lambda: self._qkv_weight(layer, port))

    def _qkv_weight(self, layer: int, port: str) -> tuple[Tensor, Tensor | None]:
        blk = self.blocks[layer]
        if blk.qkv is None:
            module = {"q": blk.q, "k": blk.k, "v": blk.v}[port]
            assert module is not None
            return linear_weight(module), linear_bias(module)
        index = "qkv".index(port)
        start = sum(self.qkv_sizes[:index])
        stop = start + self.qkv_sizes[index]
        w, b = linear_weight(blk.qkv), linear_bias(blk.qkv)
        return w[start:stop], None if b is None else b[start:stop]

    def o_weight(self, layer: int) -> Float[Tensor, "d_model heads_d_head"]:
        """W_O as [d_model, n_heads * d_head]."""
        o = self.blocks[layer].o
        return self._at_hand(o, lambda: linear_weight(o))

    def o_bias(self, layer: int) -> Float[Tensor, " d_model"] | None:
        o = self.blocks[layer].o
        return self._at_hand(o, lambda: linear_bias(o))

    def down_weight(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        """W_down as [d_model, d_mlp]: column i is what neuron i writes per unit of activation."""
        down = self.blocks[layer].down
        if down is None:
            raise UserError(f"layer {layer} is a mixture of experts: it has no single down projection (no neurons).")
        return self._at_hand(down, lambda: linear_weight(down))

    def unembed_weight(self) -> Float[Tensor, "vocab d_model"]:
        return self._at_hand(self.unembed, lambda: linear_weight(self.unembed))

    def unembed_bias(self) -> Float[Tensor, " vocab"] | None:
        return self._at_hand(self.unembed, lambda: linear_bias(self.unembed))


def _config_value(config, keys: tuple[str, ...], what: str):
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    raise UserError(f"{what}: its config has none of {keys}; cannot count attention heads.")


class FrozenNorm:
    """A norm `y = g * (x - c(x)) / s(x) + beta` (RMSNorm: c = 0; LayerNorm: c = mean) as the
    linear map it is per token once s(x) is fixed: `linear(part, x)` maps a summand of x.

    Summed over parts that add up to x, `linear` plus `bias` reproduces the module exactly.
    `exact` is False when the module did not pass the self-check (an unfamiliar norm).
    holder: the module whose weights accelerate offloads together with this norm's (its decoder
    block, for a model dispatched with a device_map); default the norm itself.
    """

    def __init__(self, module: nn.Module, holder: nn.Module | None = None) -> None:
        self.module = module
        weight = getattr(module, "weight", None)
        if weight is None:
            self.exact = False
            return
        d = weight.shape[-1]
        self.centered = isinstance(module, nn.LayerNorm)
        self.eps = float(
            next((getattr(module, a) for a in ("variance_epsilon", "eps", "epsilon") if hasattr(module, a)), 1e-6)
        )
        # a norm accelerate offloaded (device_map) holds meta tensors between calls: read it in for this
        with torch.no_grad(), weights_at_hand(module, holder) as device:
            weight = module.weight
            if self.centered:
                self.gain = module.weight.detach().clone()
                self.bias = None if module.bias is None else module.bias.detach().clone()
            else:
                # An RMSNorm of a ones vector is gain / sqrt(1 + eps): this reads the effective gain
                # whatever the parametrisation (Llama's w, Gemma's 1 + w).
                ones = torch.ones(1, d, dtype=weight.dtype, device=device)
                self.gain = (module(ones)[0] * (1.0 + self.eps) ** 0.5).detach()
                self.bias = None
            probe = torch.randn(3, d, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=weight.dtype)
            expected = module(probe)
            got = self.linear(probe, probe) + (0 if self.bias is None else self.bias)
            tol = 1e-4 if weight.dtype == torch.float32 or weight.dtype == torch.float64 else 2e-2
            self.exact = bool(torch.allclose(got, expected, atol=tol, rtol=tol))

    def inv_scale(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch 1"]:
        """1 / s(x) per token, [..., 1] (computed in at least float32, like HF's norms)."""
        xf = x.to(_compute_dtype(x))
        if self.centered:
            xf = xf - xf.mean(-1, keepdim=True)
        return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(
        self, part: Float[Tensor, "*#batch d_model"], x: Float[Tensor, "*#batch d_model"]
    ) -> Float[Tensor, "*#batch d_model"]:
        """The image of `part` (a summand of `x`, same leading shape or broadcastable)."""
        p = part.to(_compute_dtype(part))
        if self.centered:
            p = p - p.mean(-1, keepdim=True)
        return (p * self.inv_scale(x).to(p.dtype) * self.gain.to(p.dtype)).to(part.dtype)

    def vjp(
        self, x: Float[Tensor, "*batch 1 d_model"], v: Float[Tensor, "*batch n d_model"], *, frozen: bool = False
    ) -> Float[Tensor, "*batch n d_model"]:
        """J^T v: the gradient w.r.t. the norm's input x of <v, norm(x)>.

        x: [..., 1, D] (one input per token), v: [..., n, D] (n covectors per token). With
        x_hat = (x - mean) * r and w = gain * v:  r * (w - x_hat * mean(w * x_hat) [- mean(w)]).
        frozen: the scale r held constant (the LN-rule, `probe.rules`): r * (w [- mean(w)]).
        """
        xf = x.to(_compute_dtype(x))
        if self.centered:
            xf = xf - xf.mean(-1, keepdim=True)
        r = self.inv_scale(x).to(xf.dtype)
        x_hat = xf * r
        w = v.to(xf.dtype) * self.gain.to(xf.dtype)
        if frozen:
            out = w - w.mean(-1, keepdim=True) if self.centered else w
            return out * r
        coef = torch.matmul(w, x_hat.transpose(-1, -2)) / x.shape[-1]  # [..., n, 1]
        out = torch.addcmul(w, coef, x_hat, value=-1.0)
        if self.centered:
            out -= w.mean(-1, keepdim=True)
        return out.mul_(r)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)
