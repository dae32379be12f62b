"""Reading a Hugging Face causal-LM folder safely: `load_hf_folder` -> (model, tokenizer).

Checks, in order, so that the first problem found is the one reported, each as a
`CheckpointError` that says what to do: config.json exists and is valid JSON; it describes a
causal (decoder) LM transformers knows (custom code only with trust_remote_code, and suggested
only when the config ships some); the weights are safetensors (pickle files are refused, never
unpickled) and not truncated (`check_safetensors` reads the header only); the tokenizer loads;
every parameter the model needs is in the weight files (transformers would silently initialise
missing ones at random).

`Loaded` is what every loader returns: model, tokenizer and `ModelMeta`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import __version__ as transformers_version
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import FAMILIES, safetensors_header, supported_list
from ar2mdm.common.hub import HubSnapshot
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.options import parse_bool
from ar2mdm.common.placement import Placement
from conversion.memory import check_fits, safetensors_summary

# Files that can only be read by unpickling, which can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class Loaded:
    """An AR checkpoint ready to use: the model (in eval mode), its tokenizer, and its metadata.

    meta.kind is "ar", meta.shift is True (logits at i predict token i + 1), meta.family is the
    HF `model_type`, meta.source is the name or resolved path given to `load_ar`, and
    meta.source_hash is the sha256 of the weight files (see `weights_sha256`). The loaders give
    a transformers `PreTrainedModel`; samplers and evaluations take any module whose forward
    returns an object with `.logits` (tests build `Loaded` around stand-in models).
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    meta: ModelMeta

    def from_hub(self, hub: HubSnapshot | None) -> Loaded:
        """This Loaded with its hub origin recorded (meta.repo_id, meta.revision = the commit, and
        meta.extra["path"] = the snapshot folder read); unchanged when `hub` is None. A source that
        named the snapshot folder is renamed to the hub id the user wrote."""
        if hub is None:
            return self
        meta = self.meta
        meta.repo_id, meta.revision = hub.ref.repo_id, hub.commit
        if meta.source in ("", str(hub.folder), hub.local_source):
            meta.source = str(hub.ref)
        meta.extra = {**meta.extra, "path": str(hub.folder)}
        return self


def load_hf_folder(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool | str = False,
    device: str | torch.device = "cpu",
    placement: Placement | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) from an HF causal-LM folder, safetensors only, onto `device`, or
    spread over devices as `placement` asks (transformers' big-model loading through accelerate:
    `device_map`, `max_memory`, `offload_folder`; `ar2mdm.common.placement`).

    Weights stream from the memory-mapped files straight to `device` in `dtype` (no second full
    copy); a large load is announced with its predicted memory first, and refused when a CUDA
    device has too little free memory (`conversion.memory.check_fits`).

    Checks, in order, so that the first problem found is the one reported: config.json exists;
    the config describes a causal LM; the weights are safetensors and not truncated; the
    tokenizer loads; every parameter the model needs is in the weight files.
    """
    folder = Path(folder)
    # code shipped in the folder runs only on an explicit yes: "no" / "off" / "0" are refusals
    trust_remote_code = parse_bool(trust_remote_code, "trust_remote_code")
    config = _causal_lm_config(folder, trust_remote_code)
    files = safetensors_files(folder)
    for file in files:
        check_safetensors(file)
    check_experts(files, config, folder)
    summary = safetensors_summary(files)
    if not placement:
        check_fits(summary.n_params, dtype, device, summary.largest, str(folder), summary.file_bytes)
    tokenizer = _load_tokenizer(folder, trust_remote_code=trust_remote_code)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **_placement_kwargs(placement, device),
        )
    except Exception as err:  # anything transformers/safetensors raise: report it as one line
        raise CheckpointError(f"Could not load the weights in {folder}: {type(err).__name__}: {err}") from err
    if info["missing_keys"]:
        # transformers would silently initialise these at random: a model that runs but is wrong.
        missing = sorted(info["missing_keys"])
        raise CheckpointError(
            f"The weights in {folder} do not fit its config ({config.model_type}): "
            f"{len(missing)} parameters are missing, e.g. {missing[:3]}. The weight files belong "
            "to a different model, or the folder was saved from a base model without its LM head; "
            "save the full *ForCausalLM model with save_pretrained."
        )
    return model, tokenizer


def _placement_kwargs(placement: Placement | None, device: str | torch.device) -> dict:
    """from_pretrained's device_map / max_memory / offload_folder for a placement, else one device."""
    if not placement:
        return {"device_map": None if torch.device(device).type == "cpu" else str(device)}
    out: dict = {"device_map": placement.device_map}
    if placement.max_memory is not None:
        out["max_memory"] = dict(placement.max_memory)
    if placement.offload_folder is not None:
        out["offload_folder"] = str(placement.offload_folder)
    return out


def fill_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a pad token its eos token as pad (in place).

    Batching needs a pad id; AR models have no trained pad embedding, and eos is the convention.
    Padded positions are excluded by the attention mask, so the choice of token does not change
    any unpadded logit.
    """
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def _causal_lm_config(folder: Path, trust_remote_code: bool) -> PretrainedConfig:
    """The folder's config, after checking that it exists and describes a causal (decoder) LM."""
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = (
            f" It holds a GGUF file: pass that file itself ({ggufs[0]})."
            if ggufs
            else " An HF model folder has config.json, *.safetensors weights and tokenizer files "
            "(what model.save_pretrained and tokenizer.save_pretrained write)."
        )
        raise CheckpointError(f"{folder} has no config.json, so it is not an HF model folder.{hint}")
    raw = _raw_config(folder)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:
        # Custom code is the answer only for a config that names some (auto_map); for a damaged
        # or unknown config it would be misleading advice.
        if raw.get("auto_map") and not trust_remote_code:
            raise CheckpointError(
                f"{folder / 'config.json'} names model_type {raw.get('model_type')!r} "
                f"({', '.join(raw.get('architectures') or []) or 'no architectures'}): a custom architecture that "
                "ships its own code, and not one of the published diffusion families ar2mdm reads natively: "
                f"{supported_list()}. If you trust the folder's code, pass --trust-remote-code "
                "(trust_remote_code=True) to run it; if it is one of those families under another name, "
                "name it: FAMILY:PATH."
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not raw.get("auto_map") and raw.get("model_type") not in CONFIG_MAPPING:
            raise CheckpointError(
                f"{folder / 'config.json'} names model_type {raw.get('model_type')!r}, which transformers "
                f"{transformers_version} does not know, and ships no code for it. ar2mdm reads the decoder families "
                "transformers knows (llama, mistral, qwen2, qwen3, gemma2, gemma3, gpt2, ...) and the published "
                f"diffusion families ({', '.join(FAMILIES)}): upgrade transformers if the family is newer, "
                "check the model_type, or name a published family: FAMILY:PATH."
            ) from None
        raise CheckpointError(
            f"Could not read {folder / 'config.json'} with transformers {transformers_version}: {first}."
        ) from None

    causal_classes = _causal_lm_class_names()
    declared = list(getattr(config, "architectures", None) or [])
    is_causal_type = config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or bool(
        getattr(config, "auto_map", {}).get("AutoModelForCausalLM")
    )
    # An encoder checkpoint (BERT saved as BertForMaskedLM) has a causal class in transformers
    # but was not trained as one: the declared architectures decide when they are present.
    declared_causal = (
        not declared
        or any(a in causal_classes for a in declared)
        or bool(getattr(config, "auto_map", {}).get("AutoModelForCausalLM"))
    )
    if getattr(config, "is_encoder_decoder", False) or not is_causal_type or not declared_causal:
        what = f"{', '.join(declared)} ({config.model_type})" if declared else config.model_type
        raise CheckpointError(
            f"{folder} holds a {what} model, which is not a causal language "
            "model: ar2mdm converts decoder-only autoregressive LMs (Llama, Qwen, Gemma, GPT-2, "
            "Mistral, ...). Pass the folder of a *ForCausalLM checkpoint."
        )
    return config


def _raw_config(folder: Path) -> dict:
    """config.json as JSON, or a CheckpointError saying it is damaged."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}); the file is damaged: copy or save the model again."
        ) from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror}).") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(raw).__name__}, not an object of settings; the file is damaged."
        )
    if "model_type" not in raw and not raw.get("auto_map"):
        raise CheckpointError(
            f"{path} names no model_type, so transformers cannot tell which architecture it describes; "
            "save the model again with model.save_pretrained(folder)."
        )
    return raw


def _causal_lm_class_names() -> set[str]:
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's safetensors weight files; refuses pickle-only folders with advice."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} has only pickle weight files ({', '.join(pickles)}). ar2mdm never unpickles "
            "checkpoints, since unpickling can run arbitrary code. If you trust the files, convert "
            "them once: load with AutoModelForCausalLM.from_pretrained(folder, "
            "use_safetensors=False) and call save_pretrained(new_folder), which writes "
            "model.safetensors."
        )
    raise CheckpointError(
        f"{folder} has a config.json but no *.safetensors weight files. Save the model with "
        "model.save_pretrained(folder), or copy the weight files into the folder."
    )


def check_safetensors(file: str | Path) -> None:
    """Raise CheckpointError if `file` is not a complete safetensors file.

    Reads only the header: 8 bytes of header length, the JSON header, and compares the end of
    the last tensor's data with the file size. Catches truncated downloads and copies before
    transformers does (its error would name an internal buffer, not the file).
    """
    file = Path(file)
    size = file.stat().st_size
    advice = "The file is truncated or corrupt: copy or save the checkpoint again."
    with file.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{file} has {size} bytes, too few for a safetensors file. {advice}")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8:
            raise CheckpointError(f"{file} declares a {header_len}-byte header but has only {size} bytes. {advice}")
        try:
            header = json.loads(fh.read(header_len))
            data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{file} does not have a valid safetensors header. {advice}") from None
    expected = 8 + header_len + data_end
    if expected != size:
        raise CheckpointError(f"{file} should have {expected} bytes but has {size}. {advice}")


_EXPERT = re.compile(r"layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_FUSED_EXPERTS = re.compile(r"layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def check_experts(files: list[Path], config: PretrainedConfig, folder: Path) -> None:
    """Raise CheckpointError when a mixture of experts' weight files do not hold, in every MoE
    layer they cover, exactly the experts its config states (each with gate, up and down
    projections), read from the safetensors headers only. transformers would otherwise report a
    size mismatch of its fused experts tensor, naming none of the experts.
    """
    n_experts = next(
        (int(v) for k in ("num_experts", "n_routed_experts", "num_local_experts") if (v := getattr(config, k, None))), 0
    )
    if not n_experts:
        return
    layers: dict[int, dict[int, set[str]]] = {}
    for file in files:
        for name, entry in safetensors_header(file).items():
            if m := _EXPERT.search(name):
                layers.setdefault(int(m[1]), {}).setdefault(int(m[2]), set()).add(m[3])
            elif (m := _FUSED_EXPERTS.search(name)) and int(entry["shape"][0]) != n_experts:
                raise CheckpointError(
                    f"{folder}: {name} holds {entry['shape'][0]} experts, but config.json says each MoE layer has "
                    f"{n_experts}: the config and the weights belong to different models. Download both again."
                )
    for layer, experts in sorted(layers.items()):
        extra = sorted(e for e in experts if e >= n_experts)
        if extra:
            raise CheckpointError(
                f"{folder}: layer {layer} holds experts up to {max(extra)}, but config.json says each MoE layer has "
                f"{n_experts} (num_experts): the config and the weights belong to different models. Download both again."
            )
        missing = sorted(set(range(n_experts)) - set(experts))
        if missing and sorted(experts) == list(range(len(experts))):
            raise CheckpointError(
                f"{folder}: layer {layer} holds {len(experts)} experts, but config.json says each MoE layer has "
                f"{n_experts} (num_experts): the config and the weights belong to different models. Download both again."
            )
        if missing:
            raise CheckpointError(
                f"{folder}: the weights lack expert(s) {missing[:5]} of layer {layer} ({n_experts} per layer in "
                "config.json): the download is incomplete (a missing shard?). Download the checkpoint again."
            )
        for e, parts in sorted(experts.items()):
            if len(parts) < 3:
                lacking = sorted({"gate_proj", "up_proj", "down_proj"} - parts)
                raise CheckpointError(
                    f"{folder}: expert {e} of layer {layer} lacks its {', '.join(lacking)}: the download is "
                    "incomplete (a missing shard?). Download the checkpoint again."
                )


# Any one of these means the folder carries a tokenizer (fast, sentencepiece, or BPE vocab files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(folder: Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    advice = (
        "Save the model's tokenizer into the folder with tokenizer.save_pretrained(folder) "
        "(it writes tokenizer.json and tokenizer_config.json)."
    )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{folder} has no tokenizer files. {advice}")
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"Could not load the tokenizer in {folder} ({type(err).__name__}: {first_line}). {advice}"
        ) from err
