"""The mixture-of-experts part of one forward pass: routing and experts recorded, edited, patched.

`MoeSites` gives `probe.engine.Pass` the site functions of the MoE layers a request touches
(names in `probe.names`: `L{l}.router`, `L{l}.routing`, `L{l}.expert{e}`, `L{l}.shared_expert`,
the receivers `L{l}.router` and `L{l}.mlp`). A layer the request does not touch runs as the
model has it, at no cost. A touched layer:

1. keeps the MLP norm's input (`mlp_in`: the residual stream mid-block) and the MoE block's input
   (`moe_in`: the normed tokens the experts read, with the `L{l}.mlp` receiver's patches in);
2. at the block's output (`mlp_out`) routes the tokens with the block's own router: on the
   experts' input, or, where the router is a receiver in this pass (an edge patched into
   `L{l}.router`, its gradient asked for, or `L{l}.mlp` patched, which must not reach the
   router), on norm(its own copy of the mid-block stream); edits of `L{l}.routing` then replace
   the gate weights (the routing fixed to another run's);
3. computes the experts the request names (`probe.moe.MoeBlock.gated`), applies their edits,
   records them and sends their edge deltas;
4. returns the block's output: the module's own plus the edited experts' changes, or, where the
   routing or an input differs from the module's, the sum re-computed from the parts.

Gradients w.r.t. an expert's output are kept on a leaf computed from the detached input, joined
to the output as (leaf - leaf.detach()), so the gradient reaches the rest of the model once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import Tensor

from probe.backends.base import SiteFn
from probe.moe import MoeBlock, Routing, topk_of
from probe.names import Name, parse
from probe.rules import gated_product

MOE_KINDS = ("expert", "shared_expert", "router", "routing")


class MoeSites:
    """Which MoE layers a pass touches, and their site functions."""

    def __init__(self, run: Any) -> None:
        """run: the `probe.engine.Pass` these sites belong to (its request, edits, gradients)."""
        self.run = run
        shape = run.core.shape
        req = run.req
        self.touched: set[int] = set()
        self.router_in: set[int] = set()  # layers whose router reads its own copy of the stream
        self.router_grads: set[int] = set()  # layers whose router input's gradient is asked for
        self.expert_grads: set[Name] = set()
        if not shape.moe_layers:
            return
        named = [parse(n) for n in req.record] + [e.name for e in req.edits] + [e.sender for e in req.edges]
        for n in named:
            if n.kind in MOE_KINDS:
                self.touched.add(n.layer)
        for n in (parse(x) for x in req.grad_outputs):
            if n.kind in ("expert", "shared_expert"):
                self.touched.add(n.layer)
                self.expert_grads.add(n)
        receivers = [e.receiver for e in req.edges] + [parse(x) for x in req.grad_inputs]
        for r in receivers:
            if r.kind == "router" or (r.kind == "mlp" and shape.is_moe(r.layer)):
                self.touched.add(r.layer)
                self.router_in.add(r.layer)
        self.router_grads = {r.layer for r in map(parse, req.grad_inputs) if r.kind == "router"}
        self.mid: dict[int, Tensor] = {}
        self.x: dict[int, Tensor] = {}
        if self.router_in:
            run.core.require_exact_norms((run.core.ln2[layer] for layer in self.router_in), "an MoE router's own input")

    def keep_mid(self, layer: int, m: Tensor) -> None:
        """The MLP norm's input before the `L{l}.mlp` receiver's patches (the router's stream)."""
        if layer in self.touched:
            self.mid[layer] = m

    def fn_moe_in(self, layer: int) -> SiteFn:
        def fn(x: Tensor) -> None:
            self.x[layer] = x
            return None

        return fn

    # --- the block's output -------------------------------------------------------------------

    def _routing(self, layer: int, moe: MoeBlock, flat: Tensor) -> Routing:
        run = self.run
        if layer in self.router_in:
            name = f"L{layer}.router"
            r = run.edits.receive(name, self.mid[layer])
            if layer in self.router_grads:
                r = run.grads.track(("router_in", layer), r.clone() if r is self.mid[layer] else r)
            norm = run.core.ln2[layer]
            assert norm is not None
            # the LN-rule (`probe.rules`) holds the norm's scale constant in the backward pass
            scale_from = r.detach() if run.req.rules is not None and run.req.rules.freeze_norms else r
            normed = norm.linear(r, scale_from) + (0 if norm.bias is None else norm.bias)
            routing = moe.route(normed.reshape(-1, normed.shape[-1]).to(flat.dtype))
        else:
            routing = moe.route(flat)
        return routing

    def fn_out(self, layer: int, moe: MoeBlock) -> SiteFn:
        run = self.run
        E = moe.n_experts

        def fn(o: Tensor) -> Tensor:
            x = self.x[layer]
            B, T, D = x.shape
            flat = x.reshape(-1, D)
            routing = self._routing(layer, moe, flat)
            run._store(f"L{layer}.router", routing.logits.reshape(B, T, -1))
            name = f"L{layer}.routing"
            recompute = layer in self.router_in
            if run.edits.edited(name):
                dense = run.edits.edit(name, routing.dense(E).reshape(B, T, E))
                ids, weights = topk_of(dense.reshape(B * T, E), moe.top_k)
                routing = Routing(routing.logits, ids, weights)
                recompute = True
            if name in run.req.record:
                run._store(name, routing.dense(E).reshape(B, T, E))
            rules = run.req.rules
            product = None if rules is None else partial(gated_product, rules=rules)
            parts: dict[int, Tensor] = {}  # the experts' values as the model uses them (flat)
            change = None
            for e in range(E):
                value, delta = self._expert(
                    layer, f"L{layer}.expert{e}", lambda z, e=e: moe.gated(e, z, routing, product), recompute
                )
                if value is not None:
                    parts[e] = value.reshape(-1, D)
                if delta is not None:
                    change = delta if change is None else change + delta
            shared_value = None
            if moe.shared is not None:
                shared_value, delta = self._expert(layer, f"L{layer}.shared_expert", moe.shared_out, recompute)
                if delta is not None:
                    change = delta if change is None else change + delta
            if recompute:
                shared = None if shared_value is None else shared_value.reshape(-1, D)
                return moe.output(flat, routing, parts, shared, product).reshape(B, T, D).to(o.dtype)
            return o if change is None else o + change.to(o.dtype)

        return fn

    def _expert(self, layer: int, name: str, compute, recompute: bool) -> tuple[Tensor | None, Tensor | None]:
        """(the expert's value as the model uses it [B, T, D] or None when the pass does not need
        it, the change to add to the module's output or None). recompute: the block's output is
        re-computed from its parts in this pass (no change to add)."""
        run = self.run
        n = parse(name)
        grad = n in self.expert_grads
        needed = name in run.req.record or run.edits.edited(name) or run.edits.sends(name) or grad
        if not needed:
            return None, None
        x = self.x[layer]
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        # a gradient kept on the module's own output: the expert's value a leaf of its own (docstring)
        old = compute(flat.detach() if grad and not recompute else flat).reshape(B, T, D)
        new = run.edits.edit(name, old)
        run._store(name, new)
        run.edits.send(name, new)  # (MoE blocks have no post-norm: `probe.layout` refuses one)
        delta = None if new is old or recompute else new - old
        if grad:
            tracked = run.grads.track((n.kind if n.expert is None else f"expert{n.expert}", layer), new)
            if not recompute:
                bump = tracked - tracked.detach()
                delta = bump if delta is None else delta + bump
            new = tracked
        return new, delta
