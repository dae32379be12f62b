"""Tiny random replicas of the published mixture-of-experts diffusion LMs, in each family's layout.

As tests/replicas.py for the dense families: each builder makes a tiny transformers MoE model
(Qwen3-MoE or GLM-4-MoE: 2 layers, d_model 32, 4 experts, top-2) with weights large enough that
routing is far from uniform, and writes its tensors the way the family publishes them (per-expert
`mlp.experts.{e}.gate_proj/up_proj/down_proj`, LLaDA2's `word_embeddings`, fused
`attention.query_key_value`, `attention.dense`, `query/key_layernorm`, `mlp.gate.expert_bias`,
`mlp.shared_experts`, a dense first layer), with the family's config keys, auto_map and tokenizer
marks (docs/FORMATS.md cites each). `Replica.reference` is the transformers folder of the same
tensors; tests/moe_reference.py is a forward written from the families' modeling code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import D_MODEL, MAX_POS, N_HEADS, N_KV_HEADS
from replicas import Replica, _save, _tokenizer, _write_reference
from transformers import AutoModelForCausalLM, Glm4MoeConfig, Qwen3MoeConfig

EXPERTS, TOP_K, D_EXPERT, D_DENSE = 4, 2, 16, 48
HEAD_DIM = D_MODEL // N_HEADS


def _moe_model(kind: str, vocab: int, seed: int, **extra) -> torch.nn.Module:
    common = dict(
        vocab_size=vocab,
        hidden_size=D_MODEL,
        intermediate_size=D_DENSE,
        moe_intermediate_size=D_EXPERT,
        num_hidden_layers=2,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        num_experts_per_tok=TOP_K,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if kind == "qwen3_moe":
        cfg = Qwen3MoeConfig(**common, num_experts=EXPERTS, **extra)
    else:
        cfg = Glm4MoeConfig(**common, n_routed_experts=EXPERTS, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "gate.weight" in name:
                p.copy_(torch.randn(p.shape, generator=gen))  # routers far from uniform
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        for module in model.modules():
            bias = getattr(module, "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(0.3 * torch.randn(bias.shape, generator=gen))
    return model.eval()


def per_expert(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' fused experts ([E, 2I, D] gate|up, [E, D, I]) as per-expert tensors."""
    out = {}
    for name, t in tensors.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            stem = name.removesuffix("gate_up_proj")
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = gate[e].clone()
                out[f"{stem}{e}.up_proj.weight"] = up[e].clone()
        elif name.endswith("mlp.experts.down_proj"):
            stem = name.removesuffix("down_proj")
            for e in range(t.shape[0]):
                out[f"{stem}{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t
    return out


def _qwen3_moe_config(model, **keys) -> dict:
    c = model.config
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "moe_intermediate_size": c.moe_intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_parameters["rope_theta"],
        "rope_scaling": None,
        "attention_bias": False,
        "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K,
        "norm_topk_prob": c.norm_topk_prob,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        **keys,
    }


def llada_moe(root: Path, seed: int = 0) -> Replica:
    """LLaDA-MoE: model_type "llada" (as dense LLaDA) with LLaDAMoEModelLM, OLMoE-style keys
    (expert_intermediate_size, dense_intermediate_size, moe_layer_freq, qk_layernorm), a
    norm_topk_prob its code ignores (the router never renormalises), Qwen3-MoE weight names,
    <|mask|> as a special token, no mask id in the config."""
    tok = _tokenizer([], mask="<|mask|>")
    model = _moe_model("qwen3_moe", len(tok), seed, norm_topk_prob=False)
    ref = _write_reference(model, tok, root / "llada-moe-reference")
    c = model.config
    config = {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "auto_map": {
            "AutoConfig": "configuration_lladamoe.LLaDAConfig",
            "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
            "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
        },
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "dense_intermediate_size": c.intermediate_size,
        "expert_intermediate_size": c.moe_intermediate_size,
        "shared_expert_intermediate_size": None,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": False,
        "rope_theta": c.rope_parameters["rope_theta"],
        "partial_rotary_factor": 1.0,
        "rope_scaling": None,
        "attention_bias": False,
        "clip_qkv": None,
        "num_experts_per_tok": TOP_K,
        "num_experts": EXPERTS,
        "norm_topk_prob": True,  # stated, and ignored by LLaDA-MoE's router (hard-coded False)
        "qk_layernorm": True,
        "moe_layer_freq": [1] * c.num_hidden_layers,
        "moe_router_enable_expert_bias": False,
        "moe_router_score_function": "softmax",
        "routed_scaling_factor": 1,
        "router_num_group": None,
        "router_topk_group": None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "use_cache": False,
    }
    path = root / "LLaDA-MoE-7B-A1B-Base-tiny"
    _save(path, per_expert(dict(model.state_dict())), config, tok)
    return Replica("llada-moe", path, ref, tok.mask_token_id, False, None, "qwen3_moe")


def llada2_name(name: str) -> str:
    """The LLaDA2 (Ling-style) checkpoint name of a transformers GLM-4-MoE weight name (q/k/v are
    fused separately)."""
    name = name.replace("model.embed_tokens.", "model.word_embeddings.")
    name = name.replace(".self_attn.o_proj.", ".attention.dense.")
    name = name.replace(".self_attn.q_norm.", ".attention.query_layernorm.")
    name = name.replace(".self_attn.k_norm.", ".attention.key_layernorm.")
    return name.replace(".mlp.gate.e_score_correction_bias", ".mlp.gate.expert_bias")


def llada2(root: Path, seed: int = 0) -> Replica:
    """LLaDA2.0: model_type llada2_moe, Ling-style names, q|k|v fused in attention.query_key_value,
    per-head query/key_layernorm, partial rotary 0.5, a sigmoid router with expert bias and groups
    (2 groups of 2 experts, 1 kept), routed scaling 2.5, one shared expert, layer 0 dense."""
    tok = _tokenizer([], mask="<|mask|>")
    model = _moe_model(
        "glm4_moe",
        len(tok),
        seed,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        norm_topk_prob=True,
        use_qk_norm=True,
        partial_rotary_factor=0.5,
        attention_bias=False,
    )
    ref = _write_reference(model, tok, root / "llada2-reference")
    tensors: dict[str, torch.Tensor] = {}
    state = per_expert(dict(model.state_dict()))
    for name, t in state.items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            stem, kind = name.split(".self_attn.q_proj.")
            fused = torch.cat([state[f"{stem}.self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
            tensors[f"{stem}.attention.query_key_value.{kind}"] = fused
            continue
        tensors[llada2_name(name)] = t
    c = model.config
    config = {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "llada2_moe",
        "auto_map": {
            "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
            "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
        },
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_qk_norm": True,
        "use_bias": False,
        "rms_norm_eps": c.rms_norm_eps,
        "norm_head": False,
        "tie_word_embeddings": False,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_parameters["rope_theta"],
        "rope_scaling": None,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "pad_token_id": 0,
        "eos_token_id": 2,
        "num_experts": EXPERTS,
        "num_shared_experts": 1,
        "num_experts_per_tok": TOP_K,
        "n_group": 2,
        "topk_group": 1,
        "routed_scaling_factor": 2.5,
        "moe_intermediate_size": D_EXPERT,
        "first_k_dense_replace": 1,
        "head_dim": HEAD_DIM,
        "partial_rotary_factor": 0.5,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "router_dtype": "fp32",
        "norm_topk_prob": True,
        "use_cache": False,
    }
    path = root / "LLaDA2.0-mini-tiny"
    _save(path, tensors, config, tok)
    return Replica("llada2", path, ref, tok.mask_token_id, False, 32, "sarvam_moe")


def rnd1(root: Path, seed: int = 0) -> Replica:
    """RND1: model_type rnd1 with its auto_map (AutoModelForMaskedLM), Qwen3-MoE keys and names,
    moe_backend and num_diffusion_steps keys, mask_token_id in the config (no mask token named by
    the tokenizer: an added special token)."""
    tok = _tokenizer(["<|mask|>"])
    model = _moe_model("qwen3_moe", len(tok), seed, norm_topk_prob=True)
    ref = _write_reference(model, tok, root / "rnd1-reference")
    mask_id = tok.convert_tokens_to_ids("<|mask|>")
    config = _qwen3_moe_config(
        model,
        architectures=["RND1LM"],
        model_type="rnd1",
        auto_map={
            "AutoConfig": "configuration_rnd.RND1Config",
            "AutoModel": "modeling_rnd.RND1Model",
            "AutoModelForMaskedLM": "modeling_rnd.RND1LM",
        },
        moe_backend="hf",
        num_diffusion_steps=256,
        mask_token_id=mask_id,
        is_causal=False,
        use_cache=False,
    )
    path = root / "RND1-Base-tiny"
    _save(path, per_expert(dict(model.state_dict())), config, tok)
    return Replica("rnd1", path, ref, mask_id, True, None, "qwen3_moe")


def sdar_moe(root: Path, seed: int = 0) -> Replica:
    """SDAR-30B-A3B: model_type sdar_moe, Qwen3-MoE keys and names, SDAR's training keys, block
    size 4 in the config, <|MASK|> the tokenizer's mask token."""
    tok = _tokenizer([], mask="<|MASK|>")
    model = _moe_model("qwen3_moe", len(tok), seed, norm_topk_prob=True)
    ref = _write_reference(model, tok, root / "sdar-moe-reference")
    config = _qwen3_moe_config(
        model,
        architectures=["SDARMoeForCausalLM"],
        model_type="sdar_moe",
        auto_map={
            "AutoConfig": "configuration_sdar_moe.SDARMoeConfig",
            "AutoModel": "modeling_sdar_moe.SDARMoeModel",
            "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM",
        },
        block_size=4,
        attn_implementation="flex_attention",
        debug=False,
        ep_size=1,
        fuse_cross_entropy=True,
        micro_forward=False,
        skip_checkpoint=False,
        use_deepep=False,
    )
    path = root / "SDAR-30B-A3B-tiny-Chat"
    _save(path, per_expert(dict(model.state_dict())), config, tok)
    return Replica("sdar-moe", path, ref, tok.mask_token_id, False, 4, "qwen3_moe")


BUILDERS = {"llada-moe": llada_moe, "llada2": llada2, "rnd1": rnd1, "sdar-moe": sdar_moe}
