"""The field's published diffusion LMs: what each family's files look like and what they mean.

Researchers come with checkpoints as they downloaded them: Dream, LLaDA, DiffuGPT, DiffuLLaMA,
dllm's A2D models, SDAR, Fast-dLLM v2, and the mixtures of experts LLaDA-MoE, LLaDA2.x, RND1 and
SDAR-MoE. Each ships its own modeling code (`auto_map`), but every one of them is, numerically, a
transformers architecture (Qwen2, Qwen3, Llama, GPT-2, Qwen3-MoE, GLM-4-MoE) with the causal mask
removed (or made block-causal) and, in some, the weights renamed or fused tensors split. A `Family` states
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

This module is detection (`detect_family`) over the families of `families_dense` and
`families_moe`; it imports nothing heavy, so
`ar2mdm.common.metadata.checkpoint_kind` can tell a published MDM from an ARM before anything is loaded.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from ar2mdm.common import families_dense, families_moe  # noqa: F401  (they register the families)
from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.family import COMMON_DROP, FAMILIES, Family

__all__ = ["COMMON_DROP", "FAMILIES", "FORMAT_SEPARATOR", "Family"]

# Prefix a source with "FAMILY:" to say which family a folder is when its files do not
# (DiffuLLaMA's config is a plain Llama config): "diffullama:/models/diffullama".
FORMAT_SEPARATOR = ":"


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
    for family in FAMILIES.values():  # an architecture names one family
        if archs & set(family.architectures):
            return family
    for family in FAMILIES.values():  # a model_type may be shared (LLaDA-MoE says "llada"): marks decide
        if (
            model_type in family.model_types
            and all(k in raw for k in family.config_marks)
            and not any(k in raw for k in family.config_unmarked)
        ):
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
