"""Tiny random replicas of the field's published diffusion LMs, in each family's own file layout.

Each builder starts from a tiny transformers model of the family's architecture (conftest's
`tiny_config`: 2 layers, d_model 32), and writes it the way the family's checkpoints are
published: its config.json keys (model_type, architectures, auto_map, renamed and extra keys),
its weight names, shapes and dtype, its tokenizer files and special tokens (docs/FORMATS.md cites
the source of each). The same tensors are also kept as a plain transformers folder
(`Replica.reference`), written by this file's own inverse of the family's renaming, so a test can
compare the loader's logits with an independent forward of the same weights.

Mask tokens are added to the tiny vocabulary (their published ids, e.g. Dream's 151666, would need
a 150k-row embedding); the published ids are what the family table holds for checkpoints whose
files state none, which `test_published` checks separately.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from conftest import add_gguf_vocab, tiny_config, tiny_tokenizer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


@dataclass
class Replica:
    """A replica folder (`path`), the plain transformers folder of the same tensors (`reference`),
    and what the loader must find: mask id, shift, block size, the base model_type."""

    family: str
    path: Path
    reference: Path
    mask_id: int
    shift: bool
    block_size: int | None
    base: str


def _tokenizer(
    extra_special: list[str], *, mask: str | None = None, regular: list[str] = ()
) -> PreTrainedTokenizerFast:
    tok = tiny_tokenizer()
    if regular:
        tok.add_tokens(list(regular))
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": extra_special})
    if mask is not None:
        tok.add_special_tokens({"mask_token": mask})
    return tok


def _base_model(base: str, vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(base, vocab), dtype=torch.float32)


def _write_reference(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _config_of(model) -> dict:
    cfg = model.config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "is_causal"):
        cfg.pop(key, None)
    return cfg


def _save(folder: Path, tensors: dict[str, torch.Tensor], config: dict, tok, *, tokenizer_json: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    if not tokenizer_json:  # the slow layout: vocab.json + merges.txt only
        data = json.loads((folder / "tokenizer.json").read_text())
        vocab = data["model"]["vocab"]
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        (folder / "tokenizer.json").unlink()


def _patch_tokenizer_config(folder: Path, **entries) -> None:
    path = folder / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def _write_special_tokens_map(folder: Path, tok, **extra: str) -> None:
    """special_tokens_map.json as transformers 4.x wrote it (the published folders carry one)."""
    roles = {f"{r}_token": getattr(tok, f"{r}_token") for r in ("bos", "eos", "unk", "pad")}
    data = {k: v for k, v in {**roles, **extra}.items() if v is not None}
    (folder / "special_tokens_map.json").write_text(json.dumps(data, ensure_ascii=False, indent=2))


# --- families ---------------------------------------------------------------------------------


def dream(root: Path, seed: int = 0) -> Replica:
    """Dream v0: Qwen2 names, model_type "Dream", mask_token_id in the config, <|mask|> and
    <|beginoftext|> special tokens, a slow tokenizer (vocab.json + merges.txt) naming custom code."""
    tok = _tokenizer(["<|beginoftext|>"], mask="<|mask|>")
    model = _base_model("qwen2", len(tok), seed)
    ref = _write_reference(model, tok, root / "dream-reference")
    mask_id = tok.mask_token_id
    config = {
        **_config_of(model),
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "mask_token_id": mask_id,
        "use_cache": False,
    }
    path = root / "Dream-v0-Base-tiny"
    _save(path, dict(model.state_dict()), config, tok, tokenizer_json=False)
    _patch_tokenizer_config(
        path,
        tokenizer_class="DreamTokenizer",
        auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        bos_token="<|beginoftext|>",
    )
    return Replica("dream", path, ref, mask_id, True, None, "qwen2")


LLADA_NAMES = {
    "model.embed_tokens.weight": "model.transformer.wte.weight",
    "model.norm.weight": "model.transformer.ln_f.weight",
    "lm_head.weight": "model.transformer.ff_out.weight",
}
LLADA_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ff_norm",
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "attn_out",
    "mlp.gate_proj": "ff_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "ff_out",
}


def llada_name(name: str) -> str:
    """The LLaDA checkpoint name of a transformers Llama weight name."""
    if name in LLADA_NAMES:
        return LLADA_NAMES[name]
    _, _, layer, rest = name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"model.transformer.blocks.{layer}.{LLADA_LAYER[module]}.weight"


def llada(root: Path, seed: int = 0) -> Replica:
    """LLaDA: OLMo-style config keys, model.transformer.* weight names, <|mdm_mask|> as an
    additional special token (the tokenizer's mask_token unset), mask_token_id in the config."""
    tok = _tokenizer(["<|mdm_mask|>"])
    model = _base_model("llama", len(tok), seed)
    c = model.config
    ref = _write_reference(model, tok, root / "llada-reference")
    mask_id = tok.convert_tokens_to_ids("<|mdm_mask|>")
    config = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "d_model": c.hidden_size,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "n_layers": c.num_hidden_layers,
        "mlp_hidden_size": c.intermediate_size,
        "mlp_ratio": 4,
        "activation_type": "silu",
        "block_type": "llama",
        "block_group_size": 1,
        "alibi": False,
        "alibi_bias_max": 8.0,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": c.rope_parameters["rope_theta"],
        "flash_attention": False,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "rms_norm_eps": c.rms_norm_eps,
        "include_bias": False,
        "include_qkv_bias": False,
        "input_emb_norm": False,
        "scale_logits": False,
        "vocab_size": len(tok),
        "embedding_size": len(tok),
        "weight_tying": False,
        "max_sequence_length": c.max_position_embeddings,
        "mask_token_id": mask_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "precision": "amp_bf16",
        "use_cache": False,
    }
    tensors = {llada_name(k): v for k, v in model.state_dict().items()}
    path = root / "LLaDA-8B-Base-tiny"
    _save(path, tensors, config, tok)
    _patch_tokenizer_config(path, tokenizer_class="PreTrainedTokenizerFast")
    return Replica("llada", path, ref, mask_id, False, None, "llama")


def diffugpt(root: Path, seed: int = 0) -> Replica:
    """DiffuGPT-S: the training wrapper's names (embed_tokens + denoise_model.*), fp16, tied head
    stored once, an existing token declared as the mask in special_tokens_map.json."""
    tok = _tokenizer([], mask=None)
    model = _base_model("gpt2", len(tok), seed)
    mask_text = "why"  # an existing regular token, as diffugpt-s reuses "------------" (10541)
    ref_tok = tiny_tokenizer()
    # fp16 on disk: the reference holds the same rounded values
    model = model.half().float()
    ref = _write_reference(model, ref_tok, root / "diffugpt-reference")
    tensors = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied, stored once as embed_tokens
        if k == "transformer.wte.weight":
            tensors["embed_tokens.weight"] = v.half()
        else:
            tensors["denoise_model." + k.removeprefix("transformer.")] = v.half()
    config = {**_config_of(model), "architectures": ["DiscreteDiffusionModel"], "model_type": "gpt2"}
    config["task_specific_params"] = {"text-generation": {"do_sample": True, "max_length": 64}}
    path = root / "diffugpt-s-tiny"
    _save(path, tensors, config, ref_tok)
    _write_special_tokens_map(path, ref_tok, mask_token=mask_text)
    mask_id = ref_tok.convert_tokens_to_ids(mask_text)
    return Replica("diffugpt", path, ref, mask_id, True, None, "gpt2")


def diffullama(root: Path, seed: int = 0) -> Replica:
    """DiffuLLaMA: a plain LlamaForCausalLM folder (bf16) whose tokenizer declares the existing
    token "ти" as its mask."""
    tok = _tokenizer([], regular=["ти"])
    model = _base_model("llama", len(tok), seed).to(torch.bfloat16).float()
    ref = _write_reference(model, tok, root / "diffullama-reference")
    path = root / "diffullama-tiny"
    path.mkdir(parents=True)
    model.to(torch.bfloat16).save_pretrained(path)
    model.float()
    tok.save_pretrained(path)
    _write_special_tokens_map(path, tok, mask_token="ти", sep_token="========")
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    return Replica("diffullama", path, ref, tok.convert_tokens_to_ids("ти"), True, None, "llama")


def a2d(root: Path, seed: int = 0, *, bd3lm: bool = False) -> Replica:
    """dllm A2D (Qwen3): model_type a2d-qwen3, tied embeddings (no lm_head stored), <|mask|> added
    as the mask token; "-bd3lm" in the folder name for the block-diffusion variant."""
    tok = _tokenizer([], mask="<|mask|>")
    torch.manual_seed(seed)
    cfg = tiny_config("qwen3", len(tok))
    cfg.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    ref = _write_reference(model, tok, root / f"a2d{'-bd3lm' if bd3lm else ''}-reference")
    tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    config = {**_config_of(model), "architectures": ["A2DQwen3LMHeadModel"], "model_type": "a2d-qwen3"}
    path = root / f"Qwen3-tiny-diffusion-{'bd3lm' if bd3lm else 'mdlm'}-v0.1"
    _save(path, tensors, config, tok)
    return Replica("a2d-qwen3", path, ref, tok.mask_token_id, False, 32 if bd3lm else None, "qwen3")


def sdar(root: Path, seed: int = 0) -> Replica:
    """SDAR: model_type sdar with auto_map, flex_attention and training keys in the config, Qwen3
    names, untied head, <|MASK|> the tokenizer's mask token, block length 4 (not in the config)."""
    tok = _tokenizer([], mask="<|MASK|>")
    model = _base_model("qwen3", len(tok), seed)
    ref = _write_reference(model, tok, root / "sdar-reference")
    config = {
        **_config_of(model),
        "architectures": ["SDARForCausalLM"],
        "model_type": "sdar",
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "attn_implementation": "flex_attention",
        "debug": False,
        "ep_size": 1,
        "fuse_cross_entropy": True,
        "micro_forward": False,
        "skip_checkpoint": False,
        "use_deepep": False,
    }
    path = root / "SDAR-tiny-Chat"
    _save(path, dict(model.state_dict()), config, tok)
    _patch_tokenizer_config(path, tokenizer_class="Qwen2Tokenizer")
    return Replica("sdar", path, ref, tok.mask_token_id, False, 4, "qwen3")


def fast_dllm_v2(root: Path, seed: int = 0, *, bd_size: int = 4) -> Replica:
    """Fast-dLLM v2: model_type Fast_dLLM_Qwen, bd_size (block size) and the misspelt
    conplemenrary_mask key, Qwen2 names, "|<MASK>|" an additional special token (no mask_token)."""
    tok = _tokenizer(["|<MASK>|"])
    model = _base_model("qwen2", len(tok), seed)
    ref = _write_reference(model, tok, root / "fast-dllm-v2-reference")
    config = {
        **_config_of(model),
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "model_type": "Fast_dLLM_Qwen",
        "auto_map": {
            "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
            "AutoModel": "modeling.Fast_dLLM_QwenModel",
            "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
        },
        "bd_size": bd_size,
        "conplemenrary_mask": True,
    }
    path = root / "Fast_dLLM_v2_tiny"
    _save(path, dict(model.state_dict()), config, tok)
    return Replica("fast-dllm-v2", path, ref, tok.convert_tokens_to_ids("|<MASK>|"), True, bd_size, "qwen2")


BUILDERS = {
    "dream": dream,
    "llada": llada,
    "diffugpt": diffugpt,
    "diffullama": diffullama,
    "a2d-qwen3": a2d,
    "a2d-bd3lm": lambda root, seed=0: a2d(root, seed, bd3lm=True),
    "sdar": sdar,
    "fast-dllm-v2": fast_dllm_v2,
}


def ar_partner(replica: Replica, root: Path, seed: int = 1) -> Path:
    """An ARM with the replica's architecture and exactly its tokenizer (the published pairs share
    one), random weights of another seed: the --ar of a compare test."""
    out = root / f"{replica.family}-ar"
    if out.exists():
        return out
    ref = AutoModelForCausalLM.from_pretrained(replica.reference)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(ref.config, dtype=torch.float32)
    model.save_pretrained(out)
    for name in replica.reference.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
            shutil.copy(name, out / name.name)
    return out


# --- GGUF -------------------------------------------------------------------------------------


def write_diffusion_gguf(replica: Replica, out_file: Path, *, with_mask: bool = True, shift_key: bool = True) -> Path:
    """Write a Dream or LLaDA replica as llama.cpp's converter does: arch "dream"/"llada",
    `{arch}.*` hyper-parameters, non-causal attention, the byte-level BPE vocabulary with its mask
    token id, `diffusion.shift_logits` false for LLaDA (none for Dream), and tensors under llama.cpp
    names, named from the family's own weight names with gguf's DREAM / LLADA maps; LLaDA's q/k
    rows permuted to llama.cpp's interleaved rotary layout."""
    arch = replica.family
    cfg = json.loads((replica.reference / "config.json").read_text())
    tok = json.loads((replica.reference / "tokenizer.json").read_text())
    n_layers, n_head, n_kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out_file), arch)
    writer.add_block_count(n_layers)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    writer.add_causal_attention(False)
    if arch == "llada" and shift_key:
        writer.add_diffusion_shift_logits(False)
    add_gguf_vocab(writer, tok)
    if with_mask:
        writer.add_mask_token_id(replica.mask_id)
    family_arch = gguf.MODEL_ARCH.LLADA if arch == "llada" else gguf.MODEL_ARCH.DREAM
    names = gguf.get_tensor_name_map(family_arch, n_layers)
    source = load_file(replica.path / "model.safetensors")

    def permute(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    for name, tensor in source.items():
        array = tensor.float().numpy()
        if arch == "llada" and name.endswith(".q_proj.weight"):
            array = permute(array, n_head)
        elif arch == "llada" and name.endswith(".k_proj.weight"):
            array = permute(array, n_kv)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
