"""Task suites: seeded generators of clean/corrupted example pairs with exact checkers.

Locally causal tasks ("ioi", "greater_than", "induction") can be solved from tokens before the
answer; global tasks ("countdown", "infilling", "sudoku") need the whole input (a goal, a suffix,
a grid) to produce even the first answer token. The reference study found that an MDM converted
from an ARM keeps the ARM's circuits on the first kind and rebuilds them on the second.

    >>> from tasks import get_task
    >>> task = get_task("ioi")
    >>> ex = task.generate(1, seed=0)[0]
    >>> task.check(ex, ex.answer)
    True

`get_task(name, tokenizer)` restricts word lists to single tokens under that tokenizer;
`task.generate_aligned(n)` then keeps examples whose clean and corrupted renderings align in both
reading modes. `load_jsonl_task` reads a user task; `ar2mdm.tasks.evaluate` scores models. Every
`BaseTask` subclass with a class-level `name` registers itself in `TASKS` (`task_names(kind)`
lists them); the built-in suites are imported here.
"""

from __future__ import annotations

import inspect
from typing import Any

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from ar2mdm.common.errors import TaskError
from ar2mdm.tasks.base import (
    TASKS,
    BaseTask,
    Batch,
    Example,
    Rendered,
    Task,
    Tokenizer,
    check_alignment,
    collate,
    generate_aligned,
    render,
    task_names,
)
from ar2mdm.tasks.jsonl import JsonlTask, load_jsonl_task

# The built-in suites register in this order (local tasks first), which `task_names()` keeps:
# isort: off
from ar2mdm.tasks.ioi import IOITask
from ar2mdm.tasks.greater_than import GreaterThanTask
from ar2mdm.tasks.induction import InductionTask
from ar2mdm.tasks.countdown import CountdownTask
from ar2mdm.tasks.infilling import InfillingTask
from ar2mdm.tasks.sudoku import SudokuTask
# isort: on


def get_task(name: str, tokenizer: Tokenizer | None = None, **options: Any) -> Task:
    """The task called `name`, built for `tokenizer` (None: full built-in word lists).

    `options` are the task class's keyword options (e.g. `n_numbers=4` for countdown); an unknown
    name or option raises TaskError listing what exists.
    """
    factory = TASKS.get(name)
    params = inspect.signature(factory).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TaskError(f"task {name!r} has no option(s) {unknown}; its options are {accepted or 'none'}.")
    return factory(tokenizer, **options)


__all__ = [
    "TASKS",
    "BaseTask",
    "Batch",
    "CountdownTask",
    "Example",
    "GreaterThanTask",
    "IOITask",
    "InductionTask",
    "InfillingTask",
    "JsonlTask",
    "Rendered",
    "SudokuTask",
    "Task",
    "check_alignment",
    "collate",
    "generate_aligned",
    "get_task",
    "load_jsonl_task",
    "render",
    "task_names",
]
