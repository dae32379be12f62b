"""Measure an AR checkpoint on the task suites: logit-difference accuracy and greedy accuracy.

    python scripts/measure_tasks.py                       # SmolLM2-135M, IOI + Greater-Than, 200 each
    python scripts/measure_tasks.py --tasks ioi induction --n 100 --greedy

For each task, `n` examples aligned under the model's tokenizer (seeded) are scored with
`ar2mdm.tasks.evaluate.logit_metrics` on clean and corrupted inputs; `--greedy` adds the exact
checker's accuracy on greedy continuations. Prints one row per task.
"""

from __future__ import annotations

import argparse
import time

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from ar2mdm.tasks import TASKS, get_task
from ar2mdm.tasks.evaluate import greedy_accuracy, logit_metrics


def _load(source: str):
    """(model, tokenizer) via conversion.checkpoints.load_ar (cached HF folder for "smollm2")."""
    from conversion.checkpoints import load_ar

    loaded = load_ar(source)
    return loaded.model, loaded.tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, organism, an HF folder or a .gguf")
    parser.add_argument("--tasks", nargs="+", default=["ioi", "greater_than"], choices=list(TASKS))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--greedy", action="store_true", help="also report greedy checker accuracy")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    t0 = time.time()
    model, tokenizer = _load(args.model)
    print(f"loaded {args.model} in {time.time() - t0:.1f}s")

    header = f"{'task':<13}{'n':>5}{'acc':>8}{'logit_diff':>12}{'prob_diff':>11}{'corr_ld':>9}{'corr_acc':>10}"
    if args.greedy:
        header += f"{'greedy':>8}"
    print(header)
    for name in args.tasks:
        task = get_task(name, tokenizer)
        examples = task.generate_aligned(args.n, seed=args.seed)
        m = logit_metrics(model, tokenizer, examples, batch_size=args.batch_size, corrupted=True)
        row = (
            f"{name:<13}{m['n']:>5}{m['accuracy']:>8.3f}{m['mean_logit_diff']:>12.3f}"
            f"{m['mean_prob_diff']:>11.3f}{m['corrupted_mean_logit_diff']:>9.3f}"
            f"{m['corrupted_accuracy']:>10.3f}"
        )
        if args.greedy:
            acc = greedy_accuracy(model, tokenizer, task, examples, batch_size=args.batch_size)
            row += f"{acc:>8.3f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
