"""Run options from three layers: built-in defaults < a config file < command-line flags.

A config file is YAML (.yaml/.yml) or TOML (.toml) holding a flat mapping of option names (as in
`TrainConfig`; dashes and underscores are interchangeable). Unknown keys are an error, never
silently ignored: a typo in a config file must not train the wrong model for an hour. Values are
checked against the options' declared types (`check_types`) before anything is loaded, so
`steps: "abc"` or `seq_len: null` is one clear message naming the option, not a traceback an
hour later (`common.options.check_types`, which also guards checkpoint metadata and dataclasses
built in Python).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import UserError
from common.options import check_types

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or TOML file into a flat dict with underscore keys."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist.")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            raw = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file {p} must end in .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise UserError(f"config file {p} could not be parsed: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {p} must hold a mapping of option: value, got {type(raw).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def merge_options(
    cls: type[T], file_options: dict[str, Any], cli_options: dict[str, Any], *, where: str = "the config file"
) -> T:
    """Build `cls` (a dataclass) from defaults < file_options < cli_options (None = not given).

    File values are type-checked (`check_types`); `where` names the file in messages."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(file_options) - known)
    if unknown:
        raise UserError(
            f"unknown option(s) {unknown} in the config file; known options: {sorted(known)}."
        )
    merged = check_types(cls, file_options, where)
    merged.update({k: v for k, v in cli_options.items() if v is not None})
    required = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in merged]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise UserError(f"missing required option(s): give {flags} on the command line or in --config.")
    return cls(**merged)
