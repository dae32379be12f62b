"""lm-evaluation-harness runs of an ar2mdm checkpoint (the `ar2mdm eval --lm-eval` path): check
everything first and write nothing (`prepare_run`: task names resolved by the harness's own index,
ar2mdm's tasks rendered in memory, the model's arguments checked), then run (`run_prepared`:
export, `lm_eval.simple_evaluate`, results.json with the ELBO spread); `evaluate` does both;
`results_table` is the Markdown table of a report. The model itself is `analyses.harness`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from analyses.harness import ModelAdapter
from analyses.harness_tasks import Export
from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import atomic_write_text
from conversion.checkpoints import Loaded


@cache
def builtin_tasks() -> Any:
    """A `lm_eval.tasks.TaskManager` of the harness's built-in tasks only, built once per process:
    indexing its ~15k task files takes seconds, and they do not change while ar2mdm runs."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=True)


def unknown_tasks(names: Sequence[str], *managers: Any) -> list[str]:
    """The names in `names` that lm-evaluation-harness cannot resolve with any of `managers`
    (`lm_eval.tasks.TaskManager`s), by the harness's own rules: a task, group or tag name or a glob
    pattern matching one (`TaskManager.match_tasks`); a name ending in .yaml is a file path (or glob)
    that must match a file."""
    import glob

    missing = []
    for name in names:
        if name.endswith(".yaml"):
            if not glob.glob(str(Path(name).absolute())):
                missing.append(name)
        elif not any(m.match_tasks([name]) for m in managers):
            missing.append(name)
    return missing


@dataclass
class HarnessRun:
    """A harness run checked by `prepare_run` and not started: nothing is written yet.

    lm: the harness model; folder: where `run_prepared` writes (results.json, tasks/); tasks: the
    lm-eval task names, in order; export: ar2mdm's tasks rendered for the harness, or None;
    seed: the seed of the examples, the sampler and the harness."""

    lm: ModelAdapter
    folder: Path
    tasks: list[str]
    export: Export | None
    seed: int = 0
    manager: Any = None  # a TaskManager already built for the check, reused when it fits

    @property
    def harness_tasks(self) -> bool:
        """Whether any task is the harness's own (its ~15k built-in task files must be indexed)."""
        ours = {x for v in (self.export.exported if self.export else {}).values() for x in v}
        return any(x not in ours for x in self.tasks)


def prepare_run(
    loaded: Loaded,
    tasks: list[str],
    folder: str | Path,
    *,
    sampler: str | None = None,
    options: dict[str, Any] | None = None,
    n: int = 100,
    seed: int = 0,
    mc_samples: int = 32,
    batch_size: int = 16,
) -> HarnessRun:
    """Every check of `evaluate`, nothing written: the sampler and its options (`ModelAdapter`),
    ar2mdm's tasks rendered (`analyses.harness_tasks.plan_export`), the harness's own task names
    looked up in its task index. Raises UserError for any of them; `run_prepared` then runs it."""
    from analyses.harness_tasks import PREFIX, plan_export
    from ar2mdm.tasks import TASKS

    out = Path(folder)
    lm = ModelAdapter.from_loaded(
        loaded, sampler, mc_samples=mc_samples, batch_size=batch_size, seed=seed, **(options or {})
    )
    ours = [t for t in tasks if t in TASKS or t.endswith(".jsonl")]
    export = plan_export(loaded, ours, n, out / "tasks", seed=seed) if ours else None
    exported = export.exported if export else {}
    names = [x for t in tasks for x in (exported.get(Path(t).stem if t.endswith(".jsonl") else t) or [t])]
    own = {x for v in exported.values() for x in v}
    others = [x for x in names if x not in own]
    manager = None
    if others:  # indexing the harness's ~15k built-in task files takes seconds: only when one is named
        manager = builtin_tasks()
        missing = unknown_tasks(others, manager)
        if missing:
            stems = [m.removeprefix(PREFIX).removesuffix("_mc") for m in missing if m.startswith(PREFIX)]
            hint = (
                f" An exported name is not needed here: name the ar2mdm task itself ({', '.join(stems)}); "
                "--lm-eval exports it and runs both its forms."
                if stems
                else ""
            )
            raise UserError(
                f"unknown task(s) {missing}: neither ar2mdm tasks ({', '.join(TASKS)}, or a .jsonl task file) nor "
                f"tasks lm-evaluation-harness knows.{hint} `ar2mdm lm-eval ls tasks` lists the harness's tasks."
            )
    return HarnessRun(lm, out, names, export, seed, manager if export is None else None)


def run_prepared(run: HarnessRun, *, num_fewshot: int = 0, model_name: str = "") -> dict[str, Any]:
    """Write the exported tasks of `run` (`prepare_run`) into `run.folder/tasks`, run every task
    through the harness and write `run.folder/results.json`; returns the report (`evaluate`)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = run.folder
    out.mkdir(parents=True, exist_ok=True)
    exported = run.export.write() if run.export else {}
    manager = run.manager or TaskManager(
        include_path=str(out / "tasks") if exported else None, include_defaults=run.harness_tasks
    )
    res = lm_eval.simple_evaluate(
        model=run.lm,
        tasks=run.tasks,
        task_manager=manager,
        num_fewshot=num_fewshot,
        log_samples=False,
        random_seed=run.seed,
    )
    loaded = run.lm.loaded
    report = {
        "results": {t: dict(v) for t, v in res["results"].items()},
        "n-samples": res.get("n-samples", {}),
        "ar2mdm": {
            "model": model_name or loaded.meta.source,
            **(
                {"hub": {"repo_id": loaded.meta.repo_id, "revision": loaded.meta.revision}}
                if loaded.meta.repo_id
                else {}
            ),
            "kind": loaded.meta.kind,
            "sampler": run.lm.sampler_name,
            "options": run.lm.options,
            "exported": exported,
            "loglikelihood_spread": run.lm.spread(),
        },
    }
    atomic_write_text(out / "results.json", json.dumps(report, indent=1, default=str))
    return report


def evaluate(
    loaded: Loaded,
    tasks: list[str],
    folder: str | Path,
    *,
    sampler: str | None = None,
    options: dict[str, Any] | None = None,
    n: int = 100,
    seed: int = 0,
    mc_samples: int = 32,
    batch_size: int = 16,
    num_fewshot: int = 0,
    model_name: str = "",
) -> dict[str, Any]:
    """Run `tasks` through lm-evaluation-harness on `loaded` and write `folder/results.json`.

    A task named like an ar2mdm task (a built-in suite, a .jsonl user task file) is exported first
    (`analyses.harness_tasks.export_tasks`, n examples, into `folder/tasks`: both its forms run);
    any other name is the harness's own task (which needs its dataset: no hub is reachable here).
    Everything is checked before anything is written (`prepare_run`: sampler options, task names),
    then run (`run_prepared`). `model_name` is what the report calls the checkpoint (default: its
    metadata's source). Returns {"results": {lm-eval task: {metric: value}}, "ar2mdm": {model,
    sampler, options, exported, loglikelihood_spread}, "n-samples": ...}."""
    run = prepare_run(
        loaded,
        tasks,
        folder,
        sampler=sampler,
        options=options,
        n=n,
        seed=seed,
        mc_samples=mc_samples,
        batch_size=batch_size,
    )
    return run_prepared(run, num_fewshot=num_fewshot, model_name=model_name)


def results_table(report: dict[str, Any]) -> str:
    """A markdown table of a report from `evaluate`: task, metric, value, stderr."""
    lines = ["| task | metric | value | stderr |", "|---|---|---|---|"]
    for task, metrics in report["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):
                continue
            metric = key.split(",", 1)[0]
            err = metrics.get(key.replace(metric, metric + "_stderr", 1))
            err_text = f"{err:.4f}" if isinstance(err, int | float) else "-"
            lines.append(f"| {task} | {metric} | {value:.4f} | {err_text} |")
    spread = report["ar2mdm"]["loglikelihood_spread"]
    if spread["requests"]:
        lines.append("")
        lines.append(
            f"MDM loglikelihood: Monte-Carlo ELBO, {spread['mc_samples']} samples per request over "
            f"{spread['requests']} requests; standard error mean {spread['mean_stderr']:.4f}, "
            f"largest {spread['max_stderr']:.4f} nats."
        )
    return "\n".join(lines) + "\n"
