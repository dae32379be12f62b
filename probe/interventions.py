"""Interventions: what to change in a forward pass, said in canonical names.

Two kinds of change, collected in an `Interventions` object (usually through the context manager
`ProbedModel.intervene()`, which applies them to every pass run inside it):

Node edits replace or shift a node's value everywhere downstream:
    set(name, value)          value broadcast to the node's shape
    add(name, value)
    zero(name)
    mean_ablate(name, reference)   the node's mean over a reference cache's batch (or batch and
                                   positions), e.g. over a dataset of clean runs
    patch(name, source)       the node's value in another run (`source` is a Cache)

    name: a canonical name or a glob ("L3.H*", "L*.mlp"); node kinds: `embed`, `L{l}.H{h}`,
    `L{l}.mlp`, `L{l}.mlp.neuron{i}` (exact names only; globs do not enumerate neurons),
    `L{l}.mlp.neurons`, `L{l}.resid_pre`, `L{l}.resid_post`, and a head's receiver
    `L{l}.H{h}.q|k|v` (the input that one head's query / key / value projection reads, in
    residual units: a change there reaches no other head). In a mixture-of-experts layer:
    `L{l}.expert{e}` and `L{l}.shared_expert` (what an expert writes: zero one, patch one),
    and `L{l}.routing` (the gate weights [B, T, n_experts]; `patch("L*.routing", clean)` fixes
    the routing to the clean run's and computes the experts under it).

Edge patches replace what one sender writes into one receiver's input and nothing else:
    patch_edge(sender, receiver, source)   sender in {embed, L{l}.H{h}, L{l}.mlp, and in MoE
        layers L{l}.expert{e}, L{l}.shared_expert}; receiver in {L{l}.H{h}.q|k|v, L{l}.mlp,
        L{l}.router (MoE), logits}, strictly downstream of the sender. The receiver reads
        its usual input plus (sender's value in `source` - sender's value in this run); every
        other path keeps the sender's real value.

Every edit takes `pos`: None (all positions), an int, a slice, a list of ints, or a bool mask
[T] or [B, T]; positions outside it keep their value. Values are checked against the node's shape
when the pass starts, and a mismatch is a UserError naming the node and both shapes.

    >>> with pm.intervene() as iv:                                   # doctest: +SKIP
    ...     iv.zero("L2.H5")
    ...     iv.patch("L4.H*", corrupted_cache, pos=-1)
    ...     iv.patch_edge("L1.H3", "L5.H0.k", corrupted_cache)
    ...     logits = pm(ids)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError
from probe.cache import Cache
from probe.names import Name, Shape, expand

Pos = int | slice | Sequence[int] | Int[Tensor, "*_n"] | Bool[Tensor, "*_batch _pos"] | None
Mode = Literal["set", "add"]

NODE_KINDS = (
    "embed",
    "head",
    "mlp",
    "neuron",
    "neurons",
    "resid_pre",
    "resid_post",
    "receiver",
    "expert",
    "shared_expert",
    "routing",
)
SENDER_KINDS = ("embed", "head", "mlp", "expert", "shared_expert")
EDGE_ENDS = (
    "senders are embed, L{l}.H{h}, L{l}.mlp (in MoE layers L{l}.expert{e}, L{l}.shared_expert); receivers are "
    "L{l}.H{h}.q|k|v, L{l}.mlp, L{l}.router (MoE layers), logits."
)


@dataclass(frozen=True)
class NodeEdit:
    """Replace (`set`) or shift (`add`) the value of `name` at positions `pos`."""

    name: Name
    mode: Mode
    value: Float[Tensor, "*_node"]
    pos: Pos = None


@dataclass(frozen=True)
class EdgePatch:
    """Receiver reads `value` (the sender's new value) in place of the sender's value in this run."""

    sender: Name
    receiver: Name
    value: Float[Tensor, "*_node"]
    pos: Pos = None


def node_universe(shape: Shape) -> list[str]:
    """Names node edits accept through globs (neurons only as `L{l}.mlp.neurons`)."""
    out = ["embed"]
    for layer in range(shape.n_layers):
        out.append(f"L{layer}.resid_pre")
        out += shape.receivers(layer)
        out += shape.heads(layer)
        if shape.is_moe(layer):
            out += [f"L{layer}.routing", *shape.experts(layer), f"L{layer}.mlp", f"L{layer}.resid_post"]
        else:
            out += [f"L{layer}.mlp.neurons", f"L{layer}.mlp", f"L{layer}.resid_post"]
    return out


def position_mask(pos: Pos, batch: int, length: int, device: torch.device) -> Bool[Tensor, "#batch pos"] | None:
    """Bool [B, T] (or [1, T]) selecting `pos`; None means every position."""
    if pos is None:
        return None
    if isinstance(pos, Tensor) and pos.dtype == torch.bool:
        if pos.shape not in ((length,), (batch, length), (1, length)):
            raise UserError(
                f"a boolean position mask must be [T] = [{length}] or [B, T] = [{batch}, {length}]; got {list(pos.shape)}."
            )
        return pos.to(device).reshape(-1, length)
    mask = torch.zeros(1, length, dtype=torch.bool, device=device)
    try:
        index = pos.tolist() if isinstance(pos, Tensor) else pos
        mask[0, index] = True
    except (IndexError, TypeError) as err:
        raise UserError(f"position {pos!r} does not select positions of a length-{length} input ({err}).") from None
    return mask


class Interventions:
    """An ordered list of node edits and edge patches for one model (see the module docstring)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.universe = node_universe(shape)
        self.edits: list[NodeEdit] = []
        self.edges: list[EdgePatch] = []

    def __len__(self) -> int:
        return len(self.edits) + len(self.edges)

    # --- node edits -------------------------------------------------------------------------

    def _names(self, names: str | Sequence[str]) -> list[Name]:
        items = [names] if isinstance(names, str) else list(names)
        out: list[Name] = []
        for item in items:
            if isinstance(item, str) and not set("*?[") & set(item):
                n = self.shape.check(item)
                if n.kind not in NODE_KINDS:
                    raise UserError(
                        f"cannot intervene on {item!r}: interventions act on {', '.join(NODE_KINDS)} names "
                        "(logits, patterns and router logits are outputs; set L{l}.routing to change routing)."
                    )
                out.append(n)
            else:
                out += expand(item, self.shape, self.universe, "intervention")
        return out

    def set(self, names: str | Sequence[str], value: Float[Tensor, "*_node"] | float, pos: Pos = None) -> Interventions:
        """Replace the value of every node in `names` by `value` (broadcast to its shape)."""
        for n in self._names(names):
            self.edits.append(NodeEdit(n, "set", _tensor(value), pos))
        return self

    def add(self, names: str | Sequence[str], value: Float[Tensor, "*_node"] | float, pos: Pos = None) -> Interventions:
        """Add `value` to every node in `names`."""
        for n in self._names(names):
            self.edits.append(NodeEdit(n, "add", _tensor(value), pos))
        return self

    def zero(self, names: str | Sequence[str], pos: Pos = None) -> Interventions:
        """Set every node in `names` to zero (a head: as if its output weights were zero)."""
        return self.set(names, 0.0, pos)

    def patch(self, names: str | Sequence[str], source: Cache, pos: Pos = None) -> Interventions:
        """Set every node in `names` to its value in `source` (a cache of another run)."""
        for n in self._names(names):
            self.edits.append(NodeEdit(n, "set", _from_cache(source, n), pos))
        return self

    def mean_ablate(
        self,
        names: str | Sequence[str],
        reference: Cache,
        pos: Pos = None,
        *,
        over: Literal["batch", "all"] = "batch",
        mask: Shaped[Tensor, "_batch _pos"] | None = None,
    ) -> Interventions:
        """Set every node in `names` to its mean over `reference`.

        over="batch": the mean over examples at each position (needs inputs of the same length);
        over="all": one mean over examples and positions. `mask` [B, T] (1 = real token) keeps
        padding out of the mean.
        """
        if over not in ("batch", "all"):
            raise UserError(f"mean_ablate over={over!r}; use 'batch' or 'all'.")
        for n in self._names(names):
            x = _from_cache(reference, n).float()
            w = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.device).float()
            if w.shape != x.shape[:2]:
                raise UserError(
                    f"mean_ablate mask is {list(w.shape)}; the reference holds [B, T] = {list(x.shape[:2])}."
                )
            w = w.reshape(*w.shape, *([1] * (x.ndim - 2)))
            dims = (0,) if over == "batch" else (0, 1)
            mean = (x * w).sum(dims, keepdim=True) / w.sum(dims, keepdim=True).clamp(min=1)
            self.edits.append(NodeEdit(n, "set", mean.to(_from_cache(reference, n).dtype), pos))
        return self

    # --- edges ------------------------------------------------------------------------------

    def patch_edge(
        self, sender: str, receiver: str, source: Cache | Float[Tensor, "*_node"], pos: Pos = None
    ) -> Interventions:
        """Replace what `sender` writes into `receiver`'s input by its value in `source`.

        `source` is a cache of another run, or the sender's new value itself (zeros: remove the
        edge). Globs are accepted on both sides ("L0.H*", "L3.H*.q") and patch every pair in
        which the receiver is downstream of the sender.
        """
        senders = self._edge_names(sender, self.shape.senders(), "edge sender")
        receivers = self._edge_names(receiver, self.shape.all_receivers(), "edge receiver")
        pairs = [(s, r) for s in senders for r in receivers if downstream(s, r)]
        if not pairs:
            raise UserError(
                f"edge {sender} -> {receiver}: no receiver there reads the sender (receivers must be downstream)."
            )
        values = {s: source if isinstance(source, Tensor) else _from_cache(source, s) for s, _ in pairs}
        for s, r in pairs:
            self.edges.append(EdgePatch(s, r, values[s], pos))
        return self

    def patch_edges(
        self, edges: Sequence[str | tuple[str, str]], source: Cache | Float[Tensor, "*_node"], pos: Pos = None
    ) -> Interventions:
        """`patch_edge` for many edges at once: "sender->receiver" names (or pairs), no globs.

        The same as calling `patch_edge(sender, receiver, source, pos)` for each edge, without
        parsing each name again (a faithfulness pass on a 70k-edge graph patches tens of
        thousands of edges). Raises UserError for a name that is not a sender or receiver of
        this model, or a pair whose receiver does not read the sender.
        """
        pairs = [tuple(e.split("->", 1)) if isinstance(e, str) else tuple(e) for e in edges]
        if any(len(p) != 2 for p in pairs):
            bad = next(e for e, p in zip(edges, pairs, strict=True) if len(p) != 2)
            raise UserError(f"edge {bad!r} is not of the form 'sender->receiver'.")
        senders = {s: None for s, _ in pairs}
        receivers = {r: None for _, r in pairs}
        known_s, known_r = set(self.shape.senders()), set(self.shape.all_receivers())
        for names, known, what in ((senders, known_s, "sender"), (receivers, known_r, "receiver")):
            for name in names:
                if name not in known:
                    raise UserError(f"edge {what} {name!r}: {EDGE_ENDS}")
                names[name] = self.shape.check(name)
        values = {s: source if isinstance(source, Tensor) else _from_cache(source, senders[s]) for s in senders}
        for s, r in pairs:
            sender, receiver = senders[s], receivers[r]
            if not downstream(sender, receiver):
                raise UserError(
                    f"edge {s} -> {r}: the receiver does not read the sender (receivers must be downstream)."
                )
            self.edges.append(EdgePatch(sender, receiver, values[s], pos))
        return self

    def _edge_names(self, spec: str, universe: list[str], what: str) -> list[Name]:
        if not set("*?[") & set(spec):
            name = str(self.shape.check(spec))
            if name not in universe:
                raise UserError(f"{what} {spec!r}: {EDGE_ENDS}")
        return expand(spec, self.shape, universe, what)


def downstream(sender: Name, receiver: Name) -> bool:
    """True if `receiver` reads the residual stream after `sender` has written to it."""
    if receiver.kind == "logits" or sender.kind == "embed":
        return True
    assert sender.layer is not None and receiver.layer is not None
    if receiver.kind in ("mlp", "router"):  # an MoE layer's router reads what its MLP reads
        return sender.layer < receiver.layer or (sender.kind == "head" and sender.layer == receiver.layer)
    return sender.layer < receiver.layer


def _tensor(value: Tensor | float) -> Tensor:
    return value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))


def _from_cache(source: Cache, name: Name) -> Tensor:
    if not isinstance(source, Cache):
        raise UserError(f"patch sources are Cache objects (from run_with_cache); got {type(source).__name__}.")
    return source[str(name)].detach()
