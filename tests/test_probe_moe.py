"""The probe on mixture-of-experts models: routers, experts and shared experts as canonical names.

Independent truths: the HF model's own logits (recording changes nothing), the model with an
expert's weights zeroed (= zeroing the expert's node), the model with its router replaced by one
returning fixed routing (= patching `L{l}.routing`), the router's algorithm written out here
(softmax top-k with renormalisation for Qwen3-MoE; sigmoid, expert bias, groups and routed
scale for GLM-4-MoE), sums (experts + shared = the MLP's output), a vector-Jacobian product of the
MoE branch taken with torch (= the router and experts receivers' gradients together) and the
finite-difference derivative of edge patching (= EAP's score of expert and router edges).
"""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from conftest import tiny_tokenizer
from test_circuits import rendered, toy_examples
from test_probe_grads import exact_rms_norms, float64_softmax  # noqa: F401  (a fixture, used by name)
from transformers import AutoModelForCausalLM, Glm4MoeConfig, Qwen3MoeConfig

from analyses.circuits import attribute
from analyses.metrics import Targets, metric_values
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import collate
from probe import ProbedModel
from probe.moe import topk_of

E, K = 4, 2


def moe_model(kind: str, *, seed: int = 0, dtype=torch.float32):
    """A tiny random MoE LM: "qwen3_moe" (softmax top-2 of 4, renormalised, no shared expert) or
    "glm4_moe" (sigmoid router with expert bias, 2 groups of which 1 is kept, routed scale 2.5,
    a shared expert, layer 0 dense), over the tiny tokenizer; weights large enough that routing
    and attention are far from uniform."""
    vocab = len(tiny_tokenizer())
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts_per_tok=K,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if kind == "qwen3_moe":
        cfg = Qwen3MoeConfig(**common, num_experts=E, norm_topk_prob=True)
    else:
        cfg = Glm4MoeConfig(
            **common,
            n_routed_experts=E,
            n_shared_experts=1,
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            first_k_dense_replace=1,
            norm_topk_prob=True,
            use_qk_norm=True,
            partial_rotary_factor=0.5,
            attention_bias=True,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, experts_implementation="eager")  # grouped_mm: no float64
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
        for module in model.modules():
            bias = getattr(module, "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)
    return model.eval()


@cache
def probed(kind: str, backend: str = "torch") -> ProbedModel:
    return ProbedModel(moe_model(kind), tiny_tokenizer(), backend=backend)


def ids_of(n: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, len(tiny_tokenizer()), (n, length), generator=torch.Generator().manual_seed(seed))


def hand_routing(pm: ProbedModel, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The routing [N, E] of normed tokens x [N, D], the family's algorithm written out here."""
    mlp = pm.model.model.layers[layer].mlp
    cfg = pm.model.config
    dtype = torch.promote_types(x.dtype, torch.float32)
    logits = x.to(dtype) @ mlp.gate.weight.to(dtype).T
    dense = torch.zeros_like(logits)
    if cfg.model_type == "qwen3_moe":
        p = logits.softmax(-1)
        w, i = p.topk(K, dim=-1)
        return dense.scatter(1, i, w / w.sum(-1, keepdim=True))
    s = logits.sigmoid()
    choice = s + mlp.gate.e_score_correction_bias
    groups = choice.view(-1, cfg.n_group, E // cfg.n_group)
    group_score = groups.topk(2, dim=-1).values.sum(-1)
    keep = group_score.topk(cfg.topk_group, dim=-1).indices
    allowed = torch.zeros_like(group_score).scatter(1, keep, 1.0).repeat_interleave(E // cfg.n_group, dim=1)
    i = choice.masked_fill(allowed == 0, float("-inf")).topk(K, dim=-1).indices
    w = s.gather(1, i)
    w = w / (w.sum(-1, keepdim=True) + 1e-20) * cfg.routed_scaling_factor
    return dense.scatter(1, i, w)


@pytest.mark.parametrize("kind", ["qwen3_moe", "glm4_moe"])
@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_cache_records_routing_and_experts_that_sum_to_the_mlp(kind: str, backend: str) -> None:
    pm = probed(kind, backend)
    ids = ids_of()
    logits, cache = pm.run_with_cache(ids)
    assert torch.equal(logits, pm(ids))  # recording changes nothing
    torch.testing.assert_close(logits, pm.model(ids).logits, atol=1e-5, rtol=1e-5)  # (eager: the model at rest)
    moe_layers = (0, 1, 2) if kind == "qwen3_moe" else (1, 2)
    assert pm.shape.moe_layers == moe_layers and pm.shape.n_experts == E
    assert pm.shape.shared_expert == (kind == "glm4_moe")
    for layer in moe_layers:
        parts = sum(cache[f"L{layer}.expert{e}"] for e in range(E))
        if kind == "glm4_moe":
            parts = parts + cache[f"L{layer}.shared_expert"]
        torch.testing.assert_close(parts, cache[f"L{layer}.mlp"], atol=1e-5, rtol=1e-5)
        routing = cache[f"L{layer}.routing"]
        assert routing.shape == (2, 9, E) and cache[f"L{layer}.router"].shape == (2, 9, E)
        assert bool(((routing != 0).sum(-1) == K).all())
        # the routing is the family's algorithm on the MLP norm's output
        block = pm.model.model.layers[layer]
        normed = block.post_attention_layernorm(
            cache[f"L{layer}.resid_pre"] + sum(cache[f"L{layer}.H{h}"] for h in range(4)) + _o_bias(block)
        )
        torch.testing.assert_close(
            routing.reshape(-1, E), hand_routing(pm, layer, normed.reshape(-1, 32)), atol=1e-5, rtol=1e-5
        )
        ids_k, w_k = topk_of(routing, K)
        assert ids_k.shape == (2, 9, K) and bool((w_k > 0).all())
        # an expert writes nothing at tokens not routed to it
        for e in range(E):
            off = routing[..., e] == 0
            assert float(cache[f"L{layer}.expert{e}"][off].abs().sum()) == 0.0
    if kind == "glm4_moe":
        assert "L0.mlp.neurons" in cache and "L0.router" not in cache  # layer 0 is dense


def _o_bias(block) -> torch.Tensor | float:
    b = block.self_attn.o_proj.bias
    return 0.0 if b is None else b


@pytest.mark.parametrize("kind", ["qwen3_moe", "glm4_moe"])
def test_zeroing_an_expert_equals_zeroing_its_weights(kind: str) -> None:
    pm = probed(kind)
    ids = ids_of()
    _, cache = pm.run_with_cache(ids, names="L1.routing")
    busiest = int((cache["L1.routing"] > 0).sum((0, 1)).argmax())
    with pm.intervene() as iv:
        iv.zero(f"L1.expert{busiest}")
        got = pm(ids)
    model = copy.deepcopy(pm.model)
    with torch.no_grad():
        model.model.layers[1].mlp.experts.down_proj[busiest].zero_()
    torch.testing.assert_close(got, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert float((got - pm(ids)).abs().max()) > 1e-3  # the expert mattered


@pytest.mark.parametrize("kind", ["qwen3_moe", "glm4_moe"])
@pytest.mark.parametrize("backend", ["torch", "nnsight"])
def test_fixing_the_routing_to_the_clean_runs(kind: str, backend: str) -> None:
    """Patching `L{l}.routing` from a clean run on a corrupted input equals the model whose
    router returns the clean run's experts and weights."""
    pm = probed(kind, backend)
    clean, corrupt = ids_of(seed=0), ids_of(seed=1)
    _, cache = pm.run_with_cache(clean, names=["L1.routing", "L2.routing"])
    with pm.intervene() as iv:
        iv.patch(["L1.routing", "L2.routing"], cache)
        got = pm(corrupt)
    model = copy.deepcopy(pm.model)
    for layer in (1, 2):
        ids_k, w_k = topk_of(cache[f"L{layer}.routing"].reshape(-1, E), K)
        gate = model.model.layers[layer].mlp.gate
        gate.forward = lambda x, i=ids_k, w=w_k: (x.new_zeros(x.shape[0], E), w.to(x.dtype), i)
    torch.testing.assert_close(got, model(corrupt).logits, atol=1e-5, rtol=1e-5)
    assert float((got - pm(corrupt)).abs().max()) > 1e-3
    # fixing the routing to the run's own changes nothing
    _, own = pm.run_with_cache(corrupt, names="L*.routing")
    with pm.intervene() as iv:
        iv.patch("L*.routing", own)
        torch.testing.assert_close(pm(corrupt), pm.model(corrupt).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["qwen3_moe", "glm4_moe"])
def test_patching_every_edge_of_an_expert_equals_patching_the_expert(kind: str) -> None:
    pm = probed(kind)
    clean, corrupt = ids_of(seed=0), ids_of(seed=1)
    _, other = pm.run_with_cache(corrupt, names="L1.expert*")
    for sender in ("L1.expert0", "L1.expert3"):
        with pm.intervene() as iv:
            iv.patch(sender, other)
            node = pm(clean)
        with pm.intervene() as iv:
            iv.patch_edge(sender, "*", other)
            edges = pm(clean)
        torch.testing.assert_close(edges, node, atol=1e-5, rtol=1e-5)
    # the router and the experts of a layer are separate receivers: patching both edges of a
    # sender into layer 2 equals patching the MLP branch's input (both together)
    _, head_other = pm.run_with_cache(corrupt, names="L1.H0")
    with pm.intervene() as iv:
        iv.patch_edge("L1.H0", "L2.router", head_other)
        iv.patch_edge("L1.H0", "L2.mlp", head_other)
        both = pm(clean)
    with pm.intervene() as iv:
        iv.patch_edge("L1.H0", "L2.router", head_other)
        router_only = pm(clean)
    assert float((both - router_only).abs().max()) > 1e-4


@pytest.mark.parametrize("kind", ["qwen3_moe", "glm4_moe"])
def test_router_and_mlp_receiver_gradients_add_up_to_the_branch_vjp(kind: str) -> None:
    """d metric / d (router input) + d metric / d (experts' input) = the vector-Jacobian product of
    the whole MoE branch (norm -> router and experts) with the gradient at its output."""
    pm = probed(kind)
    ids = ids_of()

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 5].sum() - logits[:, -1, 7].sum()

    got = pm.run_with_grads(ids, metric, outputs=["L1.mlp"], receivers=["L1.router", "L1.mlp"], names="L1.resid_pre")
    _, cache = pm.run_with_cache(ids, names=["L1.resid_pre", *[f"L1.H{h}" for h in range(4)]])
    block = pm.model.model.layers[1]
    mid = cache["L1.resid_pre"] + sum(cache[f"L1.H{h}"] for h in range(4)) + _o_bias(block)
    mid = mid.detach().requires_grad_(True)
    out = block.mlp(block.post_attention_layernorm(mid))
    (vjp,) = torch.autograd.grad(out, mid, got.outputs["L1.mlp"])
    total = got.inputs["L1.router"] + got.inputs["L1.mlp"]
    torch.testing.assert_close(total, vjp, atol=1e-5, rtol=1e-4)
    assert float(got.inputs["L1.router"].abs().max()) > 1e-6  # the routing weights carry gradient
    # an expert's output gradient is the MLP output's (the sum passes it on unchanged)
    got2 = pm.run_with_grads(ids, metric, outputs=["L1.mlp", "L1.expert1"])
    torch.testing.assert_close(got2.outputs["L1.expert1"], got2.outputs["L1.mlp"])
    torch.testing.assert_close(got2.logits, pm.model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.fixture
def float64_moe(float64_softmax: None) -> ProbedModel:  # noqa: F811
    """The GLM-4-MoE model in float64, its routers too: transformers' computes in float32
    whatever the model's dtype, which would put float32 rounding into every finite difference;
    here each router is the same algorithm written out (`hand_routing`), in float64."""
    model = moe_model("glm4_moe", dtype=torch.float64)
    exact_rms_norms(model)
    pm = ProbedModel(model, tiny_tokenizer(), backend="torch")
    for layer in pm.shape.moe_layers:
        gate = model.model.layers[layer].mlp.gate

        def forward(x, layer=layer, gate=gate):
            dense = hand_routing(pm, layer, x.reshape(-1, x.shape[-1]))
            w, i = dense.topk(K, dim=-1)
            return x.reshape(-1, x.shape[-1]) @ gate.weight.to(x.dtype).T, w, i

        gate.forward = forward
    return pm


def test_eap_on_experts_and_routers_equals_the_derivative_of_edge_patching(float64_moe: ProbedModel) -> None:
    pm = float64_moe
    items = rendered(pm, toy_examples(4))
    g = attribute(pm, items, method="eap", batch_size=None)
    assert "L1.expert0->L2.router" in g.edges and "L2.shared_expert->logits" in g.edges
    assert "L1.mlp->L2.mlp" not in g.edges  # an MoE layer sends through its experts
    batch = collate(items, 0)
    _, clean = pm.run_with_cache(batch, names=pm.senders())
    _, corrupt = pm.run_with_cache(
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}, names=pm.senders()
    )

    def moved(sender: str, receiver: str, eps: float) -> float:
        with pm.intervene() as iv:
            iv.patch_edge(sender, receiver, clean[sender] + eps * (corrupt[sender] - clean[sender]))
            return float(metric_values("logit_diff", pm(batch), Targets.of(items)).mean())

    active = [e for e in range(E) if float(clean[f"L1.expert{e}"].abs().max()) > 0]
    for edge in (
        f"L1.expert{active[0]}->L2.router",
        f"L1.expert{active[0]}->logits",
        "L1.shared_expert->L2.mlp",
        "L0.mlp->L1.router",
        "embed->L1.router",
        "L1.H2->L2.mlp",
    ):
        s, r = edge.split("->")
        eps = 1e-3
        d1 = (moved(s, r, eps) - moved(s, r, -eps)) / (2 * eps)
        d2 = (moved(s, r, eps / 2) - moved(s, r, -eps / 2)) / eps
        d = (4 * d2 - d1) / 3  # Richardson extrapolation
        assert abs(d) > 1e-8, edge
        assert g.score(edge) == pytest.approx(d, rel=1e-6), edge


def test_exact_and_eap_ig_run_on_an_moe_model() -> None:
    pm = probed("glm4_moe")
    items = rendered(pm, toy_examples(4))
    exact = attribute(pm, items, method="exact", batch_size=None)
    ig = attribute(pm, items, method="eap-ig-activations", steps=4, batch_size=None)
    assert exact.scores.shape == ig.scores.shape and bool(exact.scores.abs().sum() > 0)
    # exact patching of one expert edge is the patched pass itself
    batch = collate(items, 0)
    _, corrupt = pm.run_with_cache(
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}, names="L1.expert*"
    )
    targets = Targets.of(items)
    base = float(metric_values("logit_diff", pm(batch), targets).mean())
    with pm.intervene() as iv:
        iv.patch_edge("L1.expert1", "logits", corrupt)
        moved = float(metric_values("logit_diff", pm(batch), targets).mean())
    assert exact.score("L1.expert1->logits") == pytest.approx(moved - base, abs=1e-5)


def test_names_and_errors() -> None:
    pm = probed("glm4_moe")
    with pytest.raises(UserError, match="dense MLP, not a mixture of experts"):
        pm.run_with_cache(ids_of(), names="L0.router")
    with pytest.raises(UserError, match="4 experts"):
        pm.run_with_cache(ids_of(), names="L1.expert4")
    with pytest.raises(UserError, match="mixture of experts; its units are L1.expert0"):
        pm.run_with_cache(ids_of(), names="L1.mlp.neurons")
    with pytest.raises(UserError, match="routing"):
        with pm.intervene() as iv:
            iv.zero("L1.router")
    q = probed("qwen3_moe")
    with pytest.raises(UserError, match="no shared expert"):
        q.run_with_cache(ids_of(), names="L1.shared_expert")
    with pytest.raises(UserError, match="mixture of experts, and TransformerLens"):
        ProbedModel(moe_model("qwen3_moe"), tiny_tokenizer(), backend="tl")
    assert ProbedModel(moe_model("qwen3_moe"), tiny_tokenizer()).backend_name != "tl"


def test_an_moe_block_that_computes_something_else_is_refused() -> None:
    model = moe_model("qwen3_moe")
    block = model.model.layers[1].mlp
    original = block.forward
    block.forward = lambda x: 2 * original(x)
    with pytest.raises(UserError, match="does not compute the sum of its routed experts"):
        ProbedModel(model, tiny_tokenizer(), backend="torch")
