"""`python -m analyses.validation --out DIR`: score every attribution method on the ground-truth
models and write DIR/groundtruth.json and DIR/groundtruth.md (`scoring.write_validation`)."""

from __future__ import annotations

import argparse
import json

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
import torch

from analyses.validation.groundtruth import N_EXAMPLES, SEED
from analyses.validation.scoring import METHODS, below_target, markdown_table, write_validation


def main(argv: list[str] | None = None) -> int:
    """Parse the options, write the files, print the table; exit status 1 when a method with a
    target (`scoring.TARGETS`) falls below it."""
    parser = argparse.ArgumentParser(prog="python -m analyses.validation", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="attribution methods to score")
    parser.add_argument("--examples", type=int, default=N_EXAMPLES, help="examples per model")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation points")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the models are tiny: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = write_validation(args.out, methods=args.methods, n=args.examples, seed=args.seed, steps=args.steps)

    rows = json.loads(path.read_text())["rows"]
    print(markdown_table(rows), end="")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    failed = below_target(rows)
    for r in failed:
        print(f"BELOW TARGET: {r['model']} {r['method']} {r['level']} AUC {r['auc']:.4f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
