"""Held-out accuracy of the model organism as a function of training steps, for one configuration.

Runs `conversion.organism.train_organism` for an exact number of steps with periodic held-out
evaluation, and writes the report (loss curve, accuracy every `--eval-every` steps, steps/s) as
JSON. Used to choose the organism's default size and learning rate by steps rather than by wall
time (wall time on a shared machine says more about the neighbours than about the recipe).

    python scripts/organism_curve.py --steps 1200 --eval-every 200 --json out.json \\
        --set d_model=128 --set d_mlp=384 --set lr=0.003 \\
        --set 'mixture={"ioi": 8, "greater_than": 4, "induction": 8, "countdown": 28, "infilling": 6, "sudoku": 10}'

`--set KEY=VALUE` overrides an `OrganismConfig` field (VALUE parsed as JSON, else a string);
`--task TASK.OPTION=VALUE` overrides a task option in `TASK_OPTIONS`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import fields
from pathlib import Path

from conversion import organism


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--periodic-examples", type=int, default=48)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--task", action="append", default=[], metavar="TASK.OPTION=VALUE")
    args = parser.parse_args()

    known = {f.name for f in fields(organism.OrganismConfig)}
    overrides = {}
    for item in args.set:
        key, _, val = item.partition("=")
        if key not in known:
            parser.error(f"unknown OrganismConfig field {key!r}; fields: {sorted(known)}")
        overrides[key] = _value(val)
    for item in args.task:
        key, _, val = item.partition("=")
        task, _, option = key.partition(".")
        if task not in organism.TASK_OPTIONS:
            parser.error(f"unknown task {task!r}; tasks: {list(organism.TASK_OPTIONS)}")
        organism.TASK_OPTIONS[task][option] = _value(val)
    cfg = organism.OrganismConfig(
        eval_every=args.eval_every,
        periodic_examples=args.periodic_examples,
        eval_examples=args.eval_examples,
        **overrides,
    )
    out = args.out or Path(tempfile.mkdtemp()) / "organism"
    report = organism.train_organism(out=out, seed=args.seed, steps=args.steps, config=cfg, progress=False)
    args.json.write_text(report.to_json())
    organism.print_report(report)


if __name__ == "__main__":
    main()
