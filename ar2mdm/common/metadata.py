"""What a checkpoint must carry to be used right, and the one rule for where to read a prediction.

Every model the toolkit handles comes with a `ModelMeta`. For an AR checkpoint it is derived at
load time; for an MDM it is stored beside the weights as `ar2mdm.json`. The single most important
field is `shift`: with shift on (every ARM, and MDMs converted DiffuLLaMA/Dream-style) the
prediction for the token at position i is read from the logits at position i - 1; with shift off
(LLaDA/MDLM-style) it is read at position i itself. `read_positions` is the only place that rule
lives: tasks, samplers, metrics and probes all call it.

`checkpoint_kind` is the one place that decides, from a checkpoint's files and before anything is
loaded, whether it is an ARM or an MDM; `require_kind` turns a wrong kind into an error that
names the role the checkpoint was given (`--model` of a conversion, ARPC's `--ar-scorer`,
`compare --mdm`, ...). Every loader and entry point goes through them, so an MDM is never run
causally as if it were an ARM, and an ARM never stands in for an MDM.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch  # noqa: F401  (used by the doctests)
from jaxtyping import Int
from torch import Tensor

from ar2mdm.common.errors import CheckpointError, UserError
from ar2mdm.common.families import detect_family, gguf_family, split_format
from ar2mdm.common.hub import localize
from ar2mdm.common.options import check_types
from ar2mdm.common.outputs import atomic_write_text

META_FILE = "ar2mdm.json"
Kind = Literal["ar", "mdm"]


@dataclass
class ModelMeta:
    """Metadata of a loaded checkpoint.

    kind: "ar" (causal, next-token) or "mdm" (bidirectional, fills masked positions).
    source: where the weights came from (a name such as "smollm2", a path).
    source_hash: sha256 of the source's weight files (empty when unknown).
    family: the HF `model_type` (llama, qwen2, gpt2, ...).
    shift: True if logits at i predict token i + 1 (always True for kind "ar").
    mask_id: the mask token id (MDM only).
    noise / schedule / block_size: the diffusion objective the MDM was trained with (block_size:
    block diffusion, attention bidirectional within blocks of that many tokens and causal across
    them; None: fully bidirectional).
    source_format: the on-disk format the weights were read from: "ar2mdm" (a folder `ar2mdm
    convert` wrote), "hf" (a transformers folder), "gguf", or a published family's name ("dream",
    "llada", ...; `ar2mdm.common.families`), "gguf:dream" for a family's GGUF. Empty in files of older
    ar2mdm versions.
    repo_id / revision: the hub repository ("org/name") and the commit (40 hex) the weights were read
    from, when the source was a hub id (`ar2mdm.common.hub`); empty for local sources.
    extra: anything else a producer wants to record (steps, tokens seen, training options).
    """

    kind: Literal["ar", "mdm"] = "ar"
    source: str = ""
    source_hash: str = ""
    family: str = ""
    shift: bool = True
    mask_id: int | None = None
    noise: str | None = None
    schedule: str | None = None
    block_size: int | None = None
    source_format: str = ""
    repo_id: str = ""
    revision: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, folder: str | Path) -> Path:
        """Write `folder/ar2mdm.json` atomically (old or new content, never half of it)."""
        path = Path(folder) / META_FILE
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ModelMeta:
        """Read `folder/ar2mdm.json`, checking it is an object whose fields have the right types.

        Raises CheckpointError when the file is missing, not JSON, not an object, has unknown
        fields (a newer ar2mdm wrote it) or a field of the wrong type (it was edited by hand).
        """
        path = Path(folder) / META_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path} does not exist: this folder is not an ar2mdm checkpoint.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged.") from None
        except OSError as err:
            raise CheckpointError(f"{path} cannot be read ({err.strerror}).") from None
        if not isinstance(raw, dict):
            raise CheckpointError(
                f"{path} holds a JSON {type(raw).__name__}, not an object of metadata fields; the file "
                "is damaged or is not ar2mdm's. Restore it from the conversion run that wrote the model."
            )
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise CheckpointError(
                f"{path} has unknown fields {sorted(unknown)}: it was written by a newer ar2mdm; upgrade."
            )
        try:
            typed = check_types(cls, raw, str(path))
        except UserError as err:
            raise CheckpointError(f"{err} The metadata was edited or damaged.") from None
        if typed.get("kind") not in (None, "ar", "mdm"):
            raise CheckpointError(f"{path}: kind must be 'ar' or 'mdm', got {typed['kind']!r}.")
        return cls(**typed)


def read_positions(answer_positions: Int[Tensor, "*batch"] | int, shift: bool) -> Int[Tensor, "*batch"] | int:
    """Logit positions that predict the tokens at `answer_positions`.

    >>> read_positions(torch.tensor([5, 6]), shift=True).tolist()
    [4, 5]
    >>> read_positions(5, shift=False)
    5
    """
    return answer_positions - 1 if shift else answer_positions


# --- checkpoint kinds -------------------------------------------------------------------------------

CONFIG_FILE = "config.json"


def checkpoint_kind(source: str | Path) -> Kind:
    """Whether `source` is an ARM or an MDM, decided from its files (nothing is loaded).

    A folder with ar2mdm.json is what its `kind` says. A published MDM (a Dream, LLaDA, ... folder
    as downloaded, `ar2mdm.common.families.detect_family`, or a source written "FAMILY:PATH") is "mdm".
    A folder without ar2mdm.json whose config.json says
    `is_causal: false` is an MDM that lost its metadata (the final write of a conversion was
    interrupted, or the folder was copied without it): CheckpointError, since its mask token and
    read rule are unknown and running it causally would be silently wrong. Anything else (a
    built-in name, an HF folder, a .gguf file, a path that does not exist yet) is "ar": the
    loaders report missing paths themselves. A hub id is read from its snapshot in the HF cache,
    downloaded first if needed (`ar2mdm.common.hub.localize`).
    """
    source = localize(source)[0]
    forced, source = split_format(str(source)) if isinstance(source, str) else (None, source)
    if forced is not None:
        return "mdm"
    folder = Path(source).expanduser()
    if gguf_family(folder) is not None:
        return "mdm"  # a Dream or LLaDA GGUF (llama.cpp's diffusion architectures)
    if not folder.is_dir():
        return "ar"
    if (folder / META_FILE).is_file():
        return ModelMeta.load(folder).kind
    if detect_family(folder) is not None:
        return "mdm"
    if _bidirectional_config(folder):
        raise CheckpointError(
            f"{folder} holds a bidirectional model (config.json has is_causal: false), i.e. an MDM, "
            f"but no {META_FILE}, so its mask token and read rule are unknown. An interrupted final "
            "write of `ar2mdm convert` leaves this: rerun the same convert command with --resume to "
            f"write the MDM again. If you copied the folder, copy its {META_FILE} too."
        )
    return "ar"


def source_key(source: str | Path) -> str:
    """What a model source points at, for telling whether two sources are one checkpoint: the
    resolved path of an existing folder or file (a "FAMILY:" prefix, "~", "./" and symlinks
    undone: "runs/base", "./runs/base" and "dream:runs/base" give one key), else the text as
    given (a built-in name, a path that does not exist)."""
    _, plain = split_format(str(source))
    path = Path(plain).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def _bidirectional_config(folder: Path) -> bool:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False  # no readable config: the loaders say what is wrong with it
    if not isinstance(config, dict):
        return False
    text = config.get("text_config")
    return config.get("is_causal") is False or (isinstance(text, dict) and text.get("is_causal") is False)


KINDS: tuple[Kind, ...] = ("ar", "mdm")


def parse_kind(value: Any, option: str = "expect") -> Kind:
    """`value` as a checkpoint kind: "ar" or "mdm", in any case and with surrounding spaces
    ("AR", " mdm "). option: how the value was given (the `expect` keyword of the loaders and of
    `ProbedModel.from_checkpoint`), for the message. Raises UserError for anything else, listing
    the accepted values: a misspelt kind is never read as "the other kind".

    >>> parse_kind("AR")
    'ar'
    """
    word = value.strip().lower() if isinstance(value, str) else value
    if word not in KINDS:
        raise UserError(
            f"{option}={value!r} is not a checkpoint kind; use 'ar' (an autoregressive model) or 'mdm' (a masked "
            "diffusion model), in any case, or None to accept either."
        )
    return word


def require_kind(source: str | Path, expected: Kind, role: str) -> Kind:
    """Raise CheckpointError unless `source` is a checkpoint of kind `expected`; return the kind.

    expected: "ar" or "mdm" (any case: `parse_kind`; UserError for another value, before the
    files are read). role: what the checkpoint was given as, for the message ("--model, the AR
    source of a conversion", "ARPC's AR scorer (--ar-scorer)", "compare --mdm").
    """
    expected = parse_kind(expected)
    source = localize(source)[0]
    kind = checkpoint_kind(source)
    if kind == expected:
        return kind
    forced, plain = split_format(str(source)) if isinstance(source, str) else (None, source)
    folder = Path(plain).expanduser()
    family = forced or detect_family(folder) or gguf_family(folder)
    if expected == "ar" and family is not None:
        sources = (
            f" Its AR source is {' or '.join(family.ar_sources)}."
            if family.ar_sources
            else (" It has no AR source (trained as an MDM from scratch).")
        )
        raise CheckpointError(
            f"{role} must be an autoregressive model (ARM), but {folder} is a published MDM "
            f"({family.title}).{sources} Pass an ARM there."
        )
    if expected == "ar":
        meta = ModelMeta.load(folder)
        origin = f" (converted from {meta.source})" if meta.source else ""
        fix = f"Pass its AR source ({meta.source}) instead." if meta.source else "Pass an AR checkpoint."
        raise CheckpointError(
            f"{role} must be an autoregressive model (ARM), but {folder} is an MDM{origin}: "
            f"{META_FILE} says kind 'mdm' and it attends bidirectionally. {fix}"
        )
    raise CheckpointError(
        f"{role} must be a masked diffusion model (MDM: a folder written by `ar2mdm convert`, with "
        f"{META_FILE} of kind 'mdm', or a published one: Dream, LLaDA, ..., docs/FORMATS.md), but "
        f"{source} is an autoregressive model. Convert it first: ar2mdm convert --model {source} "
        "--data ... --out DIR, then pass DIR. If it is a published MDM whose files do not say so "
        "(DiffuLLaMA renamed), name its family: FAMILY:PATH, e.g. diffullama:/models/diffullama."
    )
