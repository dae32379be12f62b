"""lm-evaluation-harness from the `ar2mdm` command line: `ar2mdm lm-eval` (the harness's own CLI with
the "ar2mdm" model registered) and the harness branch of `ar2mdm eval --lm-eval TASKS`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ar2mdm.cli_base import app, console, errors, load_options, refuse_earlier_results
from common.errors import UserError


@app.command("lm-eval", context_settings={"ignore_unknown_options": True, "help_option_names": []})
def lm_eval_command(
    args: Annotated[list[str] | None, typer.Argument(help="The arguments of `lm_eval`.", show_default=False)] = None,
) -> None:
    """lm-evaluation-harness's `lm_eval` command, same arguments, with the ar2mdm model registered:
    --model ar2mdm --model_args pretrained=CHECKPOINT,sampler=NAME[,its options][,mc_samples=N].

    The plain `lm_eval` command cannot load models from outside its tree (lm-eval 0.4.13 has no
    plugin hook for them). `ar2mdm lm-eval --help` prints the harness's help; the model arguments are
    listed in the docstring of analyses/harness.py and in the README."""
    from lm_eval.__main__ import cli_evaluate

    import analyses.harness  # noqa: F401  (registers the "ar2mdm" model)

    saved, logger = sys.argv, logging.getLogger("lm_eval")
    handlers = list(logger.handlers)
    with errors("the harness writes its results only at the end; nothing was written."):
        sys.argv = ["lm-eval", *(args or [])]
        try:
            cli_evaluate()
        finally:  # the harness adds a stream handler each run; leave the process as it was
            sys.argv = saved
            logger.handlers = handlers


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
    loading: tuple[str, str, bool],
) -> None:
    """`ar2mdm eval --lm-eval TASKS`: export ar2mdm's tasks, run them (and any harness task named)
    through the harness with one sampler, write OUT/lm_eval/ (results.json, tasks/) and OUT/results.md.
    loading: the --dtype, --device and --trust-remote-code values."""
    from analyses.harness import evaluate, results_table
    from common.outputs import atomic_write_text, claim_output
    from conversion.checkpoints import load_any
    from sampling import sampler_options

    with errors(f"{out}/lm_eval/tasks may hold the exported tasks; results are written only at the end.") as stack:
        names = [x.strip() for x in (samplers or "").split(",") if x.strip()]
        if len(names) > 1:
            raise UserError(f"--lm-eval runs one sampler (the harness model holds one); got --samplers {samplers!r}.")
        wanted = [t.strip() for t in tasks.split(",") if t.strip()]
        if not wanted:
            raise UserError("--lm-eval is empty: name tasks, e.g. --lm-eval ioi,countdown.")
        if mc_samples < 1:
            raise UserError(f"--mc-samples must be >= 1, got {mc_samples}.")
        load = load_options(*loading)
        claim = stack.enter_context(claim_output(out, "eval"))
        refuse_earlier_results(claim, overwrite)
        loaded = load_any(model, **load)
        sampler = names[0] if names else None
        default = "ar" if loaded.meta.kind == "ar" else "low-confidence"
        accepted = set(sampler_options(sampler or default))
        chosen = {k: v for k, v in options.items() if v is not None and k in accepted}
        claim.clear()
        claim.mark()
        report = evaluate(
            loaded,
            wanted,
            out / "lm_eval",
            sampler=sampler,
            options=chosen,
            n=n,
            seed=seed,
            mc_samples=mc_samples,
            batch_size=batch_size,
            model_name=model,
        )
        table = results_table(report)
        atomic_write_text(out / "results.md", f"# lm-evaluation-harness: {model}\n\n" + table)
    print(table)
    console.print(f"results: {out}/lm_eval/results.json, {out}/results.md", markup=False, highlight=False)
