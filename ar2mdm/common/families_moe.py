"""The published mixture-of-experts diffusion-LM families: LLaDA-MoE, LLaDA2.x, RND1, SDAR-MoE
(see `ar2mdm.common.family.Family`; docs/FORMATS.md has a row per family with the sources).
"""

from __future__ import annotations

from dataclasses import replace

from ar2mdm.common.families_dense import DLLM
from ar2mdm.common.family import FAMILIES, Family, add_family

# --- mixtures of experts ------------------------------------------------------------------------
# transformers 5.x reads per-expert checkpoints (mlp.experts.{e}.gate_proj ...) into its fused
# experts through its conversion mapping for qwen3_moe / glm4_moe / sarvam_moe
# (transformers: conversion_mapping.py, "qwen2_moe" and "sarvam_moe"), inside from_pretrained.
DINFER = "inclusionAI/dInfer"
RND = "RadicalNumerics/RND1"

add_family(
    Family(
        name="llada-moe",
        title="LLaDA-MoE (inclusionAI), mixture of experts",
        base="qwen3_moe",
        shift=False,
        examples=("inclusionAI/LLaDA-MoE-7B-A1B-Base", "inclusionAI/LLaDA-MoE-7B-A1B-Instruct"),
        ar_sources=(),  # pretrained from scratch as an MDM
        model_types=("llada", "lladamoe"),
        architectures=("LLaDAMoEModelLM", "LLaDAMoEModel"),
        config_marks=("num_experts",),
        config_renames={
            "expert_intermediate_size": "moe_intermediate_size",
            "dense_intermediate_size": "intermediate_size",
        },
        # its modeling code hard-codes norm_topk_prob = False whatever the config says
        config_set={"norm_topk_prob": False, "decoder_sparse_step": 1, "hidden_act": "silu"},
        config_drop=(
            "moe_layer_freq",
            "qk_layernorm",
            "moe_router_enable_expert_bias",
            "moe_router_score_function",
            "routed_scaling_factor",
            "router_num_group",
            "router_topk_group",
            "shared_expert_intermediate_size",
            "clip_qkv",
            "partial_rotary_factor",
            "norm_topk_prob",
            "use_cache",
        ),
        config_requires={
            "qk_layernorm": (True, None),
            "partial_rotary_factor": (1.0, 1, None),
            "moe_router_enable_expert_bias": (False, None),
            "shared_expert_intermediate_size": (None,),
            "clip_qkv": (None,),
            "hidden_act": ("silu", None),
        },
        config_derive="llada-moe",
        mask_token="<|mask|>",
        mask_id=156895,
        tokenizer_class="PreTrainedTokenizerFast",
        sources={
            "model_type 'llada' (as dense LLaDA), architectures LLaDAMoEModelLM": f"{DINFER}: tools/configuration_lladamoe.py (~L9-10); {DLLM}: examples/llada/README.md (~L17-20)",
            "config keys (expert_intermediate_size, dense_intermediate_size, moe_layer_freq, qk_layernorm, ...)": f"{DLLM}: dllm/pipelines/llada/models/configuration_lladamoe.py (~L13-49)",
            "weights = Qwen3-MoE's (q/k_norm per head, mlp.gate, mlp.experts.{e}.gate/up/down_proj)": f"{DLLM}: dllm/pipelines/llada/models/modeling_lladamoe.py (~L347-375, L658-712); {DINFER}: tools/transfer.py (~L44-52)",
            "router: softmax over all experts, top-k, no renormalisation (norm_topk_prob hard-coded False)": f"{DLLM}: dllm/pipelines/llada/models/modeling_lladamoe.py (~L663, L678-683)",
            "expert bias, shared expert, clip_qkv optional (refused: not in transformers' Qwen3-MoE)": f"{DLLM}: dllm/pipelines/llada/models/modeling_lladamoe.py (~L667-681, L726-727, L378-381)",
            "dense layers where moe_layer_freq[i] == 0": f"{DLLM}: dllm/pipelines/llada/models/modeling_lladamoe.py (~L719)",
            "bidirectional; no shift; mask id 156895": f"{DLLM}: modeling_lladamoe.py (~L339, L1141); {DINFER}: tests/test_llada_moe.py (~L58-61); ggml-org/llama.cpp: convert_hf_to_gguf.py (LLaDAMoEModel)",
        },
    )
)

add_family(
    Family(
        name="llada2",
        title="LLaDA2.0 / LLaDA2.1 (inclusionAI), mixture of experts, block diffusion",
        # transformers' SarvamMoE: the GLM-4-MoE model with a conversion mapping for Ling-style
        # checkpoints (word_embeddings, attention.query_key_value split into q/k/v, attention.dense,
        # query/key_layernorm, gate.expert_bias), which LLaDA2 inherits from Ling 2.0
        base="sarvam_moe",
        shift=False,
        examples=(
            "inclusionAI/LLaDA2.0-mini",
            "inclusionAI/LLaDA2.0-flash",
            "inclusionAI/LLaDA2.0-mini-preview",
            "inclusionAI/LLaDA2.1-mini",
            "inclusionAI/LLaDA2.1-flash",
        ),
        ar_sources=("inclusionAI/Ling-mini-2.0", "inclusionAI/Ling-flash-2.0"),
        model_types=("llada2_moe", "llada21_moe"),
        architectures=("LLaDA2MoeModelLM",),
        config_set={"norm_topk_prob": True},  # its gate renormalises whenever top_k > 1
        config_drop=(
            "use_bias",
            "score_function",
            "moe_router_enable_expert_bias",
            "router_dtype",
            "norm_head",
            "use_sliding_window",
            "sliding_window",
            "use_cache",
            "norm_topk_prob",
            "moe_shared_expert_intermediate_size",
        ),
        config_requires={
            "use_bias": (False,),  # an output-projection bias GLM-4-MoE cannot hold
            "score_function": ("sigmoid", None),
            "moe_router_enable_expert_bias": (True, None),
            "norm_head": (False, None),
            "use_sliding_window": (False, None),
            "moe_shared_expert_intermediate_size": (None,),
            "hidden_act": ("silu", None),
        },
        config_derive="llada2",
        mask_token="<|mask|>",
        mask_id=156895,
        block_size=32,
        block_size_keys=("block_size", "block_length"),
        tokenizer_class="PreTrainedTokenizerFast",
        sources={
            "model_type llada2_moe; config keys": f"{DLLM}: dllm/pipelines/llada2/models/configuration_llada2_moe.py (~L9-45); 2.1 as llada21_moe: dllm/pipelines/llada21/__init__.py",
            "weight names (word_embeddings, attention.query_key_value rows q|k|v, attention.dense, query/key_layernorm, mlp.gate.expert_bias, mlp.shared_experts)": f"{DLLM}: dllm/pipelines/llada2/models/modeling_llada2_moe.py (~L214-313, L443-499, L780-791); sgl-project/sglang: python/sglang/srt/models/llada2.py",
            "router: sigmoid, expert bias for the choice, group score = top-2 sum, topk_group groups, renormalised, x routed_scaling_factor (= transformers' Glm4MoeTopkRouter)": f"{DLLM}: dllm/pipelines/llada2/models/modeling_llada2_moe.py (~L214-283); {DINFER}: python/dinfer/model/modeling_llada2_moe.py (~L494-546)",
            "partial rotary (0.5), rotate-half; per-head q/k norm before rotary; first_k_dense_replace dense layers": f"{DLLM}: dllm/pipelines/llada2/models/modeling_llada2_moe.py (~L140-195, L458-462, L561)",
            "block-causal, blocks of 32; no shift; mask 156895": f"{DLLM}: dllm/pipelines/llada2/models/modeling_llada2_moe.py (~L1276-1285, L1349-1358, L1102-1107); sgl-project/sglang: python/sglang/srt/dllm/config.py",
            "AR source: the Ling 2.0 series": "inclusionAI/LLaDA2.0: README.md; tech report (secondary sources)",
        },
    )
)

add_family(
    Family(
        name="rnd1",
        title="RND1 (Radical Numerics), mixture of experts",
        base="qwen3_moe",
        shift=True,
        examples=("radicalnumerics/RND1-Base-0910",),
        ar_sources=("Qwen/Qwen3-30B-A3B",),
        model_types=("rnd1",),
        architectures=("RND1LM", "RND1Model"),
        config_drop=("moe_backend", "num_diffusion_steps", "is_causal", "use_cache", "mask_token_id"),
        mask_id_keys=("mask_token_id",),
        mask_id=151669,
        tokenizer_class="Qwen2Tokenizer",
        sources={
            "model_type rnd1; Qwen3-30B-A3B's config values (128 experts, top-8, norm_topk_prob)": f"{RND}: rnd/configuration_rnd.py (~L17-48, L66, L97-105)",
            "weights and router = Qwen3-MoE's; every layer MoE": f"{RND}: rnd/modeling_rnd.py (~L106-119, L187-198, L245-309)",
            "bidirectional": f"{RND}: rnd/modeling_rnd.py (~L103, L158-166)",
            "shift (position i predicts i + 1)": f"{RND}: rnd/sampling.py (~L184-227)",
            "mask id 151669; AR source Qwen3-30B-A3B": f"{RND}: rnd/configuration_rnd.py (~L10-11, L72); README.md (~L10)",
        },
    )
)

# SDAR-MoE reads as SDAR does (mask, block size and its name rule, training keys, tokenizer);
# only the architecture and the checkpoints differ
SDAR = FAMILIES["sdar"]
add_family(
    replace(
        SDAR,
        name="sdar-moe",
        title="SDAR-MoE (JetAstra), mixture of experts, block diffusion",
        base="qwen3_moe",
        examples=("JetLM/SDAR-30B-A3B-Chat", "JetLM/SDAR-30B-A3B-Sci"),
        ar_sources=("Qwen/Qwen3-30B-A3B-Base",),
        model_types=("sdar_moe",),
        architectures=("SDARMoeForCausalLM",),
        config_drop=(*SDAR.config_drop, "use_cache"),
        sources={
            "model_type sdar_moe, architectures SDARMoeForCausalLM": "InternLM/lmdeploy: lmdeploy/pytorch/configurations/sdar.py (~L9); sgl-project/sglang: python/sglang/srt/dllm/config.py",
            "weights and router = Qwen3-MoE's (mlp.gate, mlp.experts.{e}.gate/up/down_proj, norm_topk_prob)": "InternLM/lmdeploy: lmdeploy/pytorch/models/sdar_moe.py; Labman42/JetEngine: jetengine/models/sdar_moe.py (~L80-82, L191-198)",
            "block length 4; mask <|MASK|> 151669; no shift; block-causal": "JetAstra/SDAR: README.md (~L23-26, L100), generate.py (~L84-86, L132-140)",
            "AR source Qwen3-30B-A3B-Base": "JetAstra/SDAR: README.md (~L171, L213-217)",
        },
    )
)
