"""The site vocabulary shared by the core and every backend, and how a backend is chosen.

Sites of block l, in forward order, with the shape the core sees (B batch, T positions):

    ("resid_pre", l)   block input                                  [B, T, d_model]
    ("q", l)           query projection output (before any q-norm / rotary)  [B, T, n_heads * d_head]
    ("k", l), ("v", l) key / value projection outputs               [B, T, n_kv_heads * d_head]
    ("z", l)           input of the output projection (heads' z)    [B, T, n_heads * d_head]
    ("attn_out", l)    output projection output (before a post-norm)  [B, T, d_model]
    ("pattern", l)     attention probabilities, read only           [B, n_heads, T, T]
    ("mlp_in", l)      the MLP branch's input, before its norm; a new value changes the MLP's
                       input only, not the residual skip            [B, T, d_model]
    ("moe_in", l)      a mixture-of-experts block's input (the normed tokens its router and
                       experts read), read only                    [B, T, d_model]
    ("neurons", l)     input of the down projection (dense MLPs)    [B, T, d_mlp]
    ("mlp_out", l)     MLP output (before a post-norm)              [B, T, d_model]
    ("resid_post", l)  block output                                 [B, T, d_model]
    ("final", L)       input of the final norm (L = n_layers)       [B, T, d_model]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from jaxtyping import Float, Int, Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.registry import Registry

Site = tuple[str, int]
SiteFn = Callable[[Tensor], Tensor | None]
SiteFns = Mapping[Site, SiteFn]
# What a backend's `forward` takes and returns:
TokenIds = Int[Tensor, "batch pos"]  # input ids, position ids
Mask = Shaped[Tensor, "batch pos"]  # attention mask: 1 (or True) = token, 0 = padding
# A block-diffusion MDM's mask (`probe.model.block_causal_mask`): additive, 0 = may attend,
# -inf = may not, padding already in it. HF decoders take it in place of their own masks.
Mask4D = Float[Tensor, "batch 1 pos pos"]
Logits = Float[Tensor, "batch pos vocab"]

SITE_ORDER: tuple[str, ...] = (
    "resid_pre",
    "q",
    "k",
    "v",
    "z",
    "attn_out",
    "pattern",
    "mlp_in",
    "moe_in",
    "neurons",
    "mlp_out",
    "resid_post",
)


class Backend(ABC):
    """One way of running the model with site functions attached; subclasses register themselves
    in `BACKENDS` by their `name` (a new backend is one subclass; see docs/EXTENDING.md).

    `causal` is fixed at construction: False for MDM checkpoints, and the backend must make the
    model attend bidirectionally inside its own machinery. A block-diffusion MDM (`block_size`
    in its ModelMeta) is read block-causally: `forward` then gets a 4D additive mask (`Mask4D`)
    instead of the 2D padding mask, and the backend must hand it to the model unchanged, so
    that it replaces the model's own masking. `auto_priority`: backends that
    `supports` a model are tried by `choose("auto")` from the highest priority down (0: never
    chosen automatically).
    """

    name: ClassVar[str] = ""
    auto_priority: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BACKENDS.add(cls)

    @abstractmethod
    def __init__(self, model, layout, *, causal: bool, tokenizer=None, source: str = "") -> None:
        """model: the HF model; layout: its `probe.layout.Layout`; tokenizer / source: for backends
        that rebuild the model (the TransformerLens bridge boots from them)."""

    @classmethod
    def supports(cls, model, tokenizer=None) -> bool:
        """Whether this backend can run `model` (consulted by `choose("auto")`)."""
        return True

    @abstractmethod
    def forward(
        self, input_ids: TokenIds, attention_mask: Mask | Mask4D, position_ids: TokenIds, fns: SiteFns
    ) -> Logits:
        """Logits [B, T, V] of one pass with `fns` applied at their sites.

        input_ids, position_ids: [B, T]. attention_mask: the padding mask [B, T], or for a
        block-diffusion MDM the additive mask [B, 1, T, T] (`Mask4D`). The position ids skip
        padding (`ar2mdm.common.modeling.position_ids`), so a left-padded row gets the logits it gets
        alone, on absolute-position models (GPT-2) as on rotary ones.
        """


BACKENDS: Registry[Backend] = Registry("backend")


def choose(requested: str, model=None, tokenizer=None) -> str:
    """The backend to use for `requested` ("auto" or a backend name in `BACKENDS`).

    "auto": among the backends that support the model, the one with the highest `auto_priority`
    (the TransformerLens bridge where it has an adapter for the architecture and a tokenizer to
    boot with, nnsight for any other HF decoder). Every backend gives the same numbers (tested);
    "torch" (plain forward hooks, no copy of the model, the least overhead: docs/results/probe.md)
    is there on request.
    """
    if requested == "auto":
        ranked = sorted((cls for cls in BACKENDS.values() if cls.auto_priority > 0), key=lambda c: -c.auto_priority)
        for cls in ranked:
            if model is not None and cls.supports(model, tokenizer):
                return cls.name
        return ranked[-1].name
    if requested not in BACKENDS:
        raise UserError(f"unknown backend {requested!r}; choose 'auto' or one of {', '.join(BACKENDS)}.")
    return requested


def create(name: str, model, layout, *, causal: bool, tokenizer=None, source: str = "") -> Backend:
    """Instantiate the registered backend `name` (its library is imported only then)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose 'auto' or one of {', '.join(BACKENDS)}.")
    return BACKENDS[name](model, layout, causal=causal, tokenizer=tokenizer, source=source)
