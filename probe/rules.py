"""Backward rules: local replacements of the chain rule for LRP-style and GIM attribution.

A gradient pass run under `BackwardRules` computes the same forward values (logits, caches) as a
plain pass; only the backward pass changes, one operation kind at a time:

- freeze_norms (LN-rule, Ali et al. 2022, "XAI for Transformers", ICML; GIM's norm freezing): a
  norm's scale 1/s(x) is a constant, so the norm is the linear map `FrozenNorm.linear` of its input;
  every norm of the model (block, final, post and per-head q/k norms).
- identity_activation (Identity rule, Jafari et al. 2024, "MambaLRP", NeurIPS): an activation
  y = f(z) passes z's gradient times f(z)/z (relevance passes through unchanged); 0.5 at z = 0
  (the limit for SiLU and GELU).
- gate_scale (Half rule, Arras et al. 2019; GIM's gate/up scaling): the gradient reaching each
  factor of a gated MLP's product act(gate) * up is multiplied by this (0.5: each factor gets half).
- qkv_scales (GIM's gradient normalisation, AttnLRP's uniform rule for the bilinear products
  q.k and pattern.v): the gradients reaching the attention's q, k and v are multiplied by these
  (0.25, 0.25, 0.5).
- softmax_temperature (GIM's temperature-scaled gradients): the attention softmax's backward is
  that of softmax(x / T) at the same scores, which un-saturates a saturated pattern.
- detach_pattern (AH-rule, Ali et al. 2022): the attention pattern is a constant; gradients reach
  only v.

Methods (RESEARCH.md section 7): RelP (Jafari et al. 2025, arXiv 2508.21258) = LN-rule + Identity
rule + Half rule, optionally the AH-rule (`RELP`, `RELP_AH`); GIM (Edin et al. 2025, arXiv
2505.17630; package gim-explain) = norm freezing + T = 2 + q/k/v scales + gate/up halves (`GIM`).

How: `applied(layout, rules)` registers forward hooks on the norms and MLP parts of the Hugging
Face model and switches its attention to `rules-eager`, the family's own eager attention function
followed by the rules. Nothing global is patched: the hooks and the attention implementation are
the model's own and are restored on exit. Mixture-of-experts blocks: the probe re-computes its
experts (`probe.moe.MoeBlock.expert`) with `gated_product`; the router's softmax and the
routing-weight product keep the plain chain rule.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from ar2mdm.common.errors import UserError
from probe.layout import FrozenNorm, Layout

IMPLEMENTATION = "rules-eager"


@dataclass(frozen=True)
class BackwardRules:
    """Which local backward rules a gradient pass uses (the module docstring defines each)."""

    freeze_norms: bool = False
    identity_activation: bool = False
    gate_scale: float = 1.0
    qkv_scales: tuple[float, float, float] = (1.0, 1.0, 1.0)
    softmax_temperature: float = 1.0
    detach_pattern: bool = False

    def __post_init__(self) -> None:
        if not self.softmax_temperature > 0:
            raise UserError(f"softmax_temperature must be > 0, got {self.softmax_temperature!r}.")

    @property
    def attention(self) -> bool:
        """Whether the attention's backward differs from the plain one."""
        return self.detach_pattern or self.softmax_temperature != 1.0 or self.qkv_scales != (1.0, 1.0, 1.0)


RELP = BackwardRules(freeze_norms=True, identity_activation=True, gate_scale=0.5)
RELP_AH = replace(RELP, detach_pattern=True)
GIM = BackwardRules(freeze_norms=True, gate_scale=0.5, qkv_scales=(0.25, 0.25, 0.5), softmax_temperature=2.0)


# --- elementary rules ----------------------------------------------------------------------------


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times a constant backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return g * ctx.scale, None


def scale_grad(x: Float[Tensor, ...], scale: float) -> Float[Tensor, ...]:
    """x unchanged; the gradient reaching x multiplied by `scale` (x itself when scale is 1)."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, float(scale))


def identity_rule(z: Float[Tensor, ...], y: Float[Tensor, ...]) -> Float[Tensor, ...]:
    """y = f(z) in value; backward: z's gradient is y's times f(z)/z (0.5 where |z| < 1e-6)."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    zf = z.detach().to(dtype)
    small = zf.abs() < 1e-6
    ratio = torch.where(small, torch.full_like(zf, 0.5), y.detach().to(dtype) / torch.where(small, 1.0, zf))
    return y.detach() + (z - z.detach()) * ratio.to(z.dtype)


def gated_product(
    act: Callable[[Tensor], Tensor],
    gate: Float[Tensor, "*n d_mlp"],
    up: Float[Tensor, "*n d_mlp"],
    rules: BackwardRules | None,
) -> Float[Tensor, "*n d_mlp"]:
    """act(gate) * up (a gated MLP's neurons) under `rules` (plain chain rule when None)."""
    if rules is None:
        return act(gate) * up
    gate, up = scale_grad(gate, rules.gate_scale), scale_grad(up, rules.gate_scale)
    a = act(gate)
    if rules.identity_activation:
        a = identity_rule(gate, a)
    return a * up


def frozen_norm(norm: FrozenNorm, x: Float[Tensor, "*n d"], y: Float[Tensor, "*n d"]) -> Float[Tensor, "*n d"]:
    """y = norm(x) in value; backward through the norm's linear map with its scale fixed."""
    return y.detach() + norm.linear(x - x.detach(), x.detach()).to(y.dtype)


class _TemperatureSoftmax(torch.autograd.Function):
    """Applied to a softmax's output P: identity forward; backward, the incoming gradient g is
    replaced by g' with P * (g' - <g', P>) = s_T * (g - <g, s_T>), s_T = softmax(log P / T), so
    that the softmax's own backward then gives the temperature-T backward at the same scores.
    Where P underflowed to 0 the gradient is lost (scores more than ~100 below the row's max)."""

    @staticmethod
    def forward(ctx, p: Tensor, temperature: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(p)
        ctx.temperature = temperature
        return p.view_as(p)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        dtype = torch.promote_types(p.dtype, torch.float32)
        pf, gf = p.to(dtype), g.to(dtype)
        s_t = torch.softmax(torch.log(pf) / ctx.temperature, dim=-1)  # log 0 = -inf -> 0
        s_t = torch.nan_to_num(s_t)  # a row with no attended key
        wanted = s_t * (gf - (gf * s_t).sum(-1, keepdim=True))
        out = torch.where(pf > 0, wanted / torch.where(pf > 0, pf, 1.0), 0.0)
        return out.to(g.dtype), None


# --- attention ------------------------------------------------------------------------------------

_ACTIVE: ContextVar[BackwardRules | None] = ContextVar("backward_rules", default=None)
_CHECKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # attention modules whose output was checked
_FROZEN: weakref.WeakKeyDictionary[nn.Module, tuple[int, FrozenNorm]] = weakref.WeakKeyDictionary()


def _family_eager(module: nn.Module) -> Callable[..., tuple[Tensor, Tensor]]:
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise UserError(
            f"{type(module).__name__} has no eager_attention_forward in its modeling module; the "
            "attention backward rules (RelP's AH-rule, GIM) need the family's eager attention."
        )
    return fn


def rules_attention(
    module: nn.Module,
    query: Float[Tensor, "batch heads pos d_head"],
    key: Float[Tensor, "batch kv_heads pos d_head"],
    value: Float[Tensor, "batch kv_heads pos d_head"],
    attention_mask: Tensor | None,
    *args,
    **kwargs,
) -> tuple[Float[Tensor, "batch pos heads d_head"], Float[Tensor, "batch heads pos pos"]]:
    """The family's eager attention with the active rules' backward (an `AttentionInterface`
    function). The output is rebuilt as pattern @ v from the family's own pattern (its scores,
    masks, scaling and soft-capping), the pattern passing through the rule (constant, or the
    temperature's backward); returns (output [B, T, H, d_head], pattern).

    Raises UserError when the family's output is not pattern @ v (e.g. attention sinks; checked
    on a module's first call)."""
    rules = _ACTIVE.get() or BackwardRules()
    q_s, k_s, v_s = rules.qkv_scales
    query, key, value = scale_grad(query, q_s), scale_grad(key, k_s), scale_grad(value, v_s)
    out, pattern = _family_eager(module)(module, query, key, value, attention_mask, *args, **kwargs)
    groups = pattern.shape[1] // value.shape[1]
    v_rep = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    if rules.detach_pattern:
        p = pattern.detach()
    elif rules.softmax_temperature != 1.0:
        p = _TemperatureSoftmax.apply(pattern, rules.softmax_temperature)
    else:
        p = pattern
    result = torch.matmul(p.to(v_rep.dtype), v_rep).transpose(1, 2)  # the family's output, rebuilt
    if module not in _CHECKED:  # once per module: the family computes pattern @ v
        tol = 1e-4 if out.dtype in (torch.float32, torch.float64) else 3e-2
        if not torch.allclose(result.detach(), out.detach().to(result.dtype), atol=tol, rtol=tol):
            raise UserError(
                f"{type(module).__name__}'s attention output is not its pattern times v (attention sinks "
                "or another variant): the attention backward rules cannot be applied to this family."
            )
        _CHECKED.add(module)
    return result.to(out.dtype), pattern


AttentionInterface.register(IMPLEMENTATION, rules_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)


# --- the model ------------------------------------------------------------------------------------


def _norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("RMSNorm", "LayerNorm"))
    ]


def _mlp_parts(layout: Layout) -> tuple[list[nn.Module], list[nn.Module], list[str]]:
    """(activation modules, gate/up projections, blocks whose dense MLP has no activation module)."""
    acts: list[nn.Module] = []
    gates: list[nn.Module] = []
    missing = []
    for i, blk in enumerate(layout.blocks):
        found = False
        for m in blk.mlp.modules():
            for attr in ("act_fn", "act", "activation_fn"):
                child = getattr(m, attr, None)
                if isinstance(child, nn.Module) and child not in acts:
                    acts.append(child)
                    found = True
            g, u = getattr(m, "gate_proj", None), getattr(m, "up_proj", None)
            if isinstance(g, nn.Linear) and isinstance(u, nn.Linear):
                gates += [g, u]
        if not found and blk.moe is None:
            missing.append(f"layer {i} ({type(blk.mlp).__name__})")
    return acts, gates, missing


def _frozen(module: nn.Module) -> FrozenNorm:
    """The norm's `FrozenNorm`, remembered while its weight is unchanged (same tensor version)."""
    weight = getattr(module, "weight", None)
    version = int(weight._version) if isinstance(weight, Tensor) else -1
    held = _FROZEN.get(module)
    if held is None or held[0] != version:
        held = (version, FrozenNorm(module))
        _FROZEN[module] = held
    return held[1]


@contextlib.contextmanager
def applied(layout: Layout, rules: BackwardRules | None) -> Iterator[None]:
    """Run the model's passes under `rules` inside the block (nothing when None).

    Raises UserError when a rule finds no part to apply to (a norm the probe cannot reproduce, an
    MLP without an activation module) instead of silently applying half of it."""
    if rules is None:
        yield
        return
    model = layout.model
    handles = []
    previous = model.config._attn_implementation
    token = _ACTIVE.set(rules)
    try:
        if rules.freeze_norms:
            for name, module in _norm_modules(model):
                frozen = _frozen(module)
                if not frozen.exact:
                    raise UserError(
                        f"the norm {name} ({type(module).__name__}) is not an RMSNorm or LayerNorm the probe "
                        "can reproduce: its scale cannot be frozen (LN-rule / GIM)."
                    )
                handles.append(module.register_forward_hook(lambda m, a, y, f=frozen: frozen_norm(f, a[0], y)))
        acts, gates, missing = _mlp_parts(layout)
        if rules.identity_activation:
            if missing:
                raise UserError(
                    f"the identity rule found no activation module in {', '.join(missing)}; "
                    "it reads act_fn / act / activation_fn."
                )
            handles += [m.register_forward_hook(lambda m, a, y: identity_rule(a[0], y)) for m in acts]
        if rules.gate_scale != 1.0:
            handles += [m.register_forward_hook(lambda m, a, y: scale_grad(y, rules.gate_scale)) for m in gates]
        if rules.attention:
            model.set_attn_implementation(IMPLEMENTATION)
        yield
    finally:
        for h in handles:
            h.remove()
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
        _ACTIVE.reset(token)
