"""Files ar2mdm writes and reads back later, safe against a crash at any byte of a write.

Two kinds, one rule each:

- Append-only JSONL logs (a conversion run's `train.jsonl`). `append_record` writes each record
  as one full line in a single write() on a file opened for appending (flushed when it returns;
  `fsync=True` also forces it to disk, e.g. at a checkpoint). A crash can therefore only tear the
  LAST line: cut it short (no trailing newline) or leave bytes that are not JSON. `read_records`
  drops such a last line (`Records.torn` says what was dropped) and `rewrite_records` puts the
  file back as whole lines before a resumed run appends to it again, so a torn record never ends
  up in the middle. A damaged line anywhere else was not made by a crash (a hand edit, a disk
  error): it is a `UserError` naming the file and the line, with the caller's `remedy`.
- JSON files rewritten as a whole and read back (a checkpoint's state.json, a stage's
  stage.json, ar2mdm.json, reports): written with `ar2mdm.common.outputs.atomic_write_text` (a
  temporary sibling and a rename) or inside a folder swapped in whole (a checkpoint), so a reader
  sees the old content or the new one. One found damaged anyway (a full disk, a hand edit) is a
  `UserError` from `read_json` naming the file, what is wrong and the caller's `remedy`, never a
  traceback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import atomic_write_text


def record_line(record: dict[str, Any]) -> str:
    """`record` as one JSONL line (newline included; JSON never holds a raw newline)."""
    return json.dumps(record) + "\n"


def append_record(path: str | Path, record: dict[str, Any], *, fsync: bool = False) -> None:
    """Append `record` to the JSONL file `path` (created if absent) as one line, in one write()
    of the whole line with O_APPEND; fsync: also force it to disk before returning."""
    data = record_line(record).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # only on a full disk or a signal; the reader drops a torn tail
            written += os.write(fd, data[written:])
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: str | Path) -> None:
    """Force what was appended to `path` to disk (nothing if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Records:
    """The whole records of a JSONL log. records: the JSON objects in order; lines: the line
    number of each; torn: what was dropped from the end (a line a crash cut short or left
    unreadable), or None when the file ends with a whole record."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    torn: str | None = None


def damaged_line(path: str | Path, lineno: int, why: str, remedy: str) -> UserError:
    """The error for line `lineno` of the log `path`, damaged (`why`) somewhere a crash cannot
    reach (before its last line)."""
    return UserError(
        f"{path}, line {lineno}, is damaged ({why}). A crash can only tear the last line of this log, so the "
        f"file was changed some other way (edited, or a disk error). {remedy}"
    )


def read_records(path: str | Path, *, remedy: str) -> Records:
    """The records of the JSONL log `path` (none if it does not exist), its torn last line
    dropped (see the module docstring). remedy: what the user can do about a damaged line
    before the last; the UserError names the file and the line and ends with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Records()
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror}). {remedy}") from None
    *whole, tail = data.split(b"\n")  # tail: bytes after the last newline (b"" when none)
    parsed: list[tuple[int, dict[str, Any] | str]] = []
    for lineno, raw in enumerate(whole, start=1):
        if raw.strip():
            parsed.append((lineno, _parse(raw)))
    torn = None
    if tail.strip():
        torn = f"line {len(whole) + 1}: {len(tail)} bytes without a newline"
    elif parsed and isinstance(parsed[-1][1], str):
        lineno, why = parsed.pop()
        torn = f"line {lineno}: {why}"
    records, lines = [], []
    for lineno, record in parsed:
        if isinstance(record, str):
            raise damaged_line(path, lineno, record, remedy)
        records.append(record)
        lines.append(lineno)
    return Records(records, lines, torn)


def _parse(raw: bytes) -> dict[str, Any] | str:
    """A line's JSON object, or why it is not one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as err:
        return f"not valid JSON: {err.msg} at column {err.colno}"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    return record


def rewrite_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace the JSONL file `path` by `records`, one whole line each, atomically."""
    atomic_write_text(path, "".join(record_line(r) for r in records))


def read_json(path: str | Path, *, remedy: str, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in `path`, a file ar2mdm wrote (atomically) and now reads back.

    Raises UserError naming the file and what is wrong with it (missing, unreadable, not JSON,
    not an object: truncated by a full disk, or edited by hand), followed by `remedy`, what the
    user can do about it. what: what the file should hold, for the message."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing. {remedy}") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror}). {remedy}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged (not UTF-8 text). {remedy}") from None
    except json.JSONDecodeError as err:
        why = "empty" if not err.doc.strip() else f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        raise UserError(f"{path} is damaged ({why}). {remedy}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (a JSON {type(data).__name__}, not {what}). {remedy}")
    return data
