"""ar2mdm's tasks as lm-evaluation-harness tasks: one JSONL file and YAML definitions per task.

`export_tasks(loaded, names, n, folder)` writes, for each task name (a built-in suite, or a .jsonl
user task file), the same examples `ar2mdm eval` evaluates (`analyses.generation.task_sets`: the
organism's held-out examples for an organism checkpoint, else `generate_aligned` under the
checkpoint's tokenizer) as `ar2mdm_<task>.jsonl`, and two harness tasks reading it offline
(`dataset_path: json` on the local file; no dataset hub). `plan_export` renders the same files
without writing them (every check first, then `Export.write`). The harness finds the tasks only
through the folder: `ar2mdm lm-eval ... --include_path FOLDER`.

- `ar2mdm_<task>` (generate_until): the context is the AR reading's prompt (`Example.ar_prompt`,
  else the prompt: the harness generates after a prefix only, so a suffix-bearing MDM example
  is read in its AR form), `max_gen_toks` is the longest reference answer in tokens, generation
  stops at a newline, and `process_generation` scores the text with the task's own exact checker
  (`analyses.generation.answer_checker`): metric `acc`.
- `ar2mdm_<task>_mc` (multiple_choice, only when every example has a counterfactual answer):
  choices (answer, first counterfactual), scored by the harness's loglikelihood: metric `acc`
  (and `acc_norm`), the harness's own multiple-choice rule.

For an ARM, and for an MDM on examples without a suffix or AR form, `ar2mdm_<task>` lays out
exactly the canvas `ar2mdm eval` does when all answers of the task have one token length (it is
then the oracle length both use), so the accuracies agree; `ar2mdm_<task>_mc` with one-token
answers agrees with `ar2mdm.tasks.evaluate.logit_metrics` (logit_diff > 0). Checked in
tests/test_harness.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import atomic_write_text
from ar2mdm.tasks import TASKS, Example, JsonlTask, Task, get_task, render
from conversion.checkpoints import Loaded

PREFIX = "ar2mdm_"
JSONL_CHECKER = "jsonl"


def harness_name(task: str, *, mc: bool = False) -> str:
    """The lm-eval task name of ar2mdm task `task` (its generation form, or the multiple-choice one)."""
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in task)
    return PREFIX + safe + ("_mc" if mc else "")


def _checker_name(task: Task) -> str:
    registered = getattr(type(task), "name", None)
    if isinstance(task, JsonlTask) or registered not in TASKS:
        return JSONL_CHECKER
    return str(registered)


def _doc_line(task: Task, example: Example, answer_tokens: int) -> str:
    """The JSONL line of one example (UserError if a field of it is not JSON)."""
    fields = asdict(example)
    fields["meta"] = dict(example.meta)
    doc = {
        "task": task.name,
        "checker": _checker_name(task),
        "context": example.ar_prompt if example.ar_prompt is not None else example.prompt,
        "answer_text": example.answer,
        "answer_tokens": answer_tokens,
        "choices": [example.answer, example.counterfactual[0]] if example.counterfactual else [],
        "label": 0,
        "example": fields,
    }
    try:
        return json.dumps(doc) + "\n"
    except TypeError as err:
        raise UserError(f"{example.where}: the example cannot be exported as JSON ({err}).") from None


def _yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "doc_to_text: context\n"
        'target_delimiter: ""\n' + body + "metadata:\n  version: 1.0\n"
    )


def _generation_yaml(name: str, data: Path, max_tokens: int) -> str:
    body = (
        "output_type: generate_until\n"
        "doc_to_target: answer_text\n"
        "generation_kwargs:\n"
        '  until: ["\\n"]\n'
        f"  max_gen_toks: {max_tokens}\n"
        "  do_sample: false\n"
        "  temperature: 0.0\n"
        "process_results: !function analyses.harness_tasks.process_generation\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return _yaml(name, data, body)


def _choice_yaml(name: str, data: Path) -> str:
    body = (
        "output_type: multiple_choice\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return _yaml(name, data, body)


@dataclass(frozen=True)
class Export:
    """The harness form of some tasks, rendered but not yet written (`plan_export`).

    folder: where it goes; exported: {ar2mdm task name: [its lm-eval task names]}; files: {path:
    text} of every file `write` creates (the JSONL data and the YAML definitions)."""

    folder: Path
    exported: dict[str, list[str]]
    files: dict[Path, str]

    def write(self) -> dict[str, list[str]]:
        """Write every file (each atomically) and return `exported`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path, text in self.files.items():
            atomic_write_text(path, text)
        return self.exported


def plan_export(loaded: Loaded, names: Sequence[str], n: int, folder: str | Path, *, seed: int = 0) -> Export:
    """Everything `export_tasks` would write into `folder`, rendered in memory; nothing is written,
    so a bad task name or example leaves the folder untouched. Raises what `export_tasks` raises."""
    from analyses.generation import task_sets

    out = Path(folder)
    exported: dict[str, list[str]] = {}
    files: dict[Path, str] = {}
    for name, (task, examples) in task_sets(loaded, names, n, seed=seed).items():
        reading = "mdm" if loaded.meta.kind == "mdm" else "ar"
        lengths, lines = [], []
        for ex in examples:
            r = render(ex, loaded.tokenizer, reading, shift=loaded.meta.shift, mask_id=loaded.meta.mask_id)
            lengths.append(len(r.answer_ids))
            lines.append(_doc_line(task, ex, len(r.answer_ids)))
        data = out / f"{harness_name(name)}.jsonl"
        files[data] = "".join(lines)
        names_out = [harness_name(name)]
        files[out / f"{names_out[0]}.yaml"] = _generation_yaml(names_out[0], data, max(lengths))
        if all(ex.counterfactual for ex in examples):
            names_out.append(harness_name(name, mc=True))
            files[out / f"{names_out[1]}.yaml"] = _choice_yaml(names_out[1], data)
        exported[name] = names_out
    return Export(out, exported, files)


def export_tasks(
    loaded: Loaded, names: Sequence[str], n: int, folder: str | Path, *, seed: int = 0
) -> dict[str, list[str]]:
    """Write the harness form of each task in `names` into `folder` (module docstring).

    Returns {ar2mdm task name: [its lm-eval task names]}; pass `folder` as the harness's
    `include_path` (`lm_eval.tasks.TaskManager(include_path=...)`, or `--include_path` of
    `ar2mdm lm-eval`). Raises UserError for an unknown task, or an example whose fields are not
    JSON, before writing anything."""
    return plan_export(loaded, names, n, folder, seed=seed).write()


@cache
def _task(checker: str, name: str) -> Task:
    if checker == JSONL_CHECKER:
        return JsonlTask(name, [], "global")
    return get_task(checker)


def example_of(doc: Mapping[str, Any]) -> Example:
    """The `Example` an exported document was written from (meta lists stay lists)."""
    fields = dict(doc["example"])
    for key in ("correct", "counterfactual"):
        fields[key] = tuple(fields.get(key) or ())
    return Example(**fields)


def process_generation(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """The harness's `process_results` for `ar2mdm_<task>`: {"acc": 1.0 or 0.0} from the task's
    exact checker applied to the generated text `results[0]`."""
    from analyses.generation import answer_checker

    task = _task(str(doc["checker"]), str(doc["task"]))
    return {"acc": float(answer_checker(task)(example_of(doc), results[0]))}
