"""Type checks for options from any source: config files, checkpoint metadata, dataclasses built
in Python. Flags are typed by the command line already; everything else goes through
`check_types`, so `steps: "abc"`, `steps = 1.5` or `seq_len: null` is one clear message naming
the option and the type it needs, before anything is loaded.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Literal, Union

from ar2mdm.common.errors import UserError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(value: Any, option: str) -> bool:
    """`value` read as a yes/no answer, the one rule for every source of options: command-line
    strings, config files, harness `--model_args`, environment variables and keyword arguments.

    Accepted: a bool; the ints 0 and 1; the strings true/yes/on/1 and false/no/off/0 in any case,
    with surrounding spaces. Anything else (None, "", "maybe", 2, 0.5) raises UserError naming
    `option` and the accepted words: a refusal is never read as consent, as Python's truthiness
    would read "no" or "off".

    >>> parse_bool("No", "trust_remote_code")
    False
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    shown = "nothing" if value is None or value == "" else repr(value)
    raise UserError(
        f"{option} must be a yes/no value ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), got {shown}."
    )


def parse_count(value: Any, option: str, *, least: int = 1) -> int:
    """`value` as a whole number >= `least` (a batch size, a number of steps, a rank, a budget).

    Accepted: an int (not a bool), a float with an integral value (2.0), a string of digits ("8").
    Raises UserError naming `option` for anything else (1.5, "abc", True, None) and for a number
    below `least`, so a bad count is one message and not a TypeError from deep inside torch.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise UserError(f"{option} must be a whole number >= {least}, got {value!r}.")
    if number < least:
        raise UserError(f"{option} must be >= {least}, got {number}.")
    return number


def check_types(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` checked against the field types of dataclass `cls`; returns them, converted.

    Accepted: an int for an int field (or a float with an integral value: `steps = 2.0`); a number
    or a numeric string for a float field (YAML reads `1e-4` as a string); true/false or another yes/no word for a bool (`parse_bool`);
    a string (or an int: `mask_token: 7`) for a str field; None only where the type allows it;
    a value of a Literal's choices; a list of strings, a mapping. Keys that are not fields are
    left to the caller. Raises UserError naming `where`, the option, the expected type and the
    value.
    """
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        if name in hints:
            out[name] = _coerce(value, hints[name], name, where)
    return out


class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    try:
        return _as(value, hint)
    except _Mismatch:
        shown = "null" if value is None else repr(value)
        raise UserError(
            f"{where}: option {name!r} must be {_describe(hint)}, got {shown} "
            f"({'null' if value is None else type(value).__name__}); fix the value."
        ) from None


def _as(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _as(value, option)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(hint) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is Any:
        return value
    if hint is bool:
        try:
            return parse_bool(value, "")
        except UserError:
            raise _Mismatch from None
    if hint is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if origin in (list, tuple):
        (item, *_) = typing.get_args(hint) or (Any,)
        if isinstance(value, list | tuple):
            return origin(_as(v, item) for v in value)
        raise _Mismatch
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value  # a type this checker does not know: left to the field's own validation


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (list, tuple):
        return f"a list of {_describe(typing.get_args(hint)[0])}s" if typing.get_args(hint) else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return {bool: "true or false (or yes/no, on/off, 1/0)", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )
