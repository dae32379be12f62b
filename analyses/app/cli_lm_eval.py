"""lm-evaluation-harness from the `ar2mdm` command line: `ar2mdm lm-eval` (the harness's own CLI with
the "ar2mdm" model registered) and the harness branch of `ar2mdm eval --lm-eval TASKS`."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from analyses.app.cli_base import app, console, errors, load_options, refuse_earlier_results
from ar2mdm.common.errors import UserError


@app.command("lm-eval", context_settings={"ignore_unknown_options": True, "help_option_names": []})
def lm_eval_command(
    args: Annotated[list[str] | None, typer.Argument(help="The arguments of `lm_eval`.", show_default=False)] = None,
) -> None:
    """lm-evaluation-harness's `lm_eval` command, same arguments, with the ar2mdm model registered:
    --model ar2mdm --model_args pretrained=CHECKPOINT,sampler=NAME[,its options][,mc_samples=N].

    The plain `lm_eval` command cannot load models from outside its tree (lm-eval 0.4.13 has no
    plugin hook for them). `ar2mdm lm-eval --help` prints the harness's help; the model arguments are
    listed in the docstring of analyses/harness.py and in docs/CLI.md. Before the harness starts, the
    ar2mdm model's arguments are checked (`analyses.harness.check_model_args`) and the task names of
    a run are looked up in its task index (with --include_path): an unknown one is one line saying
    so (and, for an exported `ar2mdm_<task>`, that --include_path is needed)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    from analyses.harness import MODEL_NAME, check_model_args  # (importing it registers the "ar2mdm" model)

    saved, logger = sys.argv, logging.getLogger("lm_eval")
    handlers = list(logger.handlers)
    with errors("the harness writes its results only at the end; nothing was written."):
        sys.argv = ["lm-eval", *(args or [])]
        try:  # what lm_eval.__main__.cli_evaluate does, with ar2mdm's checks between parsing and running
            setup_logging()
            parser = HarnessCLI()
            parsed = parser.parse_args()
            if getattr(parsed, "command", None) == "run":
                if getattr(parsed, "model", None) == MODEL_NAME:  # the cheap checks before the harness starts
                    check_model_args(**(getattr(parsed, "model_args", None) or {}))
                check_run_tasks(parsed)
            parser.execute(parsed)
        finally:  # the harness adds a stream handler each run; leave the process as it was
            sys.argv = saved
            logger.handlers = handlers


def check_run_tasks(parsed: argparse.Namespace) -> None:
    """The task names of an `ar2mdm lm-eval run` (--tasks, --include_path), looked up as the harness
    will look them up (`lm_eval.tasks.TaskManager`); UserError for no task or an unknown one. Names
    that come from a --config file are left to the harness."""
    from lm_eval.tasks import TaskManager

    from analyses.harness_run import builtin_tasks, unknown_tasks
    from analyses.harness_tasks import PREFIX

    listing = (
        "`ar2mdm lm-eval ls tasks` lists the harness's tasks (`ar2mdm lm-eval ls tasks --include_path DIR` "
        "those in DIR too)"
    )
    include = getattr(parsed, "include_path", None)
    if include is not None and not Path(include).is_dir():
        raise UserError(
            f"--include_path {include} is not a folder; pass the folder that holds the task YAML files "
            "(OUT/lm_eval/tasks of `ar2mdm eval --lm-eval`)."
        )
    tasks = [t.strip() for task in (getattr(parsed, "tasks", None) or []) for t in task.split(",") if t.strip()]
    if not tasks:
        if getattr(parsed, "config", None) is None:
            raise UserError(f"no task given: name them with --tasks NAME[,NAME...]; {listing}.")
        return
    if len(tasks) == 1 and Path(tasks[0]).is_dir():
        return  # a folder of task YAML files (the harness reads it as such)
    # the exported tasks alone are indexed in a moment; the built-in ones take seconds (once per process)
    included = [TaskManager(include_path=include, include_defaults=False)] if include is not None else []
    if included and not unknown_tasks(tasks, *included):
        return
    missing = unknown_tasks(tasks, *included, builtin_tasks())
    if not missing:
        return
    exported = [m for m in missing if m.startswith(PREFIX)]
    if exported and include is None:
        what = "is an ar2mdm task" if len(exported) == 1 else "are ar2mdm tasks"
        raise UserError(
            f"unknown task(s) {missing}: {', '.join(exported)} {what} exported as YAML files, which the harness "
            "finds only with --include_path DIR, DIR being the folder they were written to: OUT/lm_eval/tasks "
            "of `ar2mdm eval --lm-eval TASK --out OUT`, or the folder given to analyses.harness_tasks.export_tasks."
        )
    where = f" nor in --include_path {include}" if include is not None else ""
    raise UserError(f"unknown task(s) {missing}: lm-evaluation-harness knows no such task{where}; {listing}.")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def taken_options(sampler: str, flags: dict[str, Any], *, default: bool = False) -> dict[str, Any]:
    """The sampler flags of `ar2mdm eval` that were given (not None), all of which `sampler` must
    take: a flag it does not take is refused (UserError naming it, the sampler's options and the
    samplers that take it), never dropped. default: `sampler` was not chosen with --samplers."""
    from ar2mdm.sampling import SAMPLERS, sampler_options

    given = {k: v for k, v in flags.items() if v is not None}
    accepted = sampler_options(sampler)
    refused = [k for k in given if k not in accepted]
    if not refused:
        return given
    takers = [
        name
        for name, cls in SAMPLERS.items()
        if not cls.needs_scorer and all(k in sampler_options(name) for k in refused)
    ]
    chosen = f"sampler {sampler!r}" + (" (the default for this checkpoint)" if default else "")
    them = "it" if len(refused) == 1 else "them"
    fix = f"choose a sampler that takes {them} with --samplers ({', '.join(takers)}), or drop {them}"
    fix = fix if takers else f"drop {them}"
    raise UserError(
        f"--lm-eval runs {chosen}, which does not take {', '.join(_flag(k) for k in refused)} "
        f"(its options: {', '.join(accepted) or 'none'}); {fix}."
    )


def harness_eval(
    model: str,
    out: Path,
    tasks: str,
    samplers: str | None,
    options: dict[str, Any],
    *,
    n: int,
    batch_size: int,
    seed: int,
    mc_samples: int,
    overwrite: bool,
    loading: tuple[str, str, bool, str, str, str],
) -> None:
    """`ar2mdm eval --lm-eval TASKS`: export ar2mdm's tasks, run them (and any harness task named)
    through the harness with one sampler, write OUT/lm_eval/ (results.json, tasks/) and OUT/results.md.

    options: every sampler flag of `ar2mdm eval`, None where not given; each one given must be an
    option of the sampler (else UserError). loading: the --dtype, --device, --trust-remote-code,
    --device-map, --max-memory and --offload-folder values. Every check (options, task names, the model) runs before OUT is written; a run that fails
    after that removes what it wrote, so OUT is never left holding a half run."""
    from analyses.harness_run import prepare_run, results_table, run_prepared
    from ar2mdm.common.outputs import atomic_write_text, claim_output
    from conversion.checkpoints import load_any

    with errors(f"nothing of this run was kept in {out}; the harness writes its results only at the end.") as stack:
        names = [x.strip() for x in (samplers or "").split(",") if x.strip()]
        if len(names) > 1:
            raise UserError(f"--lm-eval runs one sampler (the harness model holds one); got --samplers {samplers!r}.")
        wanted = [t.strip() for t in tasks.split(",") if t.strip()]
        if not wanted:
            raise UserError("--lm-eval is empty: name tasks, e.g. --lm-eval ioi,countdown.")
        if n < 1 or batch_size < 1:
            raise UserError(f"--n and --batch-size must be >= 1, got {n} and {batch_size}.")
        if mc_samples < 1:
            raise UserError(f"--mc-samples must be >= 1, got {mc_samples}.")
        load = load_options(*loading)
        if names:
            taken_options(names[0], options)  # before the model loads
        claim = stack.enter_context(claim_output(out, "eval"))
        refuse_earlier_results(claim, overwrite)
        loaded = load_any(model, **load)
        sampler = names[0] if names else None
        default = "ar" if loaded.meta.kind == "ar" else "low-confidence"
        chosen = taken_options(sampler or default, options, default=sampler is None)
        plan = prepare_run(
            loaded,
            wanted,
            out / "lm_eval",
            sampler=sampler,
            options=chosen,
            n=n,
            seed=seed,
            mc_samples=mc_samples,
            batch_size=batch_size,
        )
        claim.clear()
        claim.mark()
        try:
            report = run_prepared(plan, model_name=model)
            table = results_table(report)
            atomic_write_text(out / "results.md", f"# lm-evaluation-harness: {model}\n\n" + table)
        except BaseException:
            # a half run is no result: remove what this run wrote, so OUT is free for the next one
            # (never a user's own entry of that name, which the claim lists as foreign)
            foreign = claim.foreign
            if "lm_eval" not in foreign:
                shutil.rmtree(out / "lm_eval", ignore_errors=True)
            if "results.md" not in foreign:
                (out / "results.md").unlink(missing_ok=True)
            raise
    print(table)
    console.print(f"results: {out}/lm_eval/results.json, {out}/results.md", markup=False, highlight=False)
