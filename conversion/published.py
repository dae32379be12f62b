"""Reading the field's published diffusion LMs into transformers' own classes, no remote code.

`load_published(folder, family)` turns a Dream, LLaDA, DiffuGPT, DiffuLLaMA, A2D, SDAR,
Fast-dLLM v2, LLaDA-MoE, LLaDA2.x, RND1 or SDAR-MoE folder, as users download it, into the same
`Loaded(model, tokenizer, meta)` every loader returns: the model is the family's transformers
architecture (`Family.base`: Qwen2, Qwen3, Llama, GPT-2, Qwen3-MoE, GLM-4-MoE) made bidirectional (`ar2mdm.diffusion.attention.make_bidirectional`; block-diffusion
families get their block size in `meta.block_size`, and the probe and samplers apply the
block-causal mask), and `meta` is an MDM's: mask id, shift, block size, `source_format` (the
family's name), and in `extra` where each fact came from (the checkpoint's config, its tokenizer,
the folder name, or the family table).

Steps, each failing with a CheckpointError that says what is wrong and what to do:
1. config.json -> the base architecture's config (`Family.config_renames`, `config_set`,
   `config_drop`; `config_requires` refuses settings the mapping does not cover);
2. weights: safetensors only, not truncated; their parameter count (from the headers) is
   announced for large loads and checked against the free GPU memory (`conversion.memory`);
3. from_pretrained streams the weights (built on the meta device, each tensor read from the
   memory-mapped file once, straight to `device` in `dtype`) with the family's `key_mapping`; a
   weight the model needs that is missing, or a tensor the mapping does not place, is an error,
   never a random initialisation or a silently dropped weight;
4. the tokenizer (its vocabulary files are required before the weights are read,
   `check_tokenizer_files`; one with far fewer tokens than the embedding has rows is refused)
   is read with the family's tokenizer class (its own tokenizer_config may name
   custom code, which never runs); 5. the mask id: config key, else the tokenizer's mask token,
   else the published id; a config and a tokenizer that disagree, or an id outside the embedding,
   is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import COMMON_DROP, Family, block_size_from_name, read_config
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.diffusion.attention import make_bidirectional
from conversion.hf_folder import Loaded, check_experts, check_safetensors, fill_pad_token, safetensors_files
from conversion.memory import check_fits, safetensors_summary


def _llada_moe(raw: dict[str, Any], values: dict[str, Any]) -> None:
    """LLaDA-MoE: `moe_layer_freq` (one entry per layer, 0 = dense MLP) as Qwen3-MoE's
    `mlp_only_layers`; head_dim = hidden_size / heads (its config states none)."""
    freq = raw.get("moe_layer_freq")
    if isinstance(freq, list):
        values["mlp_only_layers"] = [i for i, f in enumerate(freq) if not f]
    if values.get("head_dim") is None and raw.get("hidden_size") and raw.get("num_attention_heads"):
        values["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]


def _llada2(raw: dict[str, Any], values: dict[str, Any]) -> None:
    """LLaDA2.x: num_key_value_heads 0 means as many as query heads (LLaDA2.1's config)."""
    if not values.get("num_key_value_heads"):
        values["num_key_value_heads"] = raw.get("num_attention_heads")


# Family.config_derive -> the rule filling config values no rename can (raw config, values so far).
DERIVATIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {"llada-moe": _llada_moe, "llada2": _llada2}


def family_config(family: Family, raw: dict[str, Any], folder: Path) -> transformers.PretrainedConfig:
    """The transformers config (of `family.base`) that describes the family's config.json `raw`."""
    bad = {key: raw[key] for key, allowed in family.config_requires.items() if key in raw and raw[key] not in allowed}
    if bad:
        raise CheckpointError(
            f"{folder / 'config.json'} sets {bad}, which ar2mdm's {family.name} reader does not map onto "
            f"{family.base} (it reads {', '.join(f'{k}={v[0]!r}' for k, v in family.config_requires.items())}). "
            "This variant of the family needs its own code: pass --trust-remote-code only if you trust the folder."
        )
    drop = set(COMMON_DROP) | set(family.config_drop)
    values = {family.config_renames.get(k, k): v for k, v in raw.items() if k not in drop}
    if family.name == "llada" and raw.get("embedding_size"):
        values["vocab_size"] = raw["embedding_size"]  # rows of wte and the head: >= vocab_size
    if family.name == "llada" and values.get("intermediate_size") is None and raw.get("mlp_ratio"):
        values["intermediate_size"] = int(raw["mlp_ratio"] * raw["d_model"])
    if family.config_derive:
        DERIVATIONS[family.config_derive](raw, values)
    values.update(family.config_set)
    needed = (
        ("hidden_size", "num_hidden_layers", "num_attention_heads")
        if family.base != "gpt2"
        else ("n_embd", "n_layer", "n_head")
    )
    missing = [k for k in needed if values.get(k) is None]
    if missing:
        names = {v: k for k, v in family.config_renames.items()}
        raise CheckpointError(
            f"{folder / 'config.json'} lacks {[names.get(k, k) for k in missing]}, which a {family.title} "
            "config states: the file is damaged or belongs to another model. Download config.json again."
        )
    try:
        return CONFIG_MAPPING[family.base](**values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'} cannot be read as a {family.base} config: {err}") from None


def load_published(
    folder: str | Path,
    family: Family,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    block_size: int | None = None,
) -> Loaded:
    """Load a published MDM of `family` from `folder`: model (eval, bidirectional), tokenizer, meta.

    dtype / device: the parameters' dtype and device (weights stream straight there).
    block_size: the block size of a block-diffusion checkpoint whose files do not state it (an
    A2D BD3LM folder renamed without "bd3lm"); overrides what the files and the table say.
    Raises CheckpointError (see the module docstring).
    """
    folder = Path(folder).expanduser().resolve()
    raw = read_config(folder)
    if raw is None:
        raise CheckpointError(
            f"{folder} has no readable config.json; a {family.title} folder has config.json, "
            "*.safetensors weights and tokenizer files as downloaded."
        )
    config = family_config(family, raw, folder)
    check_tokenizer_files(folder, family)  # before the weights: a folder without one is refused at once
    files = safetensors_files(folder)  # refuses pickle-only folders, never unpickles
    for file in files:
        check_safetensors(file)
    check_experts(files, config, folder)
    summary = safetensors_summary(files)
    check_fits(summary.n_params, dtype, device, summary.largest, f"{family.title} from {folder}", summary.file_bytes)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    try:
        model, info = model_class.from_pretrained(
            folder,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            key_mapping=family.key_mapping or None,
            device_map=None if torch.device(device).type == "cpu" else str(device),
            output_loading_info=True,
        )
    except CheckpointError:
        raise
    except Exception as err:  # transformers/safetensors refusals: one line
        raise CheckpointError(
            f"Could not load the {family.title} weights in {folder}: {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
    _check_loading(info, family, folder)
    make_bidirectional(model)
    tokenizer = load_family_tokenizer(folder, family)
    _check_vocabulary(tokenizer, model, family, folder)
    mask_id, mask_from = resolve_mask_id(family, raw, tokenizer, model, folder)
    block, block_from = _block_size(family, raw, folder, block_size)
    model.eval()
    meta = ModelMeta(
        kind="mdm",
        source=str(folder),
        family=config.model_type,
        shift=family.shift,
        mask_id=mask_id,
        block_size=block,
        source_format=family.name,
        extra={
            "published": family.title,
            "mask_id_from": mask_from,
            "block_size_from": block_from,
            "attention": "bidirectional" if block is None else f"block-causal, blocks of {block}",
            "n_params": summary.n_params,
        },
    )
    return Loaded(model=model, tokenizer=tokenizer, meta=meta)


def _check_loading(info: dict[str, Any], family: Family, folder: Path) -> None:
    """Refuse missing parameters and unplaced tensors: a wrong or partial checkpoint."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing:
        raise CheckpointError(
            f"The weights in {folder} lack {len(missing)} tensors a {family.title} model of this config "
            f"has (as {family.base} names: {missing[:3]}). The download is incomplete (a missing shard?) "
            "or the files belong to another model: download the checkpoint again."
        )
    if unexpected:
        raise CheckpointError(
            f"The weights in {folder} hold {len(unexpected)} tensors a {family.title} model does not have "
            f"(e.g. {unexpected[:3]}). The folder mixes files of another model, or is a variant ar2mdm "
            "does not read: pass --trust-remote-code only if you trust its code."
        )


# The files that hold a tokenizer's vocabulary, each group enough on its own: fast (tokenizer.json),
# byte-level BPE (vocab.json + merges.txt), sentencepiece (tokenizer.model), WordPiece (vocab.txt).
# tokenizer_config.json and special_tokens_map.json only configure one of these.
VOCABULARY_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.model",),
    ("vocab.txt",),
)
_TOKENIZER_NAMES = (*dict.fromkeys(f for group in VOCABULARY_FILES for f in group), "tokenizer_config.json")


def check_tokenizer_files(folder: Path, family: Family) -> None:
    """Raise CheckpointError unless `folder` holds the files of a tokenizer's vocabulary
    (`VOCABULARY_FILES`). Without them transformers builds a tokenizer of one token, and every
    prompt would later fail as if it were the prompt's fault; the message names what is missing."""
    if any(all((folder / name).is_file() for name in group) for group in VOCABULARY_FILES):
        return
    present = [name for name in _TOKENIZER_NAMES if (folder / name).is_file()]
    partial = [
        f"{' + '.join(n for n in group if not (folder / n).is_file())} beside {' + '.join(n for n in group if (folder / n).is_file())}"
        for group in VOCABULARY_FILES
        if len(group) > 1 and any((folder / n).is_file() for n in group)
    ]
    lacking = f"it lacks {'; '.join(partial)}" if partial else "it has none of them"
    raise CheckpointError(
        f"{folder} has no usable tokenizer: a {family.title} folder holds its vocabulary as tokenizer.json, or "
        f"vocab.json + merges.txt (or tokenizer.model), and {lacking} (tokenizer files found: "
        f"{', '.join(present) or 'none'}). Download the checkpoint's tokenizer files again, into the folder "
        "with the weights."
    )


def _check_vocabulary(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, family: Family, folder: Path) -> None:
    """CheckpointError when the tokenizer holds fewer than half as many tokens as the embedding has
    rows (checkpoints pad their embedding a little, never by half): damaged or foreign files."""
    rows = int(model.get_input_embeddings().weight.shape[0])
    if 2 * len(tokenizer) < rows:
        raise CheckpointError(
            f"the tokenizer in {folder} holds {len(tokenizer)} tokens, but the {family.title} model's embedding "
            f"has {rows} rows: its tokenizer files are incomplete or belong to another model. Download the "
            "checkpoint's tokenizer files again."
        )


def load_family_tokenizer(folder: Path, family: Family) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, read by the family's tokenizer class (no custom code runs)."""
    try:
        if family.tokenizer_class:
            cls = getattr(transformers, family.tokenizer_class)
            tokenizer = cls.from_pretrained(folder)
        else:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Could not read the tokenizer in {folder} as a {family.title} tokenizer "
            f"({family.tokenizer_class or 'AutoTokenizer'}: {first}). Download the tokenizer files "
            "(tokenizer.json or vocab.json + merges.txt, tokenizer_config.json) again."
        ) from err
    fill_pad_token(tokenizer)
    return tokenizer


def resolve_mask_id(
    family: Family, raw: dict[str, Any], tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, folder: Path
) -> tuple[int, str]:
    """(mask id, where it came from): the config's key, else the tokenizer's mask token (or the
    family's mask text in its vocabulary), else the published id. CheckpointError when the config
    and the tokenizer disagree, or the id is outside the embedding."""
    stated = next((raw[k] for k in family.mask_id_keys if isinstance(raw.get(k), int)), None)
    token_id = getattr(tokenizer, "mask_token_id", None)
    source = "tokenizer mask_token"
    if token_id is None and family.mask_token:
        vocab = tokenizer.get_vocab()
        token_id = vocab.get(family.mask_token)
        source = f"tokenizer token {family.mask_token!r}"
    if stated is not None and token_id is not None and stated != token_id:
        raise CheckpointError(
            f"{folder}: config.json says the mask token id is {stated}, but the tokenizer's mask token "
            f"is id {token_id}. One of the files belongs to another model: download both again."
        )
    if stated is not None:
        mask_id, where = int(stated), "config.json"
    elif token_id is not None:
        mask_id, where = int(token_id), source
    elif family.mask_id is not None:
        mask_id, where = family.mask_id, "family table (published id)"
    else:
        raise CheckpointError(
            f"{folder}: neither config.json nor the tokenizer names a mask token, and {family.title} "
            f"has no published mask id. The tokenizer files are missing their {family.mask_token!r} "
            "token: download them again."
        )
    rows = int(model.get_input_embeddings().weight.shape[0])
    if not 0 <= mask_id < rows:
        raise CheckpointError(
            f"{folder}: the mask token id {mask_id} (from the {where}) is outside the embedding's {rows} "
            "rows: the tokenizer and the weights do not belong together."
        )
    if getattr(tokenizer, "mask_token", None) is None:
        text = tokenizer.convert_ids_to_tokens(mask_id)
        if isinstance(text, str) and tokenizer.convert_tokens_to_ids(text) == mask_id:
            tokenizer.mask_token = text  # name it for everything that reads tokenizer.mask_token
    return mask_id, where


def _block_size(family: Family, raw: dict[str, Any], folder: Path, given: int | None) -> tuple[int | None, str]:
    if given is not None:
        return given, "given by the caller"
    for key in family.block_size_keys:
        if isinstance(raw.get(key), int) and raw[key] > 0:
            return int(raw[key]), f"config.json {key}"
    named = block_size_from_name(family, folder)
    if named is not None:
        return named, f"folder name {folder.name!r}"
    if family.block_size is not None:
        return family.block_size, "family table (published block size)"
    return None, "bidirectional"
