"""Reading user text files with errors that name the file and the line.

`read_text` and `jsonl_records` take the `UserError` kind to raise (`DataError` for training data,
`TaskError` for task files), so every reader of user files says the same things the same way:
a missing file, a folder where a file was expected, a binary file, a line that is not JSON, a
line that is not a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ar2mdm.common.errors import UserError


def read_text(path: str | Path, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of `path`, or `error` saying why it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a file.") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (a binary file?): {exc}. Re-encode it as UTF-8.") from None
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror}).") from None


def jsonl_records(path: str | Path, error: type[UserError] = UserError) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for every non-empty line of a JSONL file; `error` names the
    file and line of the first line that is not a JSON object."""
    path = Path(path)
    for lineno, line in enumerate(read_text(path, error).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise error(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object.")
        yield lineno, record
