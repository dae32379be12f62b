"""Bad inputs of the lm-evaluation-harness entry points (`ar2mdm lm-eval`, `ar2mdm eval --lm-eval`):
`Case`s in the form of tests/error_cases.py, to be merged into its CASES (and docs/ERRORS.md).

The `ar2mdm lm-eval` cases that get past the task names need a folder of exported harness tasks:
`exported_tasks` (the cases' `setup`) writes {harness_tasks} once (ar2mdm_ioi and ar2mdm_ioi_mc,
exported from {mdm}) before the sandbox's snapshot is taken.
"""

from __future__ import annotations

from pathlib import Path

from error_cases import Case


def exported_tasks(p: dict[str, Path]) -> None:
    """{harness_tasks}: ioi exported for the harness from {mdm} (made once)."""
    from analyses.harness_tasks import export_tasks
    from conversion.checkpoints import load_any

    p["harness_tasks"] = p["root"] / "harness-tasks"
    if not p["harness_tasks"].exists():
        export_tasks(load_any(p["mdm"]), ["ioi"], 4, p["harness_tasks"])


def _lm_eval(model_args: str, *extra: str) -> tuple[str, ...]:
    return (
        "lm-eval",
        "--model",
        "ar2mdm",
        "--model_args",
        model_args,
        "--tasks",
        "ar2mdm_ioi_mc",
        "--include_path",
        "{harness_tasks}",
        *extra,
    )


CASES: tuple[Case, ...] = (
    # --- `ar2mdm lm-eval`: --model_args ------------------------------------------------------------
    Case(
        "harness-trust-no",
        "published",
        "`lm-eval --model_args pretrained=FOLDER,trust_remote_code=no` on a folder that ships its own code",
        ("ships its own code", "--trust-remote-code"),
        "no (any of no/off/false/0) never runs the folder's code; trust_remote_code=yes if you trust it",
        cli=_lm_eval("pretrained={custom_arch},trust_remote_code=no"),
        setup=exported_tasks,
    ),
    Case(
        "harness-trust-not-a-word",
        "options",
        "`lm-eval --model_args ...,trust_remote_code=maybe`",
        ("model argument trust_remote_code must be a yes/no value", "true/yes/on/1", "false/no/off/0"),
        "yes or no (true/yes/on/1 or false/no/off/0)",
        cli=_lm_eval("pretrained={custom_arch},trust_remote_code=maybe"),
        setup=exported_tasks,
    ),
    Case(
        "harness-dtype",
        "options",
        "`lm-eval --model_args ...,dtype=int4`",
        ("model argument dtype 'int4'", "use fp32, bf16 or fp16"),
        "dtype=fp32, bf16 or fp16",
        cli=_lm_eval("pretrained={mdm},dtype=int4"),
        setup=exported_tasks,
    ),
    Case(
        "harness-seed",
        "options",
        "`lm-eval --model_args ...,seed=abc`",
        ("model argument seed='abc' must be a whole number",),
        "a whole number",
        cli=_lm_eval("pretrained={mdm},seed=abc"),
        setup=exported_tasks,
    ),
    Case(
        "harness-batch-size",
        "options",
        "`lm-eval --model_args ...,batch_size=1.5`",
        ("model argument batch_size=1.5 must be a whole number",),
        "a whole number >= 1",
        cli=_lm_eval("pretrained={mdm},batch_size=1.5"),
        setup=exported_tasks,
    ),
    Case(
        "harness-sampler-bool",
        "options",
        "`lm-eval --model_args ...,sampler=threshold,stop_at_eos=maybe`",
        ("option 'stop_at_eos' must be true or false", "yes/no"),
        "yes or no (stop_at_eos=no is off)",
        cli=_lm_eval("pretrained={mdm},sampler=threshold,stop_at_eos=maybe"),
        setup=exported_tasks,
    ),
    # --- `ar2mdm lm-eval`: task names ---------------------------------------------------------------
    Case(
        "harness-unknown-task",
        "data",
        "`lm-eval --tasks no_such_task`",
        ("unknown task(s) ['no_such_task']", "`ar2mdm lm-eval ls tasks` lists"),
        "a task name the harness knows (`ar2mdm lm-eval ls tasks`)",
        cli=("lm-eval", "--model", "ar2mdm", "--model_args", "pretrained={mdm}", "--tasks", "no_such_task"),
    ),
    Case(
        "harness-exported-no-include",
        "data",
        "`lm-eval --tasks ar2mdm_ioi` (an exported ar2mdm task) without --include_path",
        ("exported as YAML files", "--include_path DIR", "OUT/lm_eval/tasks"),
        "--include_path OUT/lm_eval/tasks (where `ar2mdm eval --lm-eval` wrote them)",
        cli=("lm-eval", "--model", "ar2mdm", "--model_args", "pretrained={mdm}", "--tasks", "ar2mdm_ioi"),
    ),
    Case(
        "harness-include-not-folder",
        "data",
        "`lm-eval --include_path FILE`",
        ("--include_path", "is not a folder"),
        "the folder that holds the task YAML files",
        cli=(
            "lm-eval",
            "--model",
            "ar2mdm",
            "--model_args",
            "pretrained={mdm}",
            "--tasks",
            "ar2mdm_ioi",
            "--include_path",
            "{file}",
        ),
    ),
    Case(
        "harness-no-tasks",
        "data",
        "`lm-eval --model ar2mdm` without --tasks",
        ("no task given", "--tasks"),
        "name tasks with --tasks",
        cli=("lm-eval", "--model", "ar2mdm", "--model_args", "pretrained={mdm}"),
    ),
    # --- `ar2mdm eval --lm-eval` -----------------------------------------------------------------------
    Case(
        "lm-eval-option-not-taken",
        "options",
        "`eval --lm-eval ioi --samplers low-confidence --tau 0.5`: a sampler flag the sampler does not take",
        ("does not take --tau", "its options: steps, block_length, temperature", "--samplers (threshold)"),
        "choose a sampler that takes the flag (--samplers threshold), or drop it",
        cli=(
            "eval",
            "--model",
            "{mdm}",
            "--out",
            "{root}/ev",
            "--lm-eval",
            "ioi",
            "--samplers",
            "low-confidence",
            "--tau",
            "0.5",
        ),
    ),
    Case(
        "lm-eval-unknown-task",
        "data",
        "`eval --lm-eval ioi,no_such_task` (checked before --out is written)",
        ("unknown task(s) ['no_such_task']", "ioi, greater_than", "`ar2mdm lm-eval ls tasks`"),
        "an ar2mdm task, a .jsonl task file or a task the harness knows",
        cli=("eval", "--model", "{mdm}", "--out", "{root}/ev", "--lm-eval", "ioi,no_such_task", "--n", "2"),
    ),
)
