"""Sampler throughput: generated tokens per second of each sampler as a ratio to low-confidence
decoding, on the same examples, measured in the same process in interleaved rounds (this machine
is noisy: each round runs every sampler once, the median over rounds is reported).

    python -m benchmarks.bench_samplers [--mdm runs/organism-mdm-sft] [--task countdown] [--n 100]
        [--rounds 5] [--batch-size 1]

Prints, per sampler: median tokens/s, its ratio to low-confidence, mean NFE and accuracy. The
issue's target: threshold decoding >= 2x the tokens/s of low-confidence within 2 points of its
accuracy. Uses the organism's MDM (`ar2mdm convert --model organism --data tasks --sft ...`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from analyses.generation import SamplerSpec, ar_scorer, task_accuracy, task_sets
from conversion.checkpoints import load_any

TARGET = 2.0  # threshold tokens/s / low-confidence tokens/s at least this ...
ACCURACY_POINTS = 0.02  # ... with accuracy at most this far below low-confidence's
BASELINE = SamplerSpec("low-confidence")
SPECS = (
    BASELINE,
    SamplerSpec("threshold", {"tau": 0.9, "cache": "none"}, "threshold tau=0.9"),
    SamplerSpec("threshold", {"tau": 0.9, "cache": "prefix"}, "threshold tau=0.9 +cache"),
    SamplerSpec("threshold", {"tau": 0.7, "cache": "none"}, "threshold tau=0.7"),
    SamplerSpec("threshold", {"tau": 0.7, "cache": "prefix"}, "threshold tau=0.7 +cache"),
    SamplerSpec("threshold", {"tau": 0.5, "cache": "none"}, "threshold tau=0.5"),
    SamplerSpec("ancestral", {"temperature": 0.0}),
    SamplerSpec("arpc", {"temperature": 0.0}),
)


def measure(
    mdm: str | Path,
    task: str = "countdown",
    n: int = 100,
    rounds: int = 5,
    batch_size: int = 1,
    specs: Sequence[SamplerSpec] = SPECS,
) -> dict:
    """Median tokens/s of each sampler in `specs` over `rounds` interleaved rounds on `n` examples
    of `task`, its ratio to low-confidence decoding (always run: it is the baseline), NFE and
    accuracy. The AR scorer (the MDM's source) is loaded only when `specs` holds ARPC."""
    specs = [BASELINE] + [s for s in specs if s != BASELINE]
    loaded = load_any(mdm)
    task_obj, examples = task_sets(loaded, [task], n)[task]
    scorer = ar_scorer(loaded) if any(s.name == "arpc" for s in specs) else None
    speed: dict[str, list[float]] = {s.title: [] for s in specs}
    rows = {}
    task_accuracy(loaded, task_obj, examples[:8], BASELINE, batch_size=batch_size)  # warm-up
    for _ in range(rounds):
        for spec in specs:
            row = task_accuracy(loaded, task_obj, examples, spec, batch_size=batch_size, scorer=scorer)
            speed[spec.title].append(row.tokens_per_s)
            rows[spec.title] = row
    base = statistics.median(speed[BASELINE.title])
    out = []
    for spec in specs:
        med = statistics.median(speed[spec.title])
        r = rows[spec.title]
        out.append(
            {"sampler": spec.title, "tokens_per_s": med, "ratio": med / base, "nfe": r.nfe, "accuracy": r.accuracy}
        )
    return {
        "task": task,
        "n": len(examples),
        "rounds": rounds,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "rows": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdm", default="runs/organism-mdm-sft")
    parser.add_argument("--task", default="countdown")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    res = measure(args.mdm, args.task, args.n, args.rounds, args.batch_size)
    base_acc = res["rows"][0]["accuracy"]
    print(f"{args.task}, {res['n']} examples, batch {args.batch_size}, {args.rounds} rounds, {args.threads} thread(s)")
    print(f"{'sampler':28s} {'tok/s':>8s} {'ratio':>6s} {'NFE':>6s} {'acc':>6s} {'d acc':>6s}")
    for r in res["rows"]:
        print(
            f"{r['sampler']:28s} {r['tokens_per_s']:8.1f} {r['ratio']:6.2f} {r['nfe']:6.2f} {r['accuracy']:6.3f} {r['accuracy'] - base_acc:+6.3f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
