"""Hub ids as model sources: `org/name`, `org/name@revision` and `FAMILY:org/name[@revision]`.

Researchers name models by their Hugging Face hub id. Every loader (`load_ar`, `load_mdm`,
`load_any`, `ProbedModel.from_checkpoint`, the harness's `pretrained=`, every CLI option that names a
checkpoint) first passes its source through `localize`, which turns a hub id into the local snapshot
folder huggingface_hub keeps in the user's HF cache, and leaves every other source (a built-in name,
a local path, a .gguf file) as it is. The rest of ar2mdm then reads a local folder, as before.

What is fetched: only what the loaders read (`ALLOW_PATTERNS`: configs, safetensors weights and their
index, tokenizer files), plus `*.py` when the caller passes trust_remote_code. Pickle weights
(`*.bin`, `*.pt`) are never fetched; a repository that has only those is refused with what to do.

What the user set is honoured, because huggingface_hub reads it: `HF_HUB_OFFLINE` (the cache only),
`HF_HOME` / `HF_HUB_CACHE` (where the cache is), `HF_TOKEN` or `hf auth login` (private and gated
repositories), `HF_ENDPOINT` (a mirror, or the local server the tests run). ar2mdm never switches the
network off itself. Downloads show huggingface_hub's progress bars.

A local path always wins: "runs/base" is a folder when it exists, and a hub id only when no such path
exists. Errors are `CheckpointError`s of one line that say what to do: repository not found, gated or
private, unknown revision, offline and not in the cache, hub unreachable, pickle-only.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import FORMAT_SEPARATOR, split_format

# What the loaders read from a repository. Pickle files are left on the hub.
ALLOW_PATTERNS = (
    "*.json",  # config.json, generation_config.json, tokenizer.json, *.safetensors.index.json, ...
    "*.safetensors",
    "*.model",  # sentencepiece tokenizers
    "*.tiktoken",
    "*.txt",  # merges.txt, vocab.txt (BPE / WordPiece tokenizers)
    "*.jinja",  # chat templates kept beside the tokenizer
)
CODE_PATTERNS = ("*.py",)  # modelling code, fetched only with trust_remote_code
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# org/name: the hub's own rule, letters, digits, "-", "_", "." (not leading "." or "-"), at most 96 each.
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]*))?")


@dataclass(frozen=True)
class HubRef:
    """A hub id as written: repo_id "org/name", revision (branch, tag or commit; None: the default
    branch), family: the "FAMILY:" prefix given before it, if any."""

    repo_id: str
    revision: str | None = None
    family: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.family}{FORMAT_SEPARATOR}" if self.family else ""
        return f"{prefix}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubSnapshot:
    """A hub id resolved into the HF cache. folder: the snapshot folder (…/snapshots/<commit>);
    commit: the 40-hex commit it holds; ref: what the user wrote."""

    ref: HubRef
    folder: Path
    commit: str

    @property
    def local_source(self) -> str:
        """The source the loaders read: the snapshot folder, with the family prefix if one was given."""
        return f"{self.ref.family}{FORMAT_SEPARATOR}{self.folder}" if self.ref.family else str(self.folder)


def parse_hub_id(source: str | Path) -> HubRef | None:
    """The HubRef of `source` when it reads as a hub id and is not an existing local path; else None.

    >>> parse_hub_id("Qwen/Qwen2.5-0.5B@main")
    HubRef(repo_id='Qwen/Qwen2.5-0.5B', revision='main', family=None)
    >>> parse_hub_id("dream:Dream-org/Dream-v0-Base-7B").family
    'dream'
    >>> parse_hub_id("organism") is None, parse_hub_id("./runs/x") is None, parse_hub_id("m.gguf") is None
    (True, True, True)
    """
    if isinstance(source, Path):
        return None  # a Path is a local path by the caller's own choice
    text = str(source).strip()
    family, plain = split_format(text)
    if Path(plain).expanduser().exists() or plain.lower().endswith((".gguf", ".safetensors")):
        return None
    match = _HUB_ID.fullmatch(plain)
    if match is None or ".." in match["repo"] or match["repo"].endswith((".", "-")):
        return None
    return HubRef(match["repo"], match["revision"], family.name if family is not None else None)


_resolved: dict[tuple[HubRef, bool], HubSnapshot] = {}
_lock = threading.Lock()


def localize(source: str | Path, *, trust_remote_code: bool = False) -> tuple[str | Path, HubSnapshot | None]:
    """(the source the loaders read, the HubSnapshot it came from or None).

    A hub id (`parse_hub_id`) is downloaded (or found in the HF cache) and its snapshot folder
    returned; anything else comes back unchanged with None. Resolved once per process for each id.
    Raises CheckpointError (one line, what to do) for every way the hub can refuse."""
    ref = parse_hub_id(source)
    if ref is None:
        return source, None
    key = (ref, bool(trust_remote_code))
    with _lock:
        if key not in _resolved:
            _resolved[key] = _download(ref, trust_remote_code=bool(trust_remote_code))
        snapshot = _resolved[key]
    return snapshot.local_source, snapshot


def _download(ref: HubRef, *, trust_remote_code: bool) -> HubSnapshot:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    patterns = list(ALLOW_PATTERNS) + (list(CODE_PATTERNS) if trust_remote_code else [])
    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns))
    except hub_errors.GatedRepoError:
        raise CheckpointError(
            f"{ref.repo_id} is a gated repository: accept its terms at {constants.ENDPOINT}/{ref.repo_id} with your "
            "account, then log in here with `hf auth login` (or set HF_TOKEN) and run again."
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{ref} is not a local path, and {constants.ENDPOINT} has no repository {ref.repo_id} that you can read: "
            "check the spelling (org/name), or, if it is private, log in with `hf auth login` (or set HF_TOKEN)."
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise CheckpointError(
            f"{ref.repo_id} has no revision {ref.revision!r}: write a branch, tag or commit of it after '@' "
            f"(e.g. {ref.repo_id}@main), or leave the revision out for the default branch."
        ) from None
    except hub_errors.LocalEntryNotFoundError as err:
        download = f"hf download {ref.repo_id}" + (f" --revision {ref.revision}" if ref.revision else "")
        if constants.is_offline_mode():
            raise CheckpointError(
                f"{ref} is not an existing local path, and as a hub id it is not in the HF cache "
                f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE is set: check the path, or unset HF_HUB_OFFLINE to "
                f"download it, or run `{download}` on a machine with a network and copy the cache here."
            ) from None
        raise CheckpointError(
            f"{ref} is not an existing local path, and as a hub id {constants.ENDPOINT} cannot be reached and the HF "
            f"cache ({constants.HF_HUB_CACHE}) does not hold it ({_first_line(err)}): check the path, the network or "
            f"HF_ENDPOINT, or run `{download}` where there is a network."
        ) from None
    except hub_errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "an error"
        raise CheckpointError(f"{constants.ENDPOINT} answered {status} for {ref}: {_first_line(err)}") from None
    commit = folder.name
    _refuse_pickle_only(ref, folder, commit)
    return HubSnapshot(ref, folder, commit)


def _refuse_pickle_only(ref: HubRef, folder: Path, commit: str) -> None:
    """CheckpointError when the snapshot has no safetensors weights because the repository holds only
    pickle files (found in the repository's file list; nothing else is asked of the hub)."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf")):
        return
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(ref.repo_id, revision=commit)
    except Exception:  # offline, or the listing failed: the loader's own message follows
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles and not any(f.endswith(".safetensors") for f in files):
        raise CheckpointError(
            f"{ref.repo_id}@{commit[:12]} holds its weights only as pickle files ({', '.join(pickles[:3])}), which "
            "ar2mdm never loads (unpickling runs code): use a revision or copy of it with *.safetensors weights "
            "(the hub's safetensors convert bot, or transformers' save_pretrained(..., safe_serialization=True))."
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def forget_resolved() -> None:
    """Drop the per-process record of resolved hub ids (tests that change the endpoint or cache)."""
    with _lock:
        _resolved.clear()
