"""The published dense diffusion-LM families: Dream, LLaDA, DiffuGPT, DiffuLLaMA, dllm's A2D, SDAR,
Fast-dLLM v2 (see `ar2mdm.common.family.Family` for what each field means; docs/FORMATS.md has a
row per family with the sources).
"""

from __future__ import annotations

from ar2mdm.common.family import Family, add_family

DLLM = "ZHZisZZ/dllm"


add_family(
    Family(
        name="dream",
        title="Dream v0 (HKU NLP / Huawei)",
        base="qwen2",
        shift=True,
        examples=("Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B"),
        ar_sources=("Qwen/Qwen2.5-7B",),
        model_types=("dream",),
        architectures=("DreamModel",),
        mask_token="<|mask|>",
        mask_id=151666,
        tokenizer_class="Qwen2Tokenizer",
        gguf_arch="dream",
        sources={
            "model_type, mask_token_id": f"{DLLM}: dllm/pipelines/dream/models/configuration_dream.py",
            "weight names = Qwen2ForCausalLM's": f"{DLLM}: dllm/pipelines/dream/models/modeling_dream.py",
            "shift (logits[i-1] predict i)": f"{DLLM}: dllm/pipelines/dream/models/generation_utils.py (~L413)",
            "bidirectional (is_causal False)": f"{DLLM}: dllm/pipelines/dream/models/modeling_dream.py (~L262, L428)",
            "tokenizer: Qwen2 BPE (vocab.json + merges.txt)": f"{DLLM}: dllm/pipelines/dream/models/tokenization_dream.py",
            "GGUF arch 'dream', no Q/K permutation": "ggml-org/llama.cpp: conversion/dream.py",
        },
    )
)

add_family(
    Family(
        name="llada",
        title="LLaDA (GSAI-ML)",
        base="llama",
        shift=False,
        examples=("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct"),
        ar_sources=(),  # trained as an MDM from scratch: probed alone, no AR source
        model_types=("llada",),
        architectures=("LLaDAModelLM",),
        config_unmarked=("num_experts",),  # LLaDA-MoE's config says "llada" too
        config_renames={
            "d_model": "hidden_size",
            "n_heads": "num_attention_heads",
            "n_kv_heads": "num_key_value_heads",
            "n_layers": "num_hidden_layers",
            "mlp_hidden_size": "intermediate_size",
            "max_sequence_length": "max_position_embeddings",
            "weight_tying": "tie_word_embeddings",
        },
        config_set={"hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
        config_drop=(
            "mlp_ratio",
            "activation_type",
            "block_type",
            "block_group_size",
            "alibi",
            "alibi_bias_max",
            "rope",
            "rope_full_precision",
            "flash_attention",
            "attention_dropout",
            "residual_dropout",
            "embedding_dropout",
            "attention_layer_norm",
            "attention_layer_norm_with_affine",
            "layer_norm_type",
            "layer_norm_with_affine",
            "bias_for_layer_norm",
            "include_bias",
            "include_qkv_bias",
            "input_emb_norm",
            "scale_logits",
            "multi_query_attention",
            "init_device",
            "init_fn",
            "init_std",
            "init_cutoff_factor",
            "precision",
            "embedding_size",
            "clip_qkv",
            "use_cache",
        ),  # fmt: skip
        config_requires={
            "block_type": ("llama",),
            "layer_norm_type": ("rms",),
            "activation_type": ("silu",),
            "rope": (True,),
            "alibi": (False, None),
            "attention_layer_norm": (False, None),
            "input_emb_norm": (False, None),
            "scale_logits": (False, None),
            "include_bias": (False, None),
            "include_qkv_bias": (False, None),
            "block_group_size": (1, None),
            "clip_qkv": (None,),
        },
        key_mapping={
            r"^model\.transformer\.wte\.": "model.embed_tokens.",
            r"^model\.transformer\.ln_f\.": "model.norm.",
            r"^model\.transformer\.ff_out\.": "lm_head.",
            r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.": r"model.layers.\1.input_layernorm.",
            r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.": r"model.layers.\1.post_attention_layernorm.",
            r"^model\.transformer\.blocks\.(\d+)\.q_proj\.": r"model.layers.\1.self_attn.q_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.k_proj\.": r"model.layers.\1.self_attn.k_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.v_proj\.": r"model.layers.\1.self_attn.v_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.attn_out\.": r"model.layers.\1.self_attn.o_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.": r"model.layers.\1.mlp.gate_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.up_proj\.": r"model.layers.\1.mlp.up_proj.",
            r"^model\.transformer\.blocks\.(\d+)\.ff_out\.": r"model.layers.\1.mlp.down_proj.",
        },
        mask_token="<|mdm_mask|>",
        mask_id=126336,
        gguf_arch="llada",
        sources={
            "config keys (d_model, n_heads, ..., weight_tying)": f"{DLLM}: dllm/pipelines/llada/models/configuration_llada.py",
            "weight names; ff_proj gets SiLU (gate), up_proj (up), block ff_out (down)": f"{DLLM}: dllm/pipelines/llada/models/modeling_llada.py (LLaDALlamaBlock.forward)",
            "rotary: rotate-half, halves split (= HF Llama)": f"{DLLM}: dllm/pipelines/llada/models/modeling_llada.py (RotaryEmbedding)",
            "no shift (argmax at the masked position)": "ML-GSAI/LLaDA: generate.py",
            "mask id 126336": "ML-GSAI/LLaDA: GUIDELINES.md",
            "bidirectional (SDPA is_causal False)": f"{DLLM}: dllm/pipelines/llada/models/modeling_llada.py",
            "GGUF arch 'llada', Q/K permuted, diffusion.shift_logits false": "ggml-org/llama.cpp: conversion/llada.py",
        },
    )
)

add_family(
    Family(
        name="diffugpt",
        title="DiffuGPT (HKU NLP)",
        base="gpt2",
        shift=True,
        examples=("diffusionfamily/diffugpt-s", "diffusionfamily/diffugpt-m"),
        ar_sources=("openai-community/gpt2", "openai-community/gpt2-medium"),
        weight_prefix="denoise_model.",
        config_set={"tie_word_embeddings": True},
        config_drop=("task_specific_params",),
        key_mapping={r"^denoise_model\.": "transformer.", r"^embed_tokens\.": "transformer.wte."},
        mask_id=10541,  # diffugpt-s: the existing token "------------"; diffugpt-m's tokenizer states its own
        sources={
            "weights: embed_tokens + denoise_model.* (the training wrapper's names)": "HKUNLP/DiffuLLaMA: model.py (DiscreteDiffusionModel, ~L44-56)",
            "mask: s = existing id 10541, m = new token [¨M¨] 50257": "HKUNLP/DiffuLLaMA: LLaMA-Factory/src/llamafactory/model/loader.py (~L46-65, L144)",
            "shift (x0 shifted right by one)": "HKUNLP/DiffuLLaMA: model.py generate_samples (~L118-121)",
            "bidirectional (all-zero 4D mask, causal buffer filled)": "HKUNLP/DiffuLLaMA: attention_patch.py, model.py (~L47)",
        },
    )
)

add_family(
    Family(
        name="diffullama",
        title="DiffuLLaMA (HKU NLP)",
        base="llama",
        shift=True,
        examples=("diffusionfamily/diffullama",),
        ar_sources=("meta-llama/Llama-2-7b-hf",),
        tokenizer_mask="ти",
        mask_token="ти",
        mask_id=811,
        sources={
            "plain LlamaForCausalLM folder (config and weight names)": "HKUNLP/DiffuLLaMA: inf_diffullama.py (~L32-37)",
            "mask: existing token 'ти' = 811": "HKUNLP/DiffuLLaMA: DiffuLLaMA-training/train.py (~L304); issue #11",
            "shift": "HKUNLP/DiffuLLaMA: DiffuLLaMA-training/train.py (~L229-231)",
            "bidirectional": "HKUNLP/DiffuLLaMA: attention_patch.py; DiffuLLaMA-training/model_llama.py (~L254)",
        },
    )
)

for _base, _model_type in (("qwen3", "a2d-qwen3"), ("qwen2", "a2d-qwen2"), ("llama", "a2d-llama")):
    add_family(
        Family(
            name=_model_type,
            title=f"dllm A2D ({_base}; MDLM, or BD3LM with block size 32)",
            base=_base,
            shift=False,
            examples=(
                ("dllm-hub/Qwen3-0.6B-diffusion-mdlm-v0.1", "dllm-hub/Qwen3-0.6B-diffusion-bd3lm-v0.1")
                if _base == "qwen3"
                else ("dllm-hub/Qwen2.5-Coder-0.5B-Instruct-diffusion-mdlm-v0.1",)
                if _base == "qwen2"
                else ()
            ),
            ar_sources=("Qwen/Qwen3-0.6B",)
            if _base == "qwen3"
            else ("Qwen/Qwen2.5-Coder-0.5B-Instruct",)
            if _base == "qwen2"
            else (),
            model_types=(_model_type,),
            architectures=(f"A2D{ {'qwen3': 'Qwen3', 'qwen2': 'Qwen2', 'llama': 'Llama'}[_base] }LMHeadModel",),
            mask_token="<|mask|>",
            tokenizer_class="Qwen2Tokenizer" if _base.startswith("qwen") else "",
            # BD3LM checkpoints do not record their block size; dllm's published recipe uses 32.
            block_size_from_name=r"bd3lm",
            named_block_size=32,
            sources={
                "model_type a2d-*, weights = the base *ForCausalLM's": f"{DLLM}: dllm/pipelines/a2d/models/{_base}/modeling_{_base}.py",
                "mask token <|mask|> added as a special token": f"{DLLM}: dllm/utils/models.py (~L203-224)",
                "no shift (right_shift_logits False)": f"{DLLM}: dllm/core/trainers/mdlm.py (~L30)",
                "BD3LM block size 32 (training argument only)": f"{DLLM}: examples/a2d/README.md; dllm/core/trainers/bd3lm.py",
            },
        )
    )

add_family(
    Family(
        name="sdar",
        title="SDAR (JetAstra), block diffusion",
        base="qwen3",
        shift=False,
        examples=("JetLM/SDAR-1.7B-Chat", "JetLM/SDAR-4B-Chat", "JetLM/SDAR-8B-Chat"),
        ar_sources=("Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B"),
        model_types=("sdar",),
        architectures=("SDARForCausalLM",),
        config_drop=(
            "debug",
            "ep_size",
            "fuse_cross_entropy",
            "micro_forward",
            "skip_checkpoint",
            "use_deepep",
            "block_size",
        ),
        mask_token="<|MASK|>",
        mask_id=151669,
        block_size=4,
        block_size_keys=("block_size",),
        block_size_from_name=r"-b(\d+)(?:$|[-_])",
        tokenizer_class="Qwen2Tokenizer",
        sources={
            "model_type sdar, weights = Qwen3ForCausalLM's": "JetAstra/SDAR: training/model/SDAR-4B-Chat/config.json, model.safetensors.index.json",
            "mask <|MASK|> 151669; block length 4 (variants -b8 ... -b64)": "JetAstra/SDAR: README.md, generate.py (~L270)",
            "no shift": "JetAstra/SDAR: generate.py (~L131-145)",
            "block-causal attention from position 0": "JetAstra/SDAR: generate.py (~L79-93)",
        },
    )
)

add_family(
    Family(
        name="fast-dllm-v2",
        title="Fast-dLLM v2 (NVIDIA), block diffusion",
        base="qwen2",
        shift=True,
        examples=("Efficient-Large-Model/Fast_dLLM_v2_7B", "Efficient-Large-Model/Fast_dLLM_v2_1.5B"),
        ar_sources=("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
        model_types=("fast_dllm_qwen",),
        architectures=("Fast_dLLM_QwenForCausalLM",),
        config_drop=("bd_size", "conplemenrary_mask"),
        mask_token="|<MASK>|",
        mask_id=151665,
        block_size=32,
        block_size_keys=("bd_size",),
        tokenizer_class="Qwen2Tokenizer",
        sources={
            "model_type, bd_size 32, weights = Qwen2ForCausalLM's": "Efficient-Large-Model/Fast_dLLM_v2_7B: config.json; sgl-project/sglang: python/sglang/srt/models/fast_dllm_v2.py",
            "mask |<MASK>| 151665 (hard-coded)": "NVlabs/Fast-dLLM: v2/train_scripts/finetune.py (~L57), v2/generation_functions.py (~L7)",
            "shift (logits cat-shifted by one)": "NVlabs/Fast-dLLM: v2/generation_functions.py (~L105)",
            "block-causal (q//32 >= kv//32) from position 0": "NVlabs/Fast-dLLM v2 modeling.py (eval_block_diff_mask), as mirrored in wangziyannb/Fast-dLLM: v2/modeling_ori.py",
        },
    )
)
