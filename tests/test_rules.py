"""Backward rules (`probe.rules`: RelP's LRP rules, GIM) against independent truths: a Llama
forward written out by hand with each rule as a detach (RelP), the gim-explain package on GPT-2
(GIM), and the unchanged forward values on every family."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import FAMILIES
from test_probe import batch, folder, probed
from test_probe_grads import exact_rms_norms, float64_softmax  # noqa: F401 (fixture)
from test_probe_moe import ids_of
from test_probe_moe import probed as probed_moe
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ar2mdm.common.errors import UserError
from conversion.checkpoints import load_ar
from probe import ProbedModel
from probe.rules import GIM, RELP, RELP_AH, BackwardRules

RULES = {"relp": RELP, "relp-ah": RELP_AH, "gim": GIM}


def _metric(answer: int, other: int):
    return lambda logits: (logits[:, -1, answer] - logits[:, -1, other]).sum()


# --- forward values never change ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_rules_leave_the_forward_pass_and_cache_unchanged(family: str, kind: str) -> None:
    pm = probed(family, kind)
    ids, _, mask = batch(family)
    plain = pm.run_with_grads(ids, _metric(5, 6), outputs="L*.H*", names=["L*.mlp"], attention_mask=mask)
    for name, rules in RULES.items():
        got = pm.run_with_grads(ids, _metric(5, 6), outputs="L*.H*", names=["L*.mlp"], attention_mask=mask, rules=rules)
        torch.testing.assert_close(got.logits, plain.logits, rtol=1e-5, atol=1e-5, msg=name)
        for layer in range(pm.config.n_layers):
            torch.testing.assert_close(got.cache[f"L{layer}.mlp"], plain.cache[f"L{layer}.mlp"], msg=name)
    # the model is left as it was: plain gradients again, eager attention, no hooks
    again = pm.run_with_grads(ids, _metric(5, 6), outputs="L*.H*", attention_mask=mask)
    for k, v in plain.outputs.items():
        torch.testing.assert_close(again.outputs[k], v)
    assert pm.model.config._attn_implementation == "eager"


def test_gim_changes_the_gradient_and_relp_ah_silences_queries_and_keys() -> None:
    pm = probed("llama")
    ids, _, mask = batch("llama")
    recv = ["L1.H0.q", "L1.H0.k", "L1.H0.v"]
    plain = pm.run_with_grads(ids, _metric(5, 6), receivers=recv, attention_mask=mask)
    gim = pm.run_with_grads(ids, _metric(5, 6), receivers=recv, attention_mask=mask, rules=GIM)
    ah = pm.run_with_grads(ids, _metric(5, 6), receivers=recv, attention_mask=mask, rules=RELP_AH)
    for r in recv:
        assert not torch.allclose(gim.inputs[r], plain.inputs[r])
    assert ah.inputs["L1.H0.q"].abs().max() == 0 and ah.inputs["L1.H0.k"].abs().max() == 0
    assert ah.inputs["L1.H0.v"].abs().max() > 0


def test_mixture_of_experts_runs_under_every_rule_set() -> None:
    pm = probed_moe("qwen3_moe")
    ids = ids_of()
    plain = pm.run_with_grads(ids, _metric(3, 4), outputs="L*.expert*", receivers="L*.mlp")
    for name, rules in RULES.items():
        got = pm.run_with_grads(ids, _metric(3, 4), outputs="L*.expert*", receivers="L*.mlp", rules=rules)
        torch.testing.assert_close(got.logits, plain.logits, rtol=1e-5, atol=1e-5, msg=name)
        assert all(torch.isfinite(g).all() for g in got.outputs.values())
        # the expert's own product follows the Half rule: layer 0's experts see another gradient
        assert not torch.allclose(got.inputs["L0.mlp"], plain.inputs["L0.mlp"]), name


def test_the_tl_backend_runs_rules_through_the_hf_modules() -> None:
    tl, torch_ = probed("gpt2", "ar", backend="tl"), probed("gpt2", "ar", backend="torch")
    ids, _, mask = batch("gpt2")
    for name, rules in RULES.items():
        a = tl.run_with_grads(ids, _metric(5, 6), outputs="L*.H*", receivers="L*", attention_mask=mask, rules=rules)
        b = torch_.run_with_grads(ids, _metric(5, 6), outputs="L*.H*", receivers="L*", attention_mask=mask, rules=rules)
        for k in b.outputs:
            torch.testing.assert_close(a.outputs[k], b.outputs[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
        for k in b.inputs:
            torch.testing.assert_close(a.inputs[k], b.inputs[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")


def test_a_bad_temperature_is_refused() -> None:
    with pytest.raises(UserError, match="softmax_temperature"):
        BackwardRules(softmax_temperature=0.0)


# --- RelP: a Llama written out by hand, each rule a detach -----------------------------------------


def hand_llama(model, ids: torch.Tensor, rules: BackwardRules, metric) -> dict[str, torch.Tensor]:
    """Gradients of `metric` under `rules`, by autograd through a Llama forward written here: the
    LN-rule is a detached rms, the Identity rule a detached silu(g)/g, the Half rule
    0.5 (a u' + a' u) with ' detached, the AH-rule a detached pattern. Returns the gradients at
    each block's input, at each MLP's neurons, and at each attention branch's and MLP branch's
    own copy of the residual stream (what the q/k/v and mlp receivers sum to)."""
    cfg, base = model.config, model.model
    B, T = ids.shape
    H, Hkv, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads

    def rms(norm, x):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return x * (r.detach() if rules.freeze_norms else r) * norm.weight

    x = base.embed_tokens(ids)
    cos, sin = base.rotary_emb(x, torch.arange(T)[None])
    causal = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
    leaves: dict[str, torch.Tensor] = {}
    for layer, blk in enumerate(base.layers):
        if layer == 0:  # the gradient stops at the embedding
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        leaves[f"L{layer}.resid_pre"] = x
        # a zero added to a branch's input: its gradient is the branch's own (receivers' sum)
        a_in = x + leaves.setdefault(f"L{layer}.attn_in", torch.zeros_like(x, requires_grad=True))
        h = rms(blk.input_layernorm, a_in)
        att = blk.self_attn
        q = att.q_proj(h).view(B, T, H, dh).transpose(1, 2)
        k = att.k_proj(h).view(B, T, Hkv, dh).transpose(1, 2)
        v = att.v_proj(h).view(B, T, Hkv, dh).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        p = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5 + causal, dim=-1)
        p = p.detach() if rules.detach_pattern else p
        z = (p @ v).transpose(1, 2).reshape(B, T, H * dh)
        x = x + att.o_proj(z)
        m_in = x + leaves.setdefault(f"L{layer}.mlp_in", torch.zeros_like(x, requires_grad=True))
        h = rms(blk.post_attention_layernorm, m_in)
        g, u = blk.mlp.gate_proj(h), blk.mlp.up_proj(h)
        act = torch.nn.functional.silu(g)
        if rules.identity_activation:
            act = g * (act / g).detach()
        neurons = 0.5 * (act * u.detach() + act.detach() * u) if rules.gate_scale == 0.5 else act * u
        neurons.retain_grad()
        leaves[f"L{layer}.mlp.neurons"] = neurons
        x = x + blk.mlp.down_proj(neurons)
    metric(model.lm_head(rms(base.norm, x))).backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("rules", [RELP, RELP_AH], ids=["relp", "relp-ah"])
def test_relp_equals_a_hand_written_propagation(rules: BackwardRules, float64_softmax: None) -> None:  # noqa: F811
    loaded = load_ar(folder("llama"), dtype=torch.float64)
    exact_rms_norms(loaded.model)
    pm = ProbedModel.from_checkpoint(loaded)
    ids = batch("llama")[0][:1]  # one unpadded row
    metric = _metric(5, 6)
    L = pm.config.n_layers
    got = pm.run_with_grads(
        ids,
        metric,
        outputs=[f"L{i}.resid_pre" for i in range(L)] + [f"L{i}.mlp.neurons" for i in range(L)],
        receivers=[r for r in pm.receivers() if not r.startswith("logits")],
        rules=rules,
    )
    hand = hand_llama(loaded.model, ids, rules, metric)
    for layer in range(L):
        for name in (f"L{layer}.resid_pre", f"L{layer}.mlp.neurons"):
            torch.testing.assert_close(got.outputs[name], hand[name], rtol=1e-9, atol=1e-12, msg=name)
        # the q/k/v receivers of a layer add up to its attention branch's input gradient
        qkv = sum(v for k, v in got.inputs.items() if k.startswith(f"L{layer}.H"))
        torch.testing.assert_close(qkv, hand[f"L{layer}.attn_in"], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got.inputs[f"L{layer}.mlp"], hand[f"L{layer}.mlp_in"], rtol=1e-9, atol=1e-12)
    # and the rules matter here: the plain gradient is another
    plain = pm.run_with_grads(ids, metric, outputs=["L0.resid_pre"])
    assert not torch.allclose(plain.outputs["L0.resid_pre"], hand["L0.resid_pre"])


# --- GIM: gim-explain's rules where they apply (GPT-2: torch LayerNorm, a plain softmax) -------------


def _gim_explain_gradients(model, ids: torch.Tensor, metric, **options) -> list[torch.Tensor]:
    """Gradients at each block's input under gim-explain's GIM context (hidden states retained)."""
    gim = pytest.importorskip("gim", reason="gim-explain is a dev dependency (pyproject.toml)")
    with gim.GIM(model, **options):
        out = model(ids, output_hidden_states=True)
        states = out.hidden_states[: model.config.n_layer]
        for s in states:
            s.retain_grad()
        metric(out.logits).backward()
    return [s.grad for s in states]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_gim_equals_gim_explain_on_gpt2(attention: str) -> None:
    """gim-explain applies its softmax rule only under eager attention (it patches
    torch.softmax) and its q/k/v scales only under SDPA (it patches
    scaled_dot_product_attention); each half is compared where the package applies it."""
    loaded = load_ar(folder("gpt2"))
    pm = ProbedModel.from_checkpoint(load_ar(folder("gpt2")))
    ids = batch("gpt2")[0][:1]
    metric = _metric(5, 6)
    model = loaded.model.eval()
    model.set_attn_implementation(attention)
    if attention == "eager":  # norm freezing + softmax temperature 2
        ours = replace(GIM, qkv_scales=(1.0, 1.0, 1.0), gate_scale=1.0)
        ref = _gim_explain_gradients(model, ids, metric, q_scale=None, k_scale=None, v_scale=None)
    else:  # norm freezing + q/k/v scales
        ours = replace(GIM, softmax_temperature=1.0, gate_scale=1.0)
        ref = _gim_explain_gradients(model, ids, metric, softmax_temperature=None)
    L = pm.config.n_layers
    got = pm.run_with_grads(ids, metric, outputs=[f"L{i}.resid_pre" for i in range(L)], rules=ours)
    plain = pm.run_with_grads(ids, metric, outputs=["L0.resid_pre"])
    for layer in range(L):
        torch.testing.assert_close(got.outputs[f"L{layer}.resid_pre"], ref[layer], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(plain.outputs["L0.resid_pre"], ref[0], rtol=1e-3, atol=1e-5)
