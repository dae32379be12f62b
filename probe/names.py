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

Edge destinations (what a head reads): `L{l}.H{h}.q` for query head h, and `L{l}.H{g}.k`,
`L{l}.H{g}.v` for key/value head g. Under grouped-query attention (n_kv_heads < n_heads) keys and
values exist once per KV head, so g counts KV heads (query heads g*r .. g*r + r - 1 share it, with
r = n_heads / n_kv_heads); with n_kv_heads == n_heads, g is the head itself. A receiver's input is
measured in residual-stream units: it is the residual stream that head reads (before its layer
norm), split into a private copy per receiver. The other receivers are `L{l}.mlp` (the MLP's input)
and `logits` (the input of the final norm).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ar2mdm.common.errors import UserError

Kind = Literal["embed", "resid_pre", "resid_post", "head", "mlp", "neuron", "neurons", "pattern", "receiver", "logits"]

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
)

NAME_FORMS = (
    "embed, logits, L{l}.resid_pre, L{l}.resid_post, L{l}.H{h}, L{l}.mlp, L{l}.mlp.neuron{i}, "
    "L{l}.mlp.neurons, L{l}.H{h}.pattern, L{l}.H{h}.q|k|v"
)


@dataclass(frozen=True)
class Name:
    """A parsed canonical name. `port` is "q", "k" or "v" for head receivers, else None."""

    kind: Kind
    layer: int | None = None
    head: int | None = None
    neuron: int | None = None
    port: str | None = None

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
        if kind in ("resid_pre", "resid_post", "mlp", "neurons"):
            return Name(kind, layer=groups[0])
        if kind == "neuron":
            return Name(kind, layer=groups[0], neuron=groups[1])
        if kind in ("head", "pattern"):
            return Name(kind, layer=groups[0], head=groups[1])
        return Name(kind, layer=groups[0], head=groups[1], port=str(groups[2]))
    raise UserError(f"{name!r} is not a component name. Names look like: {NAME_FORMS}.")


@dataclass(frozen=True)
class Shape:
    """The sizes that decide which names exist."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int

    def describe(self) -> str:
        """The shape in words, every field shown.

        >>> Shape(2, 4, 2, 64).describe()
        '2 layers x 4 heads (2 KV heads), MLP width 64'
        """
        return f"{self.n_layers} layers x {self.n_heads} heads ({self.n_kv_heads} KV heads), MLP width {self.d_mlp}"

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
        if n.neuron is not None and not 0 <= n.neuron < self.d_mlp:
            raise UserError(f"{n}: the MLP has {self.d_mlp} neurons (0..{self.d_mlp - 1}).")
        return n

    # --- listings, in forward order -------------------------------------------------------------

    def heads(self, layer: int) -> list[str]:
        return [f"L{layer}.H{h}" for h in range(self.n_heads)]

    def receivers(self, layer: int) -> list[str]:
        """The head-input receivers of a layer: q per query head, then k and v per KV head."""
        out = [f"L{layer}.H{h}.q" for h in range(self.n_heads)]
        out += [f"L{layer}.H{g}.k" for g in range(self.n_kv_heads)]
        out += [f"L{layer}.H{g}.v" for g in range(self.n_kv_heads)]
        return out

    def components(self, *, neurons: bool = True, receivers: bool = True) -> list[str]:
        """Every canonical name of the model in forward order (neurons one by one)."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out.append(f"L{layer}.resid_pre")
            if receivers:
                out += self.receivers(layer)
            out += self.heads(layer)
            out.append(f"L{layer}.mlp")
            if neurons:
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
            out += [f"L{layer}.mlp.neurons", f"L{layer}.mlp"]
            out.append(f"L{layer}.resid_post")
        out.append("logits")
        return out

    def senders(self) -> list[str]:
        """Nodes that write into the residual stream: embed, every head, every MLP."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out += self.heads(layer) + [f"L{layer}.mlp"]
        return out

    def all_receivers(self) -> list[str]:
        """Nodes that read from it: every head's q/k/v input, every MLP, and logits."""
        out = []
        for layer in range(self.n_layers):
            out += self.receivers(layer) + [f"L{layer}.mlp"]
        return out + ["logits"]


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
