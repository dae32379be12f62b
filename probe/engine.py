"""One forward pass, backend-neutral: what to record, what to change, where to keep gradients.

`Pass` turns a request in canonical names (names to cache, node edits, edge patches, gradient
targets) into one function per backend site (see `probe.backends.base`). All the interpretation
lives here, once, for every backend:

1. Head outputs. At site z (input of the output projection, [B, T, n_heads * d_head]) head h's
   output is z_h @ W_O[:, h]^T, [B, T, d_model]; the heads and the projection's bias sum to the
   projection's output. Edits of heads are applied at the projection's output as
   (new value - old value), so they reach the model exactly as a change of that head would.
   Heads that are only recorded are not computed in the pass: the cache keeps the layer's z and
   computes a head's output when it is read (`probe.cache.LazyHead`).
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

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from probe.backends.base import Site, SiteFn
from probe.cache import Cache, LazyHead
from probe.core import Core, Request
from probe.edits import PassEdits
from probe.gradients import GradientPoints
from probe.moe_pass import MoeSites
from probe.names import Name, parse


class Pass:
    """Site functions for one forward pass over a [B, T] input, and what they collected."""

    def __init__(self, core: Core, request: Request, batch: int, length: int, device: torch.device) -> None:
        self.core = core
        self.req = request
        self.B, self.T = batch, length
        self.device = device
        self.n_layers = core.shape.n_layers
        self.d_model = core.layout.d_model
        self.record: dict[str, Tensor | LazyHead] = {}
        self.grads = GradientPoints(core, request.rules)
        self.resid_pre: dict[int, Tensor] = {}
        self.heads: dict[int, Tensor] = {}
        self.edits = PassEdits(core.shape, self.d_model, request.edits, request.edges, batch, length, device)

        # Layers whose head outputs are needed (recorded, edited or sending an edge) and
        # (port, layer) pairs whose receivers need private inputs.
        changed = [e.name for e in request.edits] + [e.sender for e in request.edges]
        recorded = [parse(n) for n in request.record]
        self.head_layers = {n.layer for n in recorded + changed if n.kind == "head"}
        # layers whose heads are edited or send edges: their outputs are computed in the pass;
        # the other recorded heads are kept as z and computed when read (`probe.cache.LazyHead`)
        self.active_head_layers = {n.layer for n in changed if n.kind == "head"}
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
            core.require_exact_norms(
                (core.ln1[layer] for _, layer in self.split | self.taps), "giving one head its own input"
            )
        if any(e.sender.kind in ("head", "mlp") for e in request.edges):
            core.require_exact_norms(core.attn_post + core.mlp_post, "an edge patch on a post-norm model")
        self.moe = MoeSites(self)

    # --- bookkeeping --------------------------------------------------------------------------

    def _store(self, name: str, x: Tensor) -> None:
        if name in self.req.record:
            self.record[name] = x.detach().to(device=self.req.device, dtype=self.req.dtype)

    # --- site functions -----------------------------------------------------------------------

    @property
    def reads_patterns(self) -> bool:
        """Whether the pass records an attention pattern (it must then run eager attention)."""
        return any(parse(n).kind == "pattern" for n in self.req.record)

    def site_fns(self) -> dict[Site, SiteFn]:
        fns: dict[Site, SiteFn] = {}
        rec, req = self.req.record, self.req
        outs = {parse(n) for n in req.grad_outputs}
        ins = {parse(n) for n in req.grad_inputs}
        edge_senders = set(self.edits.edges_from)
        incoming = {str(e.receiver) for e in req.edges}

        def wants(*names: str) -> bool:
            return any(n in rec or self.edits.edited(n) or n in edge_senders for n in names)

        for layer in range(self.n_layers):
            pre = f"L{layer}.resid_pre"
            heads = [f"L{layer}.H{h}" for h in range(self.core.shape.n_heads)]
            need_pre = wants(pre) or any(p == layer for _, p in self.split | self.taps)
            need_pre |= any(o.kind == "resid_pre" and o.layer == layer for o in outs)
            if layer == 0:
                need_pre |= wants("embed") or Name("embed") in outs
            if need_pre:
                fns[("resid_pre", layer)] = self._fn_resid_pre(
                    layer, Name("embed") in outs, Name("resid_pre", layer) in outs
                )
            for port in "qkv":
                if (port, layer) in self.split:
                    fns[(port, layer)] = self._fn_split(port, layer, ins)
                elif (port, layer) in self.taps:
                    fns[(port, layer)] = self._fn_tap(port, layer)
            if layer in self.head_layers:
                fns[("z", layer)] = self._fn_z(layer)
            if layer in self.head_layers or any(o.kind == "head" and o.layer == layer for o in outs):
                fns[("attn_out", layer)] = self._fn_attn_out(
                    layer, any(o.kind == "head" and o.layer == layer for o in outs)
                )
            if any(f"{h}.pattern" in rec for h in heads):
                fns[("pattern", layer)] = self._fn_pattern(layer)
            mlp = f"L{layer}.mlp"
            moe_block = self.core.layout.blocks[layer].moe
            touched = moe_block is not None and layer in self.moe.touched
            if mlp in incoming or Name("mlp", layer) in ins or (touched and layer in self.moe.router_in):
                fns[("mlp_in", layer)] = self._fn_mlp_in(layer, Name("mlp", layer) in ins)
            if touched:
                fns[("moe_in", layer)] = self.moe.fn_moe_in(layer)
            neurons = f"L{layer}.mlp.neurons"
            grad_neurons = any(o.kind in ("neuron", "neurons") and o.layer == layer for o in outs)
            if wants(neurons) or grad_neurons:
                fns[("neurons", layer)] = self._fn_plain("neurons", layer, neurons, grad_neurons)
            if touched:
                assert moe_block is not None
                fns[("mlp_out", layer)] = _then(
                    self.moe.fn_out(layer, moe_block), self._fn_mlp_out(layer, Name("mlp", layer) in outs)
                )
            elif wants(mlp) or Name("mlp", layer) in outs:
                fns[("mlp_out", layer)] = self._fn_mlp_out(layer, Name("mlp", layer) in outs)
            post = f"L{layer}.resid_post"
            if wants(post) or Name("resid_post", layer) in outs:
                fns[("resid_post", layer)] = self._fn_plain(
                    "resid_post", layer, post, Name("resid_post", layer) in outs
                )
        if "logits" in incoming or Name("logits") in ins:
            fns[("final", self.n_layers)] = self._fn_final(Name("logits") in ins)
        return fns

    def _fn_resid_pre(self, layer: int, grad_embed: bool, grad_pre: bool) -> SiteFn:
        def fn(x: Tensor) -> Tensor:
            if layer == 0:
                x = self.edits.edit("embed", x)
                self._store("embed", x)
                self.edits.send("embed", x)
                if grad_embed:
                    x = self.grads.track(("embed", 0), x)
            name = f"L{layer}.resid_pre"
            x = self.edits.edit(name, x)
            self._store(name, x)
            if grad_pre:
                x = self.grads.track(("resid_pre", layer), x)
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
                copies.append(self.edits.edit(name, self.edits.receive(name, x)))
            xs = torch.stack(copies, dim=2)  # [B, T, n, D]
            if grad:
                xs = self.grads.track((port, layer), xs)
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
            return self.grads.track((port, layer), out)

        return fn

    def _fn_z(self, layer: int) -> SiteFn:
        core = self.core
        H, dh = core.shape.n_heads, core.layout.d_head
        w_o = core.layout.o_weight(layer)

        def fn(z: Tensor) -> None:
            if layer not in self.active_head_layers and self._store_lazy_heads(layer, z):
                return None
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
                    if self.edits.edited(name):
                        current[h] = self.edits.edit(name, heads[:, :, h])
                if current:
                    a = a + sum(current[h] - heads[:, :, h] for h in current)
                    changed = True
                self._store_heads(layer, heads, current)
                for h in range(H):
                    name = f"L{layer}.H{h}"
                    if self.edits.sends(name):
                        old = current.get(h, heads[:, :, h])
                        self.edits.send(name, old, norm, a)
            if grad:
                tracked = self.grads.track(("attn_out", layer), a)
                changed = changed or tracked is not a
                a = tracked
            return a if changed else None

        return fn

    def _store_lazy_heads(self, layer: int, z: Tensor) -> bool:
        """Record the requested heads of an unedited layer as `LazyHead`s over z (no [B, T, D]
        per head is made in the pass). False where the request moves or casts the cache (then
        the heads are computed now, as the model has them)."""
        zd = z.detach()
        if zd.to(device=self.req.device, dtype=self.req.dtype) is not zd:
            return False
        record = self.req.record
        for h, w_h in enumerate(self.core.o_heads(layer)):
            name = f"L{layer}.H{h}"
            if name in record:
                self.record[name] = LazyHead(zd, h, w_h)
        return True

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
            self.moe.keep_mid(layer, m)
            new = self.edits.receive(name, m)
            if grad:
                # a tensor of its own, so the gradient is the MLP branch's alone (not the skip's)
                new = self.grads.track(("mlp_in", layer), new.clone() if new is m else new)
            return new

        return fn

    def _fn_mlp_out(self, layer: int, grad: bool) -> SiteFn:
        name = f"L{layer}.mlp"
        norm = self.core.mlp_post[layer]

        def fn(o: Tensor) -> Tensor:
            o = self.edits.edit(name, o)
            self._store(name, o)
            self.edits.send(name, o, norm)
            if grad:
                o = self.grads.track(("mlp_out", layer), o)
            return o

        return fn

    def _fn_plain(self, kind: str, layer: int, name: str, grad: bool) -> SiteFn:
        """Sites whose node is the tensor itself: neurons and resid_post."""

        def fn(x: Tensor) -> Tensor:
            x = self.edits.edit_neurons(layer, x) if kind == "neurons" else self.edits.edit(name, x)
            self._store(name, x)
            if grad:
                x = self.grads.track((kind, layer), x)
            return x

        return fn

    def _fn_final(self, grad: bool) -> SiteFn:
        def fn(f: Tensor) -> Tensor:
            f = self.edits.receive("logits", f)
            if grad:
                f = self.grads.track(("final", self.n_layers), f)
            return f

        return fn

    # --- results ------------------------------------------------------------------------------

    def cache(self, logits: Float[Tensor, "batch pos vocab"]) -> Cache:
        self._store("logits", logits)
        return Cache(self.record)

    def gradients(self, sink: Callable[[str, Tensor], None] | None = None) -> tuple[Cache, Cache]:
        """(gradients w.r.t. node outputs, gradients w.r.t. receiver inputs) after backward;
        with `sink`, receiver gradients go to it instead (`GradientPoints.results`)."""
        return self.grads.results(self.req, self.taps, self.resid_pre, sink)


def _then(first: SiteFn, second: SiteFn) -> SiteFn:
    """One site function running `first`, then `second` on its result (None: unchanged)."""

    def fn(x: Tensor) -> Tensor | None:
        got = first(x)
        x = x if got is None else got
        again = second(x)
        return got if again is None else again

    return fn
