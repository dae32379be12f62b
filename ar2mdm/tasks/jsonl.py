"""User tasks from a JSONL file.

One JSON object per line with fields `prompt`, `answer`, `corrupted_prompt` and optionally
`suffix`, `corrupted_suffix`, `correct` (list of strings), `counterfactual` (list of strings),
`ar_prompt`, `corrupted_ar_prompt`, `meta` (object). Blank lines are skipped. The checker compares
the generation with the stripped answer: an exact match of the first len(answer) characters
after leading whitespace, or, for one-word answers, the first generated word.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ar2mdm.common.errors import TaskError
from ar2mdm.common.textfiles import jsonl_records
from ar2mdm.tasks.base import BaseTask, Example, first_word

REQUIRED = ("prompt", "answer", "corrupted_prompt")
_STRINGS = ("suffix", "corrupted_suffix", "ar_prompt", "corrupted_ar_prompt")
_LISTS = ("correct", "counterfactual")
KNOWN = set(REQUIRED) | set(_STRINGS) | set(_LISTS) | {"meta"}


class JsonlTask(BaseTask):
    """A fixed list of examples; `generate(n, seed)` is a seeded sample of n of them."""

    def __init__(self, name: str, examples: Sequence[Example], kind: Literal["local", "global"]) -> None:
        if kind not in ("local", "global"):
            raise TaskError(f"task kind must be 'local' or 'global', got {kind!r}.")
        self.name = name
        self.kind = kind
        self.examples = tuple(examples)

    def generate(self, n: int, seed: int = 0) -> list[Example]:
        """n distinct examples in a seeded random order (TaskError if the file has fewer)."""
        if not 0 <= n <= len(self.examples):
            raise TaskError(f"{self.name}: asked for {n} examples but the file holds {len(self.examples)}.")
        return random.Random(seed).sample(list(self.examples), n)

    def check(self, example: Example, generated: str) -> bool:
        """Exact match of the stripped answer (first word for one-word answers)."""
        ref = example.answer.strip()
        if len(ref.split()) == 1:
            return first_word(generated) == first_word(ref)
        return generated.lstrip()[: len(ref)] == ref


def _example(raw: object, name: str, where: str) -> Example:
    if not isinstance(raw, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(raw).__name__}.")
    missing = [k for k in REQUIRED if not isinstance(raw.get(k), str)]
    if missing:
        raise TaskError(f"{where}: missing or non-string field(s) {missing}; each line needs {list(REQUIRED)}.")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        raise TaskError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(KNOWN)}.")
    kwargs: dict[str, object] = {k: raw[k] for k in REQUIRED}
    for k in _STRINGS:
        if k in raw:
            if not isinstance(raw[k], str):
                raise TaskError(f"{where}: field {k!r} must be a string.")
            kwargs[k] = raw[k]
    for k in _LISTS:
        if k in raw:
            v = raw[k]
            if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise TaskError(f"{where}: field {k!r} must be a list of strings.")
            kwargs[k] = tuple(v)
    if "meta" in raw:
        if not isinstance(raw["meta"], dict):
            raise TaskError(f"{where}: field 'meta' must be an object.")
        kwargs["meta"] = dict(raw["meta"])
    return Example(task=name, origin=where, **kwargs)  # type: ignore[arg-type]


def load_jsonl_task(
    path: str | Path, name: str | None = None, *, kind: Literal["local", "global"] = "global"
) -> JsonlTask:
    """A task from a JSONL file (see the module docstring); `name` defaults to the file stem."""
    p = Path(path).expanduser()
    task_name = name or p.stem
    examples = [_example(raw, task_name, f"{p}:{i}") for i, raw in jsonl_records(p, TaskError)]
    if not examples:
        raise TaskError(f"{p} holds no examples.")
    return JsonlTask(task_name, examples, kind)
