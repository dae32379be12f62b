"""lm-evaluation-harness against ar2mdm's own evaluation, and the MDM log-likelihood's convergence.

On one ARM and one MDM (default: the model organism and an MDM converted from it):

1. accuracy of every task through the harness ("ar2mdm" model, exported tasks) next to ar2mdm's
   own evaluation of the same examples: `task_accuracy` for the generation form (`ar2mdm_<task>`),
   `logit_metrics` for the multiple-choice form (`ar2mdm_<task>_mc`), with wall time of each;
2. the Monte-Carlo ELBO of the MDM on answers of 2..10 tokens (the longest of each task, in
   turn): for n samples, the mean absolute
   error against the enumerated expectation (`mdm_elbo_exact`) and the mean standard error the
   estimate reports, which should both shrink like 1 / sqrt(n).

    python benchmarks/bench_harness.py --mdm ~/.cache/ar2mdm/notebooks/mdm-*/ --n 64

Writes docs/results/harness/harness.json (or --out) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from analyses.generation import SamplerSpec, task_accuracy, task_sets  # noqa: E402
from analyses.harness import ModelAdapter  # noqa: E402
from analyses.harness_tasks import export_tasks, harness_name  # noqa: E402
from analyses.likelihood import mdm_elbo_exact, mdm_elbo_samples  # noqa: E402
from ar2mdm.sampling import ModelContext  # noqa: E402
from ar2mdm.tasks import render  # noqa: E402
from ar2mdm.tasks.evaluate import logit_metrics  # noqa: E402
from conversion.checkpoints import load_any  # noqa: E402


def compare(source: str, tasks: list[str], n: int, mc_samples: int) -> list[dict]:
    loaded = load_any(source)
    kind = loaded.meta.kind
    sampler = "ar" if kind == "ar" else "low-confidence"
    sets = task_sets(loaded, tasks, n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_tasks(loaded, tasks, n, tmp)
        lm = ModelAdapter.from_loaded(loaded, sampler, mc_samples=mc_samples)
        for name, (task, examples) in sets.items():
            t0 = time.perf_counter()
            own = task_accuracy(loaded, task, examples, SamplerSpec(sampler))
            own_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=exported[name],
                task_manager=TaskManager(include_path=tmp, include_defaults=False),
                num_fewshot=0,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
            harness_s = time.perf_counter() - t0
            row = {
                "kind": kind,
                "task": name,
                "n": len(examples),
                "own_generation_acc": own.accuracy,
                "harness_generation_acc": res["results"][harness_name(name)]["acc,none"],
                "own_seconds": round(own_s, 2),
                "harness_seconds": round(harness_s, 2),
            }
            if len(exported[name]) > 1:
                mode = "mdm" if kind == "mdm" else "ar"
                metrics = logit_metrics(loaded.model, loaded.tokenizer, examples, mode=mode, meta=loaded.meta)
                row["own_logit_acc"] = metrics["accuracy"]
                row["harness_mc_acc"] = res["results"][harness_name(name, mc=True)]["acc,none"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def convergence(source: str, tasks: list[str], count: int, sizes: list[int]) -> dict:
    loaded = load_any(source)
    ctx = ModelContext.from_meta(loaded.meta, loaded.tokenizer, loaded.model)
    per_task = []  # each task's (context, answer) pairs of 2..10 answer tokens, longest first
    for _, (_, examples) in task_sets(loaded, tasks, 64).items():
        found = []
        for ex in examples:
            r = render(ex, loaded.tokenizer, "ar")
            if 2 <= len(r.answer_ids) <= 10:
                found.append((r.input_ids.tolist(), r.answer_ids.tolist()))
        per_task.append(sorted(found, key=lambda p: -len(p[1])))
    pairs = []  # round robin over the tasks
    while len(pairs) < count and any(per_task):
        for found in per_task:
            if found and len(pairs) < count:
                pairs.append(found.pop(0))
    exact = [mdm_elbo_exact(loaded.model, ctx, c, a) for c, a in pairs]
    out = {"pairs": len(pairs), "answer_tokens": [len(a) for _, a in pairs], "exact": exact, "by_samples": {}}
    for size in sizes:
        errs, ses = [], []
        for i, (c, a) in enumerate(pairs):
            values = mdm_elbo_samples(loaded.model, ctx, c, a, samples=size, seed=1000 + i)
            errs.append(abs(float(values.mean()) - exact[i]))
            ses.append(float(values.std()) / math.sqrt(size))
        out["by_samples"][size] = {"mean_abs_error": sum(errs) / len(errs), "mean_stderr": sum(ses) / len(ses)}
        print(json.dumps({"samples": size, **out["by_samples"][size]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ar", default="organism")
    ap.add_argument("--mdm", required=True)
    ap.add_argument("--tasks", default="ioi,greater_than,induction,countdown,infilling")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--mc-samples", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--sizes", default="4,16,64,256")
    ap.add_argument("--out", default="docs/results/harness")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    rows = compare(args.ar, tasks, args.n, args.mc_samples) + compare(args.mdm, tasks, args.n, args.mc_samples)
    conv = convergence(args.mdm, tasks, args.pairs, [int(x) for x in args.sizes.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "ar": args.ar, "mdm": args.mdm, "rows": rows, "convergence": conv}
    (out / "harness.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'harness.json'}")


if __name__ == "__main__":
    main()
