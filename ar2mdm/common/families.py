"""The field's published diffusion LMs: what each family's files look like and what they mean.

Researchers come with checkpoints as they downloaded them: Dream, LLaDA, DiffuGPT, DiffuLLaMA,
dllm's A2D models, SDAR, Fast-dLLM v2. Each ships its own modeling code (`auto_map`), but every
one of them is, numerically, a transformers architecture (Qwen2, Qwen3, Llama, GPT-2) with the
causal mask removed (or made block-causal) and, in some, the weights renamed. A `Family` states
those facts as data, so `conversion.published` can read any of them into transformers' own class
without running the checkpoint's code:

- how to recognise it (config.json `model_type` / `architectures`, or a weight-name prefix or a
  tokenizer mark where the config is a plain transformers one);
- the transformers architecture it is (`base`) and how its config keys and weight names map onto
  that architecture's;
- shift (whether logits[i-1] predict token i), mask token (config key, tokenizer token, or the
  published id), attention (bidirectional, or block-causal with a block size), the tokenizer class
  to read its files with.

Where a checkpoint states a fact (a `mask_token_id` in its config, a tokenizer's mask token, a
`bd_size`), the checkpoint wins; the table's values are the published defaults. Every fact cites
the public file it was read from in docs/FORMATS.md (`Family.sources` names them).

This module is data plus detection (`detect_family`); it imports nothing heavy, so
`ar2mdm.common.metadata.checkpoint_kind` can tell a published MDM from an ARM before anything is loaded.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import CheckpointError

# Prefix a source with "FAMILY:" to say which family a folder is when its files do not
# (DiffuLLaMA's config is a plain Llama config): "diffullama:/models/diffullama".
FORMAT_SEPARATOR = ":"


@dataclass(frozen=True)
class Family:
    """One published family of diffusion LMs (docs/FORMATS.md has a row per family).

    name: the short name used in `source_format` and as a "NAME:PATH" prefix.
    title: how people call it; examples: published checkpoints (hub ids) and the AR model each was
    converted from (`ar_sources`), for the README and error messages.
    model_types / architectures: config.json values that identify it (compared case-insensitively).
    weight_prefix: a weight-name prefix that identifies it (DiffuGPT's "denoise_model.").
    tokenizer_mask: a tokenizer mask-token string that identifies it when the config cannot
    (DiffuLLaMA's "ти" on a plain Llama config).
    base: the transformers `model_type` it loads into (qwen2, qwen3, llama, gpt2).
    config_renames: family config key -> transformers key; config_set: values forced (e.g.
    hidden_act); config_drop: keys removed before building the transformers config;
    config_requires: key -> allowed values, anything else is a CheckpointError (the mapping
    would be wrong for it).
    key_mapping: regex -> replacement on weight names (transformers `key_mapping`).
    shift: logits at i-1 predict token i (Dream, DiffuGPT/DiffuLLaMA, Fast-dLLM v2) or at i
    (LLaDA, A2D, SDAR).
    mask_id_keys: config keys stating the mask id; mask_token: the mask token's text in the
    family's tokenizer; mask_id: the published id, used when neither the config nor the tokenizer
    says.
    block_size: None = bidirectional attention; an int = block diffusion (bidirectional within
    blocks, causal across them) with this published block size; block_size_keys: config keys
    stating it; block_size_from_name: a regex on the folder name whose group 1 is the block size
    (SDAR's "-b16"), or whose match means `named_block_size` (dllm's "-bd3lm": 32).
    tokenizer_class: the transformers tokenizer class that reads the family's tokenizer files (its
    own tokenizer_config may name custom code); "" = AutoTokenizer.
    gguf_arch: llama.cpp's architecture name for the family's GGUF files ("" = none).
    sources: fact -> "repository: path" it was read from.
    """

    name: str
    title: str
    base: str
    shift: bool
    examples: tuple[str, ...] = ()
    ar_sources: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    weight_prefix: str = ""
    tokenizer_mask: str = ""
    config_renames: dict[str, str] = field(default_factory=dict)
    config_set: dict[str, Any] = field(default_factory=dict)
    config_drop: tuple[str, ...] = ()
    config_requires: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    key_mapping: dict[str, str] = field(default_factory=dict)
    mask_id_keys: tuple[str, ...] = ("mask_token_id",)
    mask_token: str | None = None
    mask_id: int | None = None
    block_size: int | None = None
    block_size_keys: tuple[str, ...] = ()
    block_size_from_name: str = ""
    named_block_size: int | None = None
    tokenizer_class: str = ""
    gguf_arch: str = ""
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def attention(self) -> str:
        """'bidirectional' or 'block-causal' (block diffusion)."""
        return "bidirectional" if self.block_size is None and not self.block_size_keys else "block-causal"


# Keys of remote-code configs that mean nothing to transformers' classes (or would switch their
# attention kernel: SDAR's "flex_attention"); dropped from every family's config.
COMMON_DROP = (
    "auto_map",
    "architectures",
    "model_type",
    "attn_implementation",
    "_name_or_path",
    "transformers_version",
)

DLLM = "ZHZisZZ/dllm"
FAMILIES: dict[str, Family] = {}


def _add(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


_add(
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

_add(
    Family(
        name="llada",
        title="LLaDA (GSAI-ML)",
        base="llama",
        shift=False,
        examples=("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct"),
        ar_sources=(),  # trained as an MDM from scratch: probed alone, no AR source
        model_types=("llada",),
        architectures=("LLaDAModelLM",),
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

_add(
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

_add(
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
    _add(
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

_add(
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

_add(
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


# --- detection --------------------------------------------------------------------------------


def family_named(name: str) -> Family:
    """The family called `name`; CheckpointError listing the known ones otherwise."""
    key = name.strip().lower()
    if key not in FAMILIES:
        raise CheckpointError(f"unknown checkpoint family {name!r}; ar2mdm reads: {', '.join(FAMILIES)}.")
    return FAMILIES[key]


# A "FAMILY:" prefix as users write one: a word of two or more letters, digits, - or _ (a single
# letter before ":" is a Windows drive).
_FAMILY_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]+")


def split_format(source: str) -> tuple[Family | None, str]:
    """(the dream Family, "/m/x") from "dream:/m/x" when the prefix is a known family (any case);
    (None, source) for a source without such a prefix.

    Raises CheckpointError for a prefix written like a family name ("qwerty:/m/x") that names
    none, listing the families, unless the whole source is an existing path (a folder whose name
    holds a colon) or reads like a URL ("https://..."): it would otherwise be read as a path that
    does not exist, and the message would not say that the family was the mistake.
    """
    text = str(source)
    head, sep, rest = text.partition(FORMAT_SEPARATOR)
    key = head.strip().lower()
    if sep and key in FAMILIES and rest:
        return FAMILIES[key], rest
    if (
        sep
        and _FAMILY_WORD.fullmatch(head.strip())
        and not rest.startswith("//")
        and not Path(text).expanduser().exists()
    ):
        raise CheckpointError(
            f"{text!r}: {head.strip()!r} is not a checkpoint family ar2mdm knows, so FAMILY:PATH cannot be "
            f"read. The families are: {supported_list()}. Write one of them before the colon "
            f"(e.g. {next(iter(FAMILIES))}:{rest or 'PATH'}), or pass the path alone when its files say what it is."
        )
    return None, text


def read_config(folder: Path) -> dict[str, Any] | None:
    """config.json as a dict, or None when it is missing or not a JSON object (loaders report that)."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def detect_family(folder: str | Path) -> Family | None:
    """The published family whose files `folder` holds, or None (an ar2mdm folder, a plain HF
    folder, a file, or a folder that does not exist).

    Tried in order: config.json `model_type` and `architectures`; a weight-name prefix in the
    safetensors headers (DiffuGPT); the tokenizer's mask token (DiffuLLaMA). Reads config.json,
    the first safetensors header and the tokenizer's JSON files only.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    raw = read_config(folder)
    if raw is None:
        return None
    model_type = str(raw.get("model_type", "")).lower()
    archs = {str(a) for a in raw.get("architectures") or []}
    for family in FAMILIES.values():
        if model_type in family.model_types or archs & set(family.architectures):
            return family
    prefixes = {f.weight_prefix for f in FAMILIES.values() if f.weight_prefix}
    if prefixes:
        names = _first_weight_names(folder)
        for family in FAMILIES.values():
            if family.weight_prefix and any(n.startswith(family.weight_prefix) for n in names):
                return family
    mask = tokenizer_mask_token(folder)
    for family in FAMILIES.values():
        if family.tokenizer_mask and mask == family.tokenizer_mask and model_type == family.base:
            return family
    return None


def _first_weight_names(folder: Path) -> list[str]:
    """Tensor names in the header of the folder's first safetensors file ([] if unreadable)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return []
    try:
        return [k for k in safetensors_header(files[0]) if k != "__metadata__"]
    except (OSError, ValueError, struct.error):
        return []


def safetensors_header(file: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets; and
    "__metadata__"), reading nothing else. Raises OSError, ValueError or struct.error when the
    file is not one."""
    with Path(file).open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{file}: the safetensors header is not a JSON object")
    return header


def tokenizer_mask_token(folder: Path) -> str | None:
    """The mask token's text as special_tokens_map.json or tokenizer_config.json state it, or None."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            data = json.loads((Path(folder) / name).read_text())
        except (OSError, ValueError):
            continue
        value = data.get("mask_token") if isinstance(data, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def block_size_from_name(family: Family, folder: Path) -> int | None:
    """The block size a folder's name states for `family` (SDAR's "-b16", dllm's "-bd3lm"), or None."""
    if not family.block_size_from_name:
        return None
    match = re.search(family.block_size_from_name, Path(folder).name, flags=re.IGNORECASE)
    if match is None:
        return None
    if match.groups() and match.group(1):
        return int(match.group(1))
    return family.named_block_size


def supported_list() -> str:
    """'dream (Dream v0 ...), llada (...), ...': the families, for error messages."""
    return "; ".join(f"{f.name} ({f.title})" for f in FAMILIES.values())


def read_gguf_architecture(file: str | Path) -> str:
    """A GGUF file's `general.architecture` ("dream", "llada", "llama", ...); raises whatever the
    `gguf` reader raises for a file it cannot read (`conversion.checkpoints.gguf_architecture`
    turns that into a CheckpointError)."""
    from gguf import GGUFReader  # only GGUF sources need it

    field_ = GGUFReader(Path(file)).fields["general.architecture"]
    return bytes(field_.parts[field_.data[0]]).decode("utf-8")


def gguf_architecture_of(file: str | Path) -> str | None:
    """`read_gguf_architecture`, or None if the file is unreadable (the loaders report why)."""
    try:
        return read_gguf_architecture(file)
    except Exception:  # not a GGUF, truncated: whatever the reader raises
        return None


def gguf_family(file: str | Path) -> Family | None:
    """The published family whose GGUF architecture `file` has (Dream, LLaDA), or None."""
    path = Path(file)
    if not (path.is_file() and path.suffix.lower() == ".gguf"):
        return None
    arch = gguf_architecture_of(path)
    return next((f for f in FAMILIES.values() if f.gguf_arch and f.gguf_arch == arch), None)
