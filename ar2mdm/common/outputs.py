"""Output folders and files: never overwrite what a run does not own, never two runs in one folder.

Every command that writes a folder (`convert`, `organism train`, `eval`, `compare`, `study`)
claims it first with `claim_output(folder, command)`, a context manager held for the run:

1. The path must be usable: not an existing file, not under a file, creatable and writable.
   Otherwise a `UserError` says which and what to do, before any work starts.
2. The folder must be empty, or hold an earlier run of the same command: its owner record
   (`folder/.ar2mdm-run.json`, written when a run claims the folder) names the command, or
   `recognise(folder)` says so for folders written before owner records existed. Anything else
   (a model folder, a user's files, another command's results) is refused, untouched, with a
   listing of what is there; no flag overrides that, since those files are not ours to replace.
3. An exclusive lock (`fcntl.flock` on `folder/.ar2mdm.lock`) is taken for the run's duration. A
   second run on the same folder gets a `UserError` saying the folder is in use. The operating
   system drops the lock when the process ends, even by kill -9, so a lock is never stale.

A run that fails before writing anything leaves the folder as it found it.

What to do with an earlier run of the same command is the command's decision (`Claim.previous`):
`convert` resumes it or starts it over (--resume / --overwrite), `eval` and `compare` replace
their results only with --overwrite, `study` continues its cached stages.

What ar2mdm wrote is recorded: the owner record lists the entries the run wrote and the ones it
found and did not write (`foreign`: a user's notes added to a run folder afterwards), and is
completed when the run ends. Starting over (`Claim.clear`, --overwrite) removes only what ar2mdm
wrote; a run killed before its record was completed owns what appeared after it started, never
what was foreign then. An empty or "." folder (the current folder as a whole) is refused.

`check_output_file(path, option)` is the rule for a single-file output (`sample --trace`): never
a folder (a trailing separator names one), a link, a device node, or a file inside a checkpoint or
run folder; an existing file only if ar2mdm wrote it or with --overwrite. `atomic_write_text`
writes any text file so that it is either the old or the new content.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import UserError

LOCK_FILE = ".ar2mdm.lock"
OWNER_FILE = ".ar2mdm-run.json"
OURS = {LOCK_FILE, OWNER_FILE}


@dataclass
class Claim:
    """A claimed output folder. previous: the owner record of an earlier run of the same command
    in it ({"command": ...}, or {"command": ..., "legacy": True} for a recognised older folder),
    None when the folder was empty or new. marked: `mark` was called. foreign: names of entries in
    the folder that ar2mdm did not write (a user's notes put there after an earlier run); they are
    never removed and never recorded as written."""

    folder: Path
    command: str
    previous: dict[str, Any] | None
    marked: bool = False
    foreign: frozenset[str] = frozenset()

    def mark(self) -> None:
        """Record that this command's run writes here (the owner record), once the command has
        checked everything and is about to write. Until then a failure leaves the folder as it was.
        The record lists what ar2mdm wrote there so far and what it did not (`foreign`); it is
        completed when the run ends (`finish`)."""
        self._record(complete=False)
        self.marked = True

    def finish(self) -> None:
        """Complete the owner record: everything in the folder now but the foreign entries was
        written by ar2mdm (called by `claim_output` when the run ends, whatever the outcome)."""
        if self.marked and self.folder.is_dir():
            self._record(complete=True)

    def _record(self, *, complete: bool) -> None:
        written = sorted(p.name for p in folder_contents(self.folder) if p.name not in self.foreign)
        record = {"command": self.command, "written": written, "foreign": sorted(self.foreign), "complete": complete}
        if _read_owner(self.folder) != record:
            atomic_write_text(self.folder / OWNER_FILE, json.dumps(record) + "\n")

    def contents(self) -> list[Path]:
        """What the folder holds that ar2mdm wrote (besides the lock and owner files)."""
        return [p for p in folder_contents(self.folder) if p.name not in self.foreign]

    def clear(self) -> list[Path]:
        """Remove the earlier run's files: only what ar2mdm wrote there (the owner record lists it);
        anything else (a user's notes) stays, and is returned so the command can say so."""
        for path in self.contents():
            _remove(path)
        self.previous = None
        return [self.folder / name for name in sorted(self.foreign) if (self.folder / name).exists()]


def folder_contents(folder: str | Path) -> list[Path]:
    """What `folder` holds besides ar2mdm's lock and owner files (sorted)."""
    return sorted(p for p in Path(folder).iterdir() if p.name not in OURS)


def owned_contents(folder: str | Path) -> list[Path]:
    """What `folder` holds that an ar2mdm run wrote, by its owner record (`Claim.mark`): the entries
    the record lists as written when the run ended; for a run that died before it ended (kill -9),
    everything but the entries the record lists as foreign. A folder whose record predates these
    lists (or has none) is taken as wholly ar2mdm's, as before. Sorted; lock and owner files left out."""
    return [p for p in folder_contents(folder) if p.name not in _foreign(folder)]


def _foreign(folder: str | Path) -> frozenset[str]:
    folder = Path(folder)
    owner = _read_owner(folder) or {}
    present = {p.name for p in folder_contents(folder)}
    written, foreign = owner.get("written"), owner.get("foreign")
    if not isinstance(written, list) or not isinstance(foreign, list):
        return frozenset()
    if owner.get("complete"):
        return frozenset(present - {str(w) for w in written})
    return frozenset(present & {str(f) for f in foreign})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clear_contents(folder: Path) -> None:
    """Remove what an ar2mdm run wrote in `folder` (`owned_contents`), keeping its lock and owner
    files and anything it did not write. Only for a folder the command owns (`claim_output`
    refused any other)."""
    for path in owned_contents(folder):
        _remove(path)


@contextlib.contextmanager
def claim_output(
    folder: str | Path, command: str, *, option: str = "--out", recognise: Callable[[Path], bool] | None = None
) -> Iterator[Claim]:
    """Claim `folder` for a run of `command` (see the module docstring); yields a `Claim`.

    option: the flag the folder came from, for messages. recognise(folder): True if a folder
    without an owner record holds an earlier run of `command` (written by an older ar2mdm).
    Raises UserError for an unusable path, a folder held by another run, or a folder that holds
    anything but an earlier run of the same command. The command calls `Claim.mark()` once its own
    checks pass and it starts writing; a run that fails before that (or before writing anything)
    leaves the folder as it found it (a folder it created is removed again).
    """
    path = Path(folder).expanduser()
    existed = path.exists()
    created = [name for name in OURS if not (path / name).exists()]
    path = _usable_folder(path, option)
    if existed:
        _previous_run(path, command, option, recognise)  # refuse a foreign folder before touching it
    lock = _lock(path, option)
    claim = None
    try:
        previous = _previous_run(path, command, option, recognise)  # again, now that we hold the lock
        claim = Claim(path, command, previous, foreign=_foreign(path) if previous is not None else frozenset())
        yield claim
        claim.finish()
    except BaseException:
        if claim is None or not claim.marked or not folder_contents(path):
            # Nothing of this run was written: leave the folder as it was found.
            for name in created:
                (path / name).unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    path.rmdir()
        else:
            with contextlib.suppress(OSError):
                claim.finish()
        raise
    finally:
        lock.close()  # releases the flock


def owner_record(command: str) -> str:
    """The owner record's text, for writers that assemble a folder elsewhere and move it in
    (the organism writes its folder atomically and must carry the record along)."""
    return json.dumps({"command": command}) + "\n"


def _usable_folder(path: Path, option: str) -> Path:
    if str(path).strip() in ("", "."):
        raise UserError(
            f"{option} is empty or '.', the current folder as a whole, which ar2mdm does not write into. Name a "
            f"folder for the run, e.g. {option} runs/my-run."
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is an existing file; {option} takes a folder. Choose a new or empty folder.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path} cannot be created: {parent} is a file, not a folder.")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UserError(
            f"{option} {path} cannot be created: permission denied. Choose a folder you can write to."
        ) from None
    except OSError as err:
        raise UserError(f"{option} {path} cannot be created ({err.strerror}). Choose another folder.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path} is not writable. Choose a folder you can write to, or fix its permissions.")
    return path


def _lock(path: Path, option: str):
    try:
        handle = open(path / LOCK_FILE, "a")  # noqa: SIM115 - held open for the run
    except OSError as err:
        raise UserError(f"{option} {path} cannot be written ({err.strerror}). Choose another folder.") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(
            f"{option} {path} is in use by another ar2mdm run (it holds {path / LOCK_FILE}). Two runs must not "
            f"write one folder: wait for that run to finish, or choose another {option}."
        ) from None
    return handle


def _previous_run(
    path: Path, command: str, option: str, recognise: Callable[[Path], bool] | None
) -> dict[str, Any] | None:
    others = sorted(p.name for p in path.iterdir() if p.name not in OURS)
    owner = _read_owner(path)
    if owner is not None and owner.get("command") == command:
        return owner if set(others) - _foreign(path) else None  # only a user's files left: no earlier run
    if not others:
        return None
    if owner is None and recognise is not None and recognise(path):
        return {"command": command, "legacy": True}
    shown = ", ".join(others[:6]) + (f", ... ({len(others)} entries)" if len(others) > 6 else "")
    what = f"an `ar2mdm {owner['command']}` run" if owner else _describe(path)
    raise UserError(
        f"{option} {path} is not empty and is not an earlier `ar2mdm {command}` run: it holds {what} "
        f"({shown}). ar2mdm never writes over files it does not own; choose a new or empty folder for {option}."
    )


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(path: Path) -> str:
    if (path / "ar2mdm.json").is_file():
        return "an MDM checkpoint"
    if (path / "config.json").is_file():
        return "a model checkpoint"
    return "other files"


def check_output_file(path: str | Path, option: str, *, overwrite: bool = False, signature: str | None = None) -> Path:
    """`path` as a single file the run may write (`sample --trace`), checked before the work whose
    result goes there. The one rule for single-file outputs:

    - a name that ends in a path separator names a folder, and a folder is refused: the option takes
      a file name; so is an empty name;
    - an existing symbolic link, device node, pipe or socket is never replaced (the rename would put
      a regular file in its place);
    - a file inside a model checkpoint folder (config.json beside weights or tokenizer files, or
      ar2mdm.json) or inside a folder an ar2mdm run owns (its `.ar2mdm-run.json`) is refused: those
      folders are ar2mdm's or the model's, and one stray file can break them;
    - an existing regular file is replaced only if ar2mdm wrote it (its text starts with
      `signature`) or with `overwrite`;
    - the folder must exist and be writable.

    Returns the path. Raises UserError saying what is wrong and what to do.
    """
    raw = str(path)
    if not raw.strip():
        raise UserError(f"{option} is empty; give a file name, e.g. {option} trace.json.")
    if raw.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        raise UserError(
            f"{option} {raw} ends in a separator, so it names a folder; {option} takes a file name, "
            f"e.g. {option} {raw}trace.json."
        )
    path = Path(raw).expanduser()
    if path.is_symlink():
        raise UserError(f"{option} {path} is a symbolic link; ar2mdm does not write through links. Pass a file name.")
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; {option} takes a file name.")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise UserError(
            f"{option} {path} exists and is not a regular file (a device, pipe or socket); ar2mdm never replaces "
            "one. Pass the name of a new file."
        )
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"{option} {path} cannot be written: {ancestor} is a file, not a folder.")
            break
    if not parent.is_dir():
        raise UserError(f"{option} {path} cannot be written: the folder {parent} does not exist. Create it first.")
    owner = next((a for a in (parent, *parent.parents) if (a / OWNER_FILE).is_file()), None)
    if owner is not None or _is_checkpoint_folder(parent):
        what = f"the output folder of an ar2mdm run ({owner})" if owner is not None else "a model checkpoint folder"
        raise UserError(
            f"{option} {path} lies inside {what}; ar2mdm writes nothing else there, since a stray file can "
            "break it. Choose a file outside it."
        )
    if path.exists() and not overwrite and not _starts_with(path, signature):
        raise UserError(
            f"{option} {path} exists and was not written by ar2mdm; pass --overwrite to replace it, or choose "
            "another file name."
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{option} {path} is not writable. Choose a file in a folder you can write to.")
    return path


def _is_checkpoint_folder(folder: Path) -> bool:
    """A folder that holds a model: ar2mdm.json, or config.json beside weights or tokenizer files."""
    if (folder / "ar2mdm.json").is_file():
        return True
    if not (folder / "config.json").is_file():
        return False
    patterns = ("*.safetensors", "pytorch_model*.bin", "tokenizer*.json", "*.model")
    return any(any(folder.glob(pattern)) for pattern in patterns)


def _starts_with(path: Path, signature: str | None) -> bool:
    if not signature:
        return False
    try:
        with path.open("rb") as fh:
            return fh.read(len(signature.encode())) == signature.encode()
    except OSError:
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename: a reader (or a crash) sees
    the old content or the new one, never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes reach the disk before the rename makes them the file
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_folder_atomically(
    out: str | Path, write: Callable[[Path], None], *, replace: bool = True, keep: Iterable[str] = ()
) -> Path:
    """Call write(tmp) on a temporary sibling of `out`, then move it to `out` in one rename, so
    `out` is always absent, the previous complete folder, or the new complete one.

    replace: an existing `out` is swapped out (and removed); False keeps an existing `out` (another
    process made the same folder first) and discards the new one. keep: names of entries of an
    existing `out` that ar2mdm did not write (`Claim.foreign`): moved into the new folder before the
    swap, never removed. Returns `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        write(tmp)
        if out.exists() and not replace:
            return out
        if out.exists():
            for name in keep:
                if (out / name).exists() or (out / name).is_symlink():
                    os.replace(out / name, tmp / name)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
