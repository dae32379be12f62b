"""The node edits and edge patches of one forward pass, grouped by the site that applies them.

`PassEdits` is what `probe.engine.Pass` consults at every site: the edits of a node (set or add,
at some positions) in the order they were made, and the edge patches whose deltas a sender queues
(`send`) for its receivers to add to their private inputs (`receive`). Values and positions are
checked when the pass is built, so a bad patch fails before the backend runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ar2mdm.common.errors import UserError
from probe.interventions import EdgePatch, NodeEdit, position_mask
from probe.layout import FrozenNorm
from probe.names import Name, Shape


def node_shape(name: Name, shape: Shape, batch: int, length: int, d_model: int) -> tuple[int, ...]:
    """The shape of a node's value in a [batch, length] run."""
    if name.kind == "neuron":
        return (batch, length)
    if name.kind == "neurons":
        return (batch, length, shape.d_mlp)
    if name.kind in ("router", "routing"):
        return (batch, length, shape.n_experts)
    return (batch, length, d_model)


class PassEdits:
    """Edits by the name of the tensor they change (a neuron's edits under its layer's neuron
    vector), edge patches by sender, queued edge deltas by receiver, position masks."""

    def __init__(
        self,
        shape: Shape,
        d_model: int,
        edits: Sequence[NodeEdit],
        edges: Sequence[EdgePatch],
        batch: int,
        length: int,
        device: torch.device,
    ) -> None:
        self.shape, self.d_model = shape, d_model
        self.B, self.T, self.device = batch, length, device
        self.by_name: dict[str, list[NodeEdit]] = defaultdict(list)
        for edit in edits:
            self.check_value(edit.name, edit.value, "value")
            self.by_name[self.key(edit.name)].append(edit)
        self.edges_from: dict[str, list[EdgePatch]] = defaultdict(list)
        checked: set[tuple] = set()
        for edge in edges:
            key = (str(edge.sender), _tensor_key(edge.value))
            if key not in checked:  # one check per sender and value, not per edge
                self.check_value(edge.sender, edge.value, "edge value")
                checked.add(key)
            self.edges_from[str(edge.sender)].append(edge)
        # receiver -> [(sender, group, delta)]; a group is one set of positions (one patch of a
        # stacked pass): per group, the senders sent so far, their deltas and their running sum
        self.incoming: dict[str, list[tuple[str, int | None, Tensor]]] = defaultdict(list)
        self.sent: dict[int | None, dict[str, Tensor]] = defaultdict(dict)
        self.running: dict[int | None, Tensor] = {}
        self.mixed: set[int | None] = set()  # groups where one sender has two values
        self.masks: dict[int, Tensor | None] = {}
        for op in [*edits, *edges]:
            self.mask(op.pos)  # a bad position fails here, before the backend runs

    @staticmethod
    def key(name: Name) -> str:
        """The tensor an edit of `name` changes (single neurons: their layer's neuron vector)."""
        if name.kind == "neuron":
            return f"L{name.layer}.mlp.neurons"
        return str(name)

    def edited(self, name: str) -> bool:
        return name in self.by_name

    def sends(self, name: str) -> bool:
        return name in self.edges_from

    def check_value(self, name: Name, value: Float[Tensor, "*_node"], what: str) -> None:
        expected = node_shape(name, self.shape, self.B, self.T, self.d_model)
        try:
            fits = torch.broadcast_shapes(tuple(value.shape), expected) == expected
        except RuntimeError:
            fits = False
        if not fits:
            raise UserError(
                f"the {what} for {name} has shape {list(value.shape)}; it must broadcast to "
                f"{list(expected)} (this run's [batch, pos, ...]). A patch source must come from "
                "inputs of the same batch size and length."
            )

    def mask(self, pos) -> Bool[Tensor, "#batch pos"] | None:
        key = id(pos)
        if key not in self.masks:
            self.masks[key] = position_mask(pos, self.B, self.T, self.device)
        return self.masks[key]

    def apply(
        self, x: Float[Tensor, "batch pos *rest"], mode: str, value: Float[Tensor, "*_node"], pos
    ) -> Float[Tensor, "batch pos *rest"]:
        """x with `value` set or added at positions `pos`."""
        v = value.to(device=x.device, dtype=x.dtype)
        new = v.expand_as(x).clone() if mode == "set" else x + v
        mask = self.mask(pos)
        if mask is None:
            return new
        return torch.where(mask.reshape(*mask.shape, *([1] * (x.ndim - 2))), new, x)

    def edit(self, name: str, x: Float[Tensor, "batch pos *rest"]) -> Float[Tensor, "batch pos *rest"]:
        for e in self.by_name.get(name, ()):
            x = self.apply(x, e.mode, e.value, e.pos)
        return x

    def edit_neurons(self, layer: int, x: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        """Edits of the whole neuron vector and of single neurons, in the order they were made."""
        for e in self.by_name.get(f"L{layer}.mlp.neurons", ()):
            if e.name.kind == "neurons":
                x = self.apply(x, e.mode, e.value, e.pos)
            else:
                i = e.name.neuron
                column = self.apply(x[..., i], e.mode, e.value, e.pos)
                x = torch.cat([x[..., :i], column[..., None], x[..., i + 1 :]], dim=-1)
        return x

    def send(
        self,
        sender: str,
        old: Float[Tensor, "batch pos d_model"],
        norm: FrozenNorm | None = None,
        whole: Float[Tensor, "batch pos d_model"] | None = None,
    ) -> None:
        """Queue the deltas that edge patches from `sender` add to their receivers' inputs.

        old: the sender's value in this run; norm: the post-norm between the sender and the
        residual stream (None: none); whole: the sublayer output `old` is a summand of (heads).
        """
        # Edges from one sender with the same new value and positions (a circuit's complement:
        # thousands of edges) deliver the same delta: it is computed once and shared.
        computed: dict[tuple, Tensor] = {}
        for edge in self.edges_from.get(sender, ()):
            group = id(edge.pos) if edge.pos is not None else None
            key = (_tensor_key(edge.value), group)
            delta = computed.get(key)
            if delta is None:
                new = self.apply(old, "set", edge.value, edge.pos)
                if norm is None:
                    delta = new - old
                elif whole is None:  # the sender is the whole sublayer output (an MLP)
                    delta = norm.linear(new, new) - norm.linear(old, old)
                else:
                    changed = whole - old + new
                    delta = norm.linear(changed, changed) - norm.linear(whole, whole)
                computed[key] = delta
                if sender in self.sent[group]:
                    self.mixed.add(group)
                else:
                    self.sent[group][sender] = delta
                    self.running[group] = delta if group not in self.running else self.running[group] + delta
            self.incoming[str(edge.receiver)].append((sender, group, delta))

    def receive(self, receiver: str, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """x plus the deltas of every edge patched into `receiver`.

        Per group, the sum runs over the patched senders, or, when they are most of the senders
        sent so far (every one of which is upstream of the receiver), as the group's running sum
        minus the unpatched ones: a faithfulness pass on a large graph costs at most half an
        addition per edge.
        """
        entries = self.incoming.pop(receiver, ())
        if not entries:
            return x
        by_group: dict[int | None, list[tuple[str, Tensor]]] = defaultdict(list)
        for sender, group, delta in entries:
            by_group[group].append((sender, delta))
        total: Tensor | None = None
        for group, items in by_group.items():
            sent = self.sent[group]
            if group not in self.mixed and 2 * len(items) > len(sent):
                patched = {sender for sender, _ in items}
                part = self.running[group]
                left_out = [d for s, d in sent.items() if s not in patched]
                if left_out:
                    part = part - torch.stack(left_out).sum(0) if len(left_out) > 1 else part - left_out[0]
            else:
                part = items[0][1].clone() if len(items) > 1 else items[0][1]
                for _, delta in items[1:]:
                    part.add_(delta)  # in place on one buffer: no tensor per edge
            total = part if total is None else total + part
        assert total is not None
        return x + total


def _tensor_key(value: Tensor) -> tuple:
    """What identifies a tensor's contents without reading them: storage, offset, shape, strides."""
    return (value.data_ptr(), value.storage_offset(), tuple(value.shape), value.stride(), value.dtype, value.device)
