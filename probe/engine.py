"""One forward pass, backend-neutral: what to record, what to change, where to keep gradients.

`Pass` turns a request in canonical names (names to cache, node edits, edge patches, gradient
targets) into one function per backend site (see `probe.backends.base`). All the interpretation
lives here, once, for every backend:

1. Head outputs. At site z (input of the output projection, [B, T, n_heads * d_head]) head h's
   output is z_h @ W_O[:, h]^T, [B, T, d_model]; the heads and the projection's bias sum to the
   projection's output. Edits of heads are applied at the projection's output as
   (new value - old value), so they reach the model exactly as a change of that head would.
2. Receivers. A head's q, k or v input is the residual stream before the block's first norm. To
   give one head a private input (an edge patch or a receiver edit) the core rebuilds that
   projection for every head from per-head copies of the residual stream:
   norm(x_h) @ W_h^T + b_h. The rebuilt output equals the original to float rounding, and
   gradients reach each copy separately. A receiver that is only differentiated needs no copy:
   its gradient is J_norm(x)^T W_h^T g_h, g_h being the gradient at head h's slice of the
   projection output, computed after the backward pass. An MLP's input is replaced at the input of its norm,
   which leaves the residual skip alone; `logits`' input is the input of the final norm.
3. Post-norms (Gemma). What a sender writes into the residual stream there is norm(output), so an
   edge patch adds norm(a - old + new) - norm(a) to the receiver, a being the layer's whole
   attention (or MLP) output: exactly the change the sender's replacement would make.
4. Gradients. Each requested point keeps its gradient (`retain_grad`); where nothing upstream
   needs a gradient, the first point becomes a leaf, so the backward pass stops there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.errors import UserError
from probe.backends.base import Site, SiteFn
from probe.cache import Cache
from probe.interventions import EdgePatch, NodeEdit, position_mask
from probe.layout import FrozenNorm, Layout
from probe.names import Name, Shape, parse


@dataclass
class Request:
    """What one pass must do. Names are canonical strings, already validated."""

    record: set[str] = field(default_factory=set)
    edits: list[NodeEdit] = field(default_factory=list)
    edges: list[EdgePatch] = field(default_factory=list)
    grad_outputs: set[str] = field(default_factory=set)
    grad_inputs: set[str] = field(default_factory=set)
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None


class Core:
    """What the engine needs to know about one model: its layout, sizes and norms."""

    def __init__(self, layout: Layout, shape: Shape) -> None:
        self.layout = layout
        self.shape = shape
        self.ln1 = [FrozenNorm(b.ln1) for b in layout.blocks]
        self.attn_post = [FrozenNorm(b.attn_post_norm) if b.attn_post_norm is not None else None for b in layout.blocks]
        self.mlp_post = [FrozenNorm(b.mlp_post_norm) if b.mlp_post_norm is not None else None for b in layout.blocks]
        self.final = FrozenNorm(layout.final_norm)

    def require_exact_norms(self, norms: Iterable[FrozenNorm | None], why: str) -> None:
        for norm in norms:
            if norm is not None and not norm.exact:
                raise UserError(
                    f"{why} needs to evaluate the model's {type(norm.module).__name__} on its own, "
                    "and that norm is not an RMSNorm or LayerNorm the probe can reproduce."
                )


def _node_shape(name: Name, shape: Shape, batch: int, length: int, d_model: int) -> tuple[int, ...]:
    if name.kind == "neuron":
        return (batch, length)
    if name.kind == "neurons":
        return (batch, length, shape.d_mlp)
    return (batch, length, d_model)


class Pass:
    """Site functions for one forward pass over a [B, T] input, and what they collected."""

    def __init__(self, core: Core, request: Request, batch: int, length: int, device: torch.device) -> None:
        self.core = core
        self.req = request
        self.B, self.T = batch, length
        self.device = device
        self.n_layers = core.shape.n_layers
        self.d_model = core.layout.d_model
        self.record: dict[str, Tensor] = {}
        self.grad_points: dict[Site, Tensor] = {}
        self.resid_pre: dict[int, Tensor] = {}
        self.heads: dict[int, Tensor] = {}
        self.incoming: dict[str, list[Tensor]] = defaultdict(list)  # receiver -> deltas

        # Group edits and edges by the site that applies them.
        self.edits: dict[str, list[NodeEdit]] = defaultdict(list)
        for edit in request.edits:
            self._check_value(edit.name, edit.value, "value")
            self.edits[self._edit_key(edit.name)].append(edit)
        self.edges_from: dict[str, list[EdgePatch]] = defaultdict(list)
        for edge in request.edges:
            self._check_value(edge.sender, edge.value, "edge value")
            self.edges_from[str(edge.sender)].append(edge)
        self.masks: dict[int, Tensor | None] = {}
        for op in [*request.edits, *request.edges]:
            self._mask(op.pos)  # a bad position fails here, before the backend runs

        # Layers whose head outputs are needed (recorded, edited or sending an edge) and
        # (port, layer) pairs whose receivers need private inputs.
        heads = [parse(n) for n in request.record] + [e.name for e in request.edits]
        heads += [e.sender for e in request.edges]
        self.head_layers = {n.layer for n in heads if n.kind == "head"}
        self.split: set[tuple[str, int]] = set()
        for r in [e.receiver for e in request.edges] + [e.name for e in request.edits]:
            if r.kind == "receiver":
                self.split.add((r.port, r.layer))
        # (port, layer) pairs whose receivers are only differentiated: gradients come from the
        # projection output's gradient (see the module docstring), no per-head copies.
        self.taps: set[tuple[str, int]] = set()
        for n in request.grad_inputs:
            r = parse(n)
            if r.kind == "receiver" and (r.port, r.layer) not in self.split:
                self.taps.add((r.port, r.layer))
        if self.split or self.taps:
            core.require_exact_norms((core.ln1[layer] for _, layer in self.split | self.taps), "giving one head its own input")
        if any(e.sender.kind in ("head", "mlp") for e in request.edges):
            core.require_exact_norms(core.attn_post + core.mlp_post, "an edge patch on a post-norm model")

    # --- bookkeeping --------------------------------------------------------------------------

    @staticmethod
    def _edit_key(name: Name) -> str:
        if name.kind == "neuron":
            return f"L{name.layer}.mlp.neurons"
        return str(name)

    def _check_value(self, name: Name, value: Tensor, what: str) -> None:
        expected = _node_shape(name, self.core.shape, self.B, self.T, self.d_model)
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

    def _mask(self, pos) -> Tensor | None:
        key = id(pos)
        if key not in self.masks:
            self.masks[key] = position_mask(pos, self.B, self.T, self.device)
        return self.masks[key]

    def _apply(self, x: Tensor, mode: str, value: Tensor, pos) -> Tensor:
        v = value.to(device=x.device, dtype=x.dtype)
        new = v.expand_as(x).clone() if mode == "set" else x + v
        mask = self._mask(pos)
        if mask is None:
            return new
        return torch.where(mask.reshape(*mask.shape, *([1] * (x.ndim - 2))), new, x)

    def _edit(self, name: str, x: Tensor) -> Tensor:
        for e in self.edits.get(name, ()):
            x = self._apply(x, e.mode, e.value, e.pos)
        return x

    def _store(self, name: str, x: Tensor) -> None:
        if name in self.req.record:
            self.record[name] = x.detach().to(device=self.req.device, dtype=self.req.dtype)

    def _track(self, site: Site, x: Tensor) -> Tensor:
        """Keep x's gradient (making it a leaf if nothing upstream needs one); return x to use."""
        if not torch.is_grad_enabled():
            return x
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        self.grad_points[site] = x
        return x

    def _send(self, sender: str, old: Tensor, norm: FrozenNorm | None = None, whole: Tensor | None = None) -> None:
        """Queue the deltas that edge patches from `sender` add to their receivers' inputs.

        old: the sender's value in this run; norm: the post-norm between the sender and the
        residual stream (None: none); whole: the sublayer output `old` is a summand of (heads).
        """
        for edge in self.edges_from.get(sender, ()):
            new = self._apply(old, "set", edge.value, edge.pos)
            if norm is None:
                delta = new - old
            elif whole is None:  # the sender is the whole sublayer output (an MLP)
                delta = norm.linear(new, new) - norm.linear(old, old)
            else:
                changed = whole - old + new
                delta = norm.linear(changed, changed) - norm.linear(whole, whole)
            self.incoming[str(edge.receiver)].append(delta)

    def _receive(self, receiver: str, x: Tensor) -> Tensor:
        for delta in self.incoming.pop(receiver, ()):
            x = x + delta
        return x

    # --- site functions -----------------------------------------------------------------------

    def site_fns(self) -> dict[Site, SiteFn]:
        fns: dict[Site, SiteFn] = {}
        rec, req = self.req.record, self.req
        outs = {parse(n) for n in req.grad_outputs}
        ins = {parse(n) for n in req.grad_inputs}
        edge_senders = set(self.edges_from)
        incoming = {str(e.receiver) for e in req.edges}

        def wants(*names: str) -> bool:
            return any(n in rec or n in self.edits or n in edge_senders for n in names)

        for layer in range(self.n_layers):
            pre = f"L{layer}.resid_pre"
            heads = [f"L{layer}.H{h}" for h in range(self.core.shape.n_heads)]
            need_pre = wants(pre) or any(p == layer for _, p in self.split | self.taps)
            need_pre |= any(o.kind == "resid_pre" and o.layer == layer for o in outs)
            if layer == 0:
                need_pre |= wants("embed") or Name("embed") in outs
            if need_pre:
                fns[("resid_pre", layer)] = self._fn_resid_pre(layer, Name("embed") in outs, Name("resid_pre", layer) in outs)
            for port in "qkv":
                if (port, layer) in self.split:
                    fns[(port, layer)] = self._fn_split(port, layer, ins)
                elif (port, layer) in self.taps:
                    fns[(port, layer)] = self._fn_tap(port, layer)
            if layer in self.head_layers:
                fns[("z", layer)] = self._fn_z(layer)
            if layer in self.head_layers or any(o.kind == "head" and o.layer == layer for o in outs):
                fns[("attn_out", layer)] = self._fn_attn_out(layer, any(o.kind == "head" and o.layer == layer for o in outs))
            if any(f"{h}.pattern" in rec for h in heads):
                fns[("pattern", layer)] = self._fn_pattern(layer)
            mlp = f"L{layer}.mlp"
            if mlp in incoming or Name("mlp", layer) in ins:
                fns[("mlp_in", layer)] = self._fn_mlp_in(layer, Name("mlp", layer) in ins)
            neurons = f"L{layer}.mlp.neurons"
            grad_neurons = any(o.kind in ("neuron", "neurons") and o.layer == layer for o in outs)
            if wants(neurons) or grad_neurons:
                fns[("neurons", layer)] = self._fn_plain("neurons", layer, neurons, grad_neurons)
            if wants(mlp) or Name("mlp", layer) in outs:
                fns[("mlp_out", layer)] = self._fn_mlp_out(layer, Name("mlp", layer) in outs)
            post = f"L{layer}.resid_post"
            if wants(post) or Name("resid_post", layer) in outs:
                fns[("resid_post", layer)] = self._fn_plain("resid_post", layer, post, Name("resid_post", layer) in outs)
        if "logits" in incoming or Name("logits") in ins:
            fns[("final", self.n_layers)] = self._fn_final(Name("logits") in ins)
        return fns

    def _fn_resid_pre(self, layer: int, grad_embed: bool, grad_pre: bool) -> SiteFn:
        def fn(x: Tensor) -> Tensor:
            if layer == 0:
                x = self._edit("embed", x)
                self._store("embed", x)
                self._send("embed", x)
                if grad_embed:
                    x = self._track(("embed", 0), x)
            name = f"L{layer}.resid_pre"
            x = self._edit(name, x)
            self._store(name, x)
            if grad_pre:
                x = self._track(("resid_pre", layer), x)
            self.resid_pre[layer] = x
            return x

        return fn

    def _fn_split(self, port: str, layer: int, ins: set[Name]) -> SiteFn:
        core = self.core
        n = core.shape.n_heads if port == "q" else core.shape.n_kv_heads
        d_head = core.layout.d_head
        weight, bias = core.layout.qkv_weight(layer, port)
        norm = core.ln1[layer]
        grad = any(r.kind == "receiver" and r.layer == layer and r.port == port for r in ins)

        def fn(out: Tensor) -> Tensor:
            x = self.resid_pre[layer]
            copies = []
            for h in range(n):
                name = f"L{layer}.H{h}.{port}"
                copies.append(self._edit(name, self._receive(name, x)))
            xs = torch.stack(copies, dim=2)  # [B, T, n, D]
            if grad:
                xs = self._track((port, layer), xs)
            normed = norm.linear(xs, xs)
            if norm.bias is not None:
                normed = normed + norm.bias
            w = weight.reshape(n, d_head, -1).to(normed.dtype)
            proj = torch.einsum("btnd,ned->btne", normed, w)
            if bias is not None:
                proj = proj + bias.reshape(n, d_head)
            return proj.reshape(out.shape).to(out.dtype)

        return fn

    def _fn_tap(self, port: str, layer: int) -> SiteFn:
        """Keep the projection output's gradient (its receivers' gradients derive from it)."""

        def fn(out: Tensor) -> Tensor:
            return self._track((port, layer), out)

        return fn

    def _tap_gradient(self, port: str, layer: int) -> Tensor:
        """[B, T, n, d_model] gradient w.r.t. each head's own copy of its input: J^T W_h^T g_h."""
        core = self.core
        n = core.shape.n_heads if port == "q" else core.shape.n_kv_heads
        d_head = core.layout.d_head
        weight, _ = core.layout.qkv_weight(layer, port)
        t = self.grad_points[(port, layer)]
        g = torch.zeros_like(t) if t.grad is None else t.grad
        dtype = torch.promote_types(g.dtype, torch.float32)
        w = weight.reshape(n, d_head, -1).to(dtype)
        u = torch.einsum("btne,ned->btnd", g.reshape(*g.shape[:2], n, d_head).to(dtype), w)
        x = self.resid_pre[layer].detach()
        return core.ln1[layer].vjp(x[:, :, None], u).to(g.dtype)

    def _fn_z(self, layer: int) -> SiteFn:
        core = self.core
        H, dh = core.shape.n_heads, core.layout.d_head
        w_o = core.layout.o_weight(layer)

        def fn(z: Tensor) -> None:
            zh = z.reshape(*z.shape[:-1], H, dh)
            heads = torch.einsum("btnh,dnh->btnd", zh, w_o.reshape(-1, H, dh))
            self.heads[layer] = heads
            return None

        return fn

    def _fn_attn_out(self, layer: int, grad: bool) -> SiteFn:
        H = self.core.shape.n_heads
        norm = self.core.attn_post[layer]

        def fn(a: Tensor) -> Tensor | None:
            heads = self.heads.get(layer)
            changed = False
            if heads is not None:
                current = {}
                for h in range(H):
                    name = f"L{layer}.H{h}"
                    if name in self.edits:
                        current[h] = self._edit(name, heads[:, :, h])
                if current:
                    a = a + sum(current[h] - heads[:, :, h] for h in current)
                    changed = True
                self._store_heads(layer, heads, current)
                for h in range(H):
                    name = f"L{layer}.H{h}"
                    if name in self.edges_from:
                        old = current.get(h, heads[:, :, h])
                        self._send(name, old, norm, a)
            if grad:
                tracked = self._track(("attn_out", layer), a)
                changed = changed or tracked is not a
                a = tracked
            return a if changed else None

        return fn

    def _store_heads(self, layer: int, heads: Tensor, edited: dict[int, Tensor]) -> None:
        """Record the requested heads' values as the model used them (after edits)."""
        wanted = [h for h in range(self.core.shape.n_heads) if f"L{layer}.H{h}" in self.req.record]
        if not wanted:
            return
        if edited:
            heads = torch.stack([edited.get(h, heads[:, :, h]) for h in range(heads.shape[2])], dim=2)
        stored = heads.detach().to(device=self.req.device, dtype=self.req.dtype)
        for h in wanted:
            self.record[f"L{layer}.H{h}"] = stored[:, :, h]

    def _fn_pattern(self, layer: int) -> SiteFn:
        def fn(p: Tensor) -> None:
            for h in range(self.core.shape.n_heads):
                self._store(f"L{layer}.H{h}.pattern", p[:, h])
            return None

        return fn

    def _fn_mlp_in(self, layer: int, grad: bool) -> SiteFn:
        name = f"L{layer}.mlp"

        def fn(m: Tensor) -> Tensor:
            new = self._receive(name, m)
            if grad:
                # a tensor of its own, so the gradient is the MLP branch's alone (not the skip's)
                new = self._track(("mlp_in", layer), new.clone() if new is m else new)
            return new

        return fn

    def _fn_mlp_out(self, layer: int, grad: bool) -> SiteFn:
        name = f"L{layer}.mlp"
        norm = self.core.mlp_post[layer]

        def fn(o: Tensor) -> Tensor:
            o = self._edit(name, o)
            self._store(name, o)
            self._send(name, o, norm)
            if grad:
                o = self._track(("mlp_out", layer), o)
            return o

        return fn

    def _fn_plain(self, kind: str, layer: int, name: str, grad: bool) -> SiteFn:
        """Sites whose node is the tensor itself: neurons and resid_post."""

        def fn(x: Tensor) -> Tensor:
            x = self._edit_neurons(layer, x) if kind == "neurons" else self._edit(name, x)
            self._store(name, x)
            if grad:
                x = self._track((kind, layer), x)
            return x

        return fn

    def _edit_neurons(self, layer: int, x: Tensor) -> Tensor:
        """Edits of the whole neuron vector and of single neurons, in the order they were made."""
        for e in self.edits.get(f"L{layer}.mlp.neurons", ()):
            if e.name.kind == "neurons":
                x = self._apply(x, e.mode, e.value, e.pos)
            else:
                i = e.name.neuron
                column = self._apply(x[..., i], e.mode, e.value, e.pos)
                x = torch.cat([x[..., :i], column[..., None], x[..., i + 1 :]], dim=-1)
        return x

    def _fn_final(self, grad: bool) -> SiteFn:
        def fn(f: Tensor) -> Tensor:
            f = self._receive("logits", f)
            if grad:
                f = self._track(("final", self.n_layers), f)
            return f

        return fn

    # --- results ------------------------------------------------------------------------------

    def cache(self, logits: Tensor) -> Cache:
        self._store("logits", logits)
        return Cache(self.record)

    def gradients(self) -> tuple[Cache, Cache]:
        """(gradients w.r.t. node outputs, gradients w.r.t. receiver inputs) after backward."""

        def grad_of(site: Site) -> Tensor:
            t = self.grad_points[site]
            return torch.zeros_like(t) if t.grad is None else t.grad

        outs: dict[str, Tensor] = {}
        for name in self.req.grad_outputs:
            n = parse(name)
            if n.kind == "embed":
                outs[name] = grad_of(("embed", 0))
            elif n.kind == "head":
                outs[name] = grad_of(("attn_out", n.layer))
            elif n.kind == "mlp":
                outs[name] = grad_of(("mlp_out", n.layer))
            elif n.kind == "neurons":
                outs[name] = grad_of(("neurons", n.layer))
            elif n.kind == "neuron":
                outs[name] = grad_of(("neurons", n.layer))[..., n.neuron]
            else:
                outs[name] = grad_of((n.kind, n.layer))
        ins: dict[str, Tensor] = {}
        tapped: dict[Site, Tensor] = {}
        for name in self.req.grad_inputs:
            n = parse(name)
            if n.kind == "receiver" and (n.port, n.layer) in self.taps:
                if (n.port, n.layer) not in tapped:
                    tapped[(n.port, n.layer)] = self._tap_gradient(n.port, n.layer)
                ins[name] = tapped[(n.port, n.layer)][:, :, n.head]
            elif n.kind == "receiver":
                ins[name] = grad_of((n.port, n.layer))[:, :, n.head]
            elif n.kind == "mlp":
                ins[name] = grad_of(("mlp_in", n.layer))
            else:
                ins[name] = grad_of(("final", self.n_layers))
        return Cache(outs), Cache(ins)
