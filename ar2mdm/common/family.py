"""`Family`: what one published family of diffusion LMs looks like, as data; the registry of them.

The families themselves are in `ar2mdm.common.families_dense` and `ar2mdm.common.families_moe`;
`ar2mdm.common.families` imports both and recognises a folder's family (`detect_family`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    config_marks / config_unmarked: config keys that must be present / absent for a `model_types`
    match (LLaDA-MoE declares model_type "llada", like dense LLaDA; its `num_experts` tells them
    apart). An `architectures` match needs no marks.
    base: the transformers `model_type` it loads into (qwen2, qwen3, llama, gpt2).
    config_renames: family config key -> transformers key; config_set: values forced (e.g.
    hidden_act); config_drop: keys removed before building the transformers config;
    config_requires: key -> allowed values, anything else is a CheckpointError (the mapping
    would be wrong for it).
    config_derive: the name of a rule in `conversion.published.DERIVATIONS` computing config
    values no rename can (LLaDA-MoE's per-layer `moe_layer_freq` -> Qwen3-MoE's `mlp_only_layers`).
    key_mapping: regex -> replacement on weight names (transformers `key_mapping`). Per-expert
    tensors (`mlp.experts.{e}.gate_proj`, ...) are fused into transformers 5.x's 3D experts by
    transformers' own conversion mapping of the `base` model type; a base whose mapping also
    renames and splits (SarvamMoE's, for Ling-style names and a fused query_key_value) needs none.
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
    config_marks: tuple[str, ...] = ()
    config_unmarked: tuple[str, ...] = ()
    config_renames: dict[str, str] = field(default_factory=dict)
    config_set: dict[str, Any] = field(default_factory=dict)
    config_drop: tuple[str, ...] = ()
    config_requires: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    config_derive: str = ""
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

FAMILIES: dict[str, Family] = {}


def add_family(family: Family) -> Family:
    """Register `family` under its name (the order of registration is the order of detection)."""
    FAMILIES[family.name] = family
    return family
