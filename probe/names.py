"""Canonical component names: the one vocabulary of caches, interventions, gradients and graphs.

A transformer decoder is read as a residual stream that components write into:

    embed                  everything entering layer 0 (token embedding; + position embedding
                           for models with learned positions such as GPT-2)
    L{l}.resid_pre         the residual stream entering layer l            [B, T, d_model]
    L{l}.H{h}              what attention head h of layer l writes         [B, T, d_model]
                           (its slice of the output projection applied to its z)
    L{l}.mlp               what the MLP of layer l writes                   [B, T, d_model]
    L{l}.mlp.neuron{i}     activation of neuron i (an input of the down projection)  [B, T]
    L{l}.mlp.neurons       all neuron activations of layer l               [B, T, d_mlp]
    L{l}.resid_post        the residual stream leaving layer l              [B, T, d_model]
    L{l}.H{h}.pattern      attention pattern of head h (query x key)        [B, T, T]
    logits                                                                  [B, T, d_vocab]

In a mixture-of-experts layer (`Shape.moe_layers`) `L{l}.mlp` is the whole MoE block's output,
which is the sum of its parts:

    L{l}.expert{e}         what routed expert e writes: its gate weight times its output, zero
                           at tokens the router did not send to it          [B, T, d_model]
    L{l}.shared_expert     what the shared expert(s) write (every token)    [B, T, d_model]
    L{l}.router            the router's logits, one per expert (before softmax / sigmoid)  [B, T, n_experts]
    L{l}.routing           the gate weights each token gives each expert, zero for experts
                           outside its top-k (`probe.moe.topk_of` reads ids and weights back)
                                                                            [B, T, n_experts]

MoE layers have experts instead of neurons. Setting `L{l}.routing` fixes the routing (to a clean
run's, say); the experts are then computed under it.

Edge destinations (what a head reads): `L{l}.H{h}.q` for query head h, and `L{l}.H{g}.k`,
`L{l}.H{g}.v` for key/value head g. Under grouped-query attention (n_kv_heads < n_heads) keys and
values exist once per KV head, so g counts KV heads (query heads g*r .. g*r + r - 1 share it, with
r = n_heads / n_kv_heads); with n_kv_heads == n_heads, g is the head itself. A receiver's input is
measured in residual-stream units: it is the residual stream that head reads (before its layer
norm), split into a private copy per receiver. The other receivers are `L{l}.mlp` (the MLP's input)
and `logits` (the input of the final norm). In an MoE layer `L{l}.mlp` is the input of its experts
(routed and shared) and `L{l}.router` the input of its router, each a private copy, so a change of
routing is attributed to the edges into the router.

Where a model normalises a sublayer's output before adding it (Gemma's post-norms), `L{l}.H{h}`
and `L{l}.mlp` are the values before that norm; `ProbedModel.decompose` gives their exact
contribution to the residual stream with the norm's scale frozen.

Every name a user passes is parsed here and checked against the model's shape, so a typo is a
`UserError` naming what exists rather than a silently empty result.

    >>> parse("L3.H7").kind, parse("L3.H7").layer, parse("L3.H7").head
    ('head', 3, 7)
    >>> parse("L0.mlp.neuron12").neuron
    12
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ar2mdm.common.errors import UserError

Kind = Literal[
    "embed",
    "resid_pre",
    "resid_post",
    "head",
    "mlp",
    "neuron",
    "neurons",
    "pattern",
    "receiver",
    "logits",
    "expert",
    "shared_expert",
    "router",
    "routing",
]

_PATTERNS: tuple[tuple[re.Pattern[str], Kind], ...] = (
    (re.compile(r"embed"), "embed"),
    (re.compile(r"logits"), "logits"),
    (re.compile(r"L(\d+)\.resid_pre"), "resid_pre"),
    (re.compile(r"L(\d+)\.resid_post"), "resid_post"),
    (re.compile(r"L(\d+)\.mlp"), "mlp"),
    (re.compile(r"L(\d+)\.mlp\.neurons"), "neurons"),
    (re.compile(r"L(\d+)\.mlp\.neuron(\d+)"), "neuron"),
    (re.compile(r"L(\d+)\.H(\d+)"), "head"),
    (re.compile(r"L(\d+)\.H(\d+)\.pattern"), "pattern"),
    (re.compile(r"L(\d+)\.H(\d+)\.([qkv])"), "receiver"),
    (re.compile(r"L(\d+)\.expert(\d+)"), "expert"),
    (re.compile(r"L(\d+)\.shared_expert"), "shared_expert"),
    (re.compile(r"L(\d+)\.router"), "router"),
    (re.compile(r"L(\d+)\.routing"), "routing"),
)

NAME_FORMS = (
    "embed, logits, L{l}.resid_pre, L{l}.resid_post, L{l}.H{h}, L{l}.mlp, L{l}.mlp.neuron{i}, "
    "L{l}.mlp.neurons, L{l}.H{h}.pattern, L{l}.H{h}.q|k|v; in MoE layers L{l}.expert{e}, "
    "L{l}.shared_expert, L{l}.router, L{l}.routing"
)


@dataclass(frozen=True)
class Name:
    """A parsed canonical name. `port` is "q", "k" or "v" for head receivers, else None;
    `expert` is the expert's index for `L{l}.expert{e}`."""

    kind: Kind
    layer: int | None = None
    head: int | None = None
    neuron: int | None = None
    port: str | None = None
    expert: int | None = None

    def __str__(self) -> str:
        if self.kind in ("embed", "logits"):
            return self.kind
        base = f"L{self.layer}"
        return {
            "resid_pre": f"{base}.resid_pre",
            "resid_post": f"{base}.resid_post",
            "mlp": f"{base}.mlp",
            "neurons": f"{base}.mlp.neurons",
            "neuron": f"{base}.mlp.neuron{self.neuron}",
            "head": f"{base}.H{self.head}",
            "pattern": f"{base}.H{self.head}.pattern",
            "receiver": f"{base}.H{self.head}.{self.port}",
            "expert": f"{base}.expert{self.expert}",
            "shared_expert": f"{base}.shared_expert",
            "router": f"{base}.router",
            "routing": f"{base}.routing",
        }[self.kind]


def parse(name: str) -> Name:
    """Parse one canonical name (no range check; see `Shape.check`). UserError if malformed."""
    if not isinstance(name, str):
        raise UserError(f"component names are strings, got {type(name).__name__} {name!r}.")
    return _parse(name)


@functools.lru_cache(maxsize=2**16)
def _parse(name: str) -> Name:  # names are parsed on every pass: remembered (Name is frozen)
    for pattern, kind in _PATTERNS:
        m = pattern.fullmatch(name)
        if not m:
            continue
        groups = [int(g) if g.isdigit() else g for g in m.groups()]
        if kind in ("embed", "logits"):
            return Name(kind)
        if kind in ("resid_pre", "resid_post", "mlp", "neurons", "shared_expert", "router", "routing"):
            return Name(kind, layer=groups[0])
        if kind == "expert":
            return Name(kind, layer=groups[0], expert=groups[1])
        if kind == "neuron":
            return Name(kind, layer=groups[0], neuron=groups[1])
        if kind in ("head", "pattern"):
            return Name(kind, layer=groups[0], head=groups[1])
        return Name(kind, layer=groups[0], head=groups[1], port=str(groups[2]))
    raise UserError(f"{name!r} is not a component name. Names look like: {NAME_FORMS}.")


@dataclass(frozen=True)
class Shape:
    """The sizes that decide which names exist.

    d_mlp: the neuron count of the dense MLPs (0 when every layer is a mixture of experts).
    n_experts: routed experts per MoE layer; moe_layers: the layers that are mixtures of experts
    (others are dense, e.g. LLaDA2's first); shared_expert: MoE layers also have a shared expert.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    n_experts: int = 0
    moe_layers: tuple[int, ...] = ()
    shared_expert: bool = False

    def is_moe(self, layer: int) -> bool:
        return layer in self.moe_layers

    def describe(self) -> str:
        """The shape in words, every field shown.

        >>> Shape(2, 4, 2, 64).describe()
        '2 layers x 4 heads (2 KV heads), MLP width 64'
        >>> Shape(2, 4, 2, 0, n_experts=8, moe_layers=(0, 1), shared_expert=True).describe()
        '2 layers x 4 heads (2 KV heads), MLP width 0, experts 8 in layers [0, 1] + a shared expert'
        """
        text = f"{self.n_layers} layers x {self.n_heads} heads ({self.n_kv_heads} KV heads), MLP width {self.d_mlp}"
        if self.moe_layers:
            text += f", experts {self.n_experts} in layers {list(self.moe_layers)}"
            text += " + a shared expert" if self.shared_expert else ""
        return text

    def differences(self, other: Shape, names: tuple[str, str] = ("this", "the other")) -> str:
        """What differs between two shapes, each differing field with both values ('' when they are
        the same), then both shapes in full: the one text every architecture-mismatch message
        uses, so no message shows two identical shapes. names: how the two are called.

        >>> Shape(2, 4, 2, 64).differences(Shape(2, 4, 4, 64), ("AR", "MDM"))
        'KV heads per layer 2 (AR) vs 4 (MDM); AR: 2 layers x 4 heads (2 KV heads), MLP width 64; MDM: 2 layers x 4 heads (4 KV heads), MLP width 64'
        """
        words = {
            "n_layers": "layers",
            "n_heads": "heads per layer",
            "n_kv_heads": "KV heads per layer",
            "d_mlp": "MLP width",
            "n_experts": "experts per MoE layer",
            "moe_layers": "MoE layers",
            "shared_expert": "shared expert",
        }
        a, b = names
        diffs = [
            f"{word} {getattr(self, field)} ({a}) vs {getattr(other, field)} ({b})"
            for field, word in words.items()
            if getattr(self, field) != getattr(other, field)
        ]
        if not diffs:
            return ""
        return f"{', '.join(diffs)}; {a}: {self.describe()}; {b}: {other.describe()}"

    def check(self, name: str | Name) -> Name:
        """Parse `name` and check its indices against the model; UserError if out of range."""
        n = parse(name) if isinstance(name, str) else name
        if n.layer is not None and not 0 <= n.layer < self.n_layers:
            raise UserError(f"{n}: layer {n.layer} does not exist (layers 0..{self.n_layers - 1}).")
        if n.head is not None:
            kv = n.kind == "receiver" and n.port in ("k", "v")
            limit = self.n_kv_heads if kv else self.n_heads
            if not 0 <= n.head < limit:
                what = "key/value heads (grouped-query attention)" if kv else "heads"
                raise UserError(f"{n}: the model has {limit} {what} per layer (0..{limit - 1}).")
        if n.kind in ("expert", "shared_expert", "router", "routing") and not self.is_moe(n.layer):
            where = f"its MoE layers are {list(self.moe_layers)}" if self.moe_layers else "the model has none"
            raise UserError(f"{n}: layer {n.layer} is a dense MLP, not a mixture of experts ({where}).")
        if n.kind in ("neuron", "neurons") and self.is_moe(n.layer):
            raise UserError(
                f"{n}: layer {n.layer} is a mixture of experts; its units are L{n.layer}.expert0 .. "
                f"L{n.layer}.expert{self.n_experts - 1}, not MLP neurons."
            )
        if n.expert is not None and not 0 <= n.expert < self.n_experts:
            raise UserError(f"{n}: the MoE layers have {self.n_experts} experts (0..{self.n_experts - 1}).")
        if n.kind == "shared_expert" and not self.shared_expert:
            raise UserError(f"{n}: this model's MoE layers have no shared expert.")
        if n.neuron is not None and not 0 <= n.neuron < self.d_mlp:
            raise UserError(f"{n}: the MLP has {self.d_mlp} neurons (0..{self.d_mlp - 1}).")
        return n

    # --- listings, in forward order -------------------------------------------------------------

    def heads(self, layer: int) -> list[str]:
        return [f"L{layer}.H{h}" for h in range(self.n_heads)]

    def experts(self, layer: int) -> list[str]:
        """The expert nodes of an MoE layer (routed, then the shared expert); [] for a dense one."""
        if not self.is_moe(layer):
            return []
        return [f"L{layer}.expert{e}" for e in range(self.n_experts)] + (
            [f"L{layer}.shared_expert"] if self.shared_expert else []
        )

    def receivers(self, layer: int) -> list[str]:
        """The head-input receivers of a layer: q per query head, then k and v per KV head."""
        out = [f"L{layer}.H{h}.q" for h in range(self.n_heads)]
        out += [f"L{layer}.H{g}.k" for g in range(self.n_kv_heads)]
        out += [f"L{layer}.H{g}.v" for g in range(self.n_kv_heads)]
        return out

    def mlp_receivers(self, layer: int) -> list[str]:
        """The MLP-side receivers of a layer: its MLP, and first its router in an MoE layer."""
        return [f"L{layer}.router", f"L{layer}.mlp"] if self.is_moe(layer) else [f"L{layer}.mlp"]

    def mlp_senders(self, layer: int) -> list[str]:
        """The MLP-side senders of a layer: its MLP, or an MoE layer's experts."""
        return self.experts(layer) if self.is_moe(layer) else [f"L{layer}.mlp"]

    def components(self, *, neurons: bool = True, receivers: bool = True) -> list[str]:
        """Every canonical name of the model in forward order (neurons one by one)."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out.append(f"L{layer}.resid_pre")
            if receivers:
                out += self.receivers(layer)
            out += self.heads(layer)
            if self.is_moe(layer):
                out += [f"L{layer}.router", f"L{layer}.routing", *self.experts(layer)]
            out.append(f"L{layer}.mlp")
            if neurons and not self.is_moe(layer):
                out += [f"L{layer}.mlp.neuron{i}" for i in range(self.d_mlp)]
            out.append(f"L{layer}.resid_post")
        out.append("logits")
        return out

    def cacheable(self, *, patterns: bool = True) -> list[str]:
        """Names a cache can hold: neurons as one `L{l}.mlp.neurons` entry per layer."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out.append(f"L{layer}.resid_pre")
            if patterns:
                out += [f"L{layer}.H{h}.pattern" for h in range(self.n_heads)]
            out += self.heads(layer)
            if self.is_moe(layer):
                out += [f"L{layer}.router", f"L{layer}.routing", *self.experts(layer), f"L{layer}.mlp"]
            else:
                out += [f"L{layer}.mlp.neurons", f"L{layer}.mlp"]
            out.append(f"L{layer}.resid_post")
        out.append("logits")
        return out

    def senders(self) -> list[str]:
        """Nodes that write into the residual stream: embed, every head, every MLP (in an MoE
        layer its experts, whose sum is the layer's MLP output)."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out += self.heads(layer) + self.mlp_senders(layer)
        return out

    def all_receivers(self) -> list[str]:
        """Nodes that read from it: every head's q/k/v input, every MLP (an MoE layer's router
        and experts separately), and logits."""
        out = []
        for layer in range(self.n_layers):
            out += self.receivers(layer) + self.mlp_receivers(layer)
        return out + ["logits"]

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (MoE fields only where the model has MoE layers)."""
        out: dict[str, Any] = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_mlp": self.d_mlp,
        }
        if self.moe_layers:
            out.update(n_experts=self.n_experts, moe_layers=list(self.moe_layers), shared_expert=self.shared_expert)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Shape:
        """Inverse of `to_dict`; raises KeyError, TypeError or ValueError on a malformed dict."""
        return cls(
            int(data["n_layers"]),
            int(data["n_heads"]),
            int(data["n_kv_heads"]),
            int(data["d_mlp"]),
            n_experts=int(data.get("n_experts", 0)),
            moe_layers=tuple(int(x) for x in data.get("moe_layers", ())),
            shared_expert=bool(data.get("shared_expert", False)),
        )


NameFilter = str | Sequence[str] | Callable[[str], bool] | None

_GLOB_CHARS = set("*?[")


def select(spec: NameFilter, universe: Sequence[str], shape: Shape, what: str) -> list[str]:
    """The names of `universe` chosen by `spec`, in universe order.

    spec: None (all of `universe`), a name or glob ("L*.H3", "L1.*"), a list of names and globs,
    or a predicate on names. An exact name that is valid but outside `universe`, a malformed name,
    or a glob that matches nothing raises UserError (a typo must never give an empty result).
    """
    if spec is None:
        return list(universe)
    if callable(spec) and not isinstance(spec, str):
        return [n for n in universe if spec(n)]
    items = [spec] if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"{what}: expected names or globs, got {type(item).__name__} {item!r}.")
        if _GLOB_CHARS & set(item):
            hits = fnmatch.filter(universe, item)
            if not hits:
                raise UserError(f"{what}: {item!r} matches no name. Names look like: {NAME_FORMS}.")
            chosen.update(hits)
            continue
        name = str(shape.check(item))
        if name not in universe:
            raise UserError(f"{what}: {item!r} is not available here; choose from e.g. {_sample(universe)}.")
        chosen.add(name)
    return [n for n in universe if n in chosen]


def expand(spec: str | Iterable[str], shape: Shape, universe: Sequence[str], what: str) -> list[Name]:
    """`select` over `universe`, parsed: for interventions on globs such as "L2.H*"."""
    return [parse(n) for n in select(spec if isinstance(spec, str) else list(spec), universe, shape, what)]


def _sample(universe: Sequence[str]) -> str:
    head = list(universe[:4])
    return ", ".join(head) + (", ..." if len(universe) > 4 else "")
