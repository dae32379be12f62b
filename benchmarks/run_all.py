"""Every benchmark of the project in one command: a table of same-run ratios, targets and memory.

Each benchmark times a piece of the toolkit against a baseline measured in the same process,
interleaved with it, so that the *ratio* is what carries over between machines (absolute speeds on
a shared CPU do not). This runner imports each benchmark's `measure` function, runs them one after
another in this process, and turns every result into table rows:

    benchmark   what is compared                    target  source of the target
    train_step  MDM step / AR step (tokens/s)       >= 0.9  benchmarks/bench_train_step.py
    probe       run_with_cache / plain forward      <= 1.10 benchmarks/bench_probe.py (torch; 1.25 others)
    eapig       gradient methods / their pass bound  <= 1.2  benchmarks/bench_eapig.py (plain SDPA model)
    samplers    threshold / low-confidence tokens/s >= 2.0  benchmarks/bench_samplers.py
                (within 2 accuracy points)

A row's memory is the peak resident set while that benchmark ran minus the resident set when it
started (sampled every 10 ms; torch's CPU tensors are invisible to tracemalloc), so it includes
loading the model. All benchmarks share one process: memory an earlier one freed may be reused
without growing the resident set, so read the column as "how much more memory this needed".

The AR benchmarks run on `--model` (default: the model organism), the sampler benchmark on the MDM
folder `--mdm` (default: runs/organism-mdm-sft). A model that is not there gives a row
"skipped: <why and the command that makes it>", never a crash; `--tiny` builds a tiny
random-init Llama and its MDM in a temporary folder instead, so the whole table runs anywhere.

    python -m benchmarks.run_all                     # organism + runs/organism-mdm-sft, ~3 min
    python -m benchmarks.run_all --quick             # tiny settings: the table in about a minute
    python -m benchmarks.run_all --tiny --quick      # no cached assets needed
    python -m benchmarks.run_all --only probe,eapig --model smollm2 --json out.json

Exit status: 0 when every benchmark ran or was skipped (a missed target is a result, not an
error), 1 when one failed with an unexpected error (its traceback is printed).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import META_FILE, ModelMeta
from benchmarks import bench_eapig, bench_probe, bench_samplers, bench_train_step

DEFAULT_MODEL = "organism"
DEFAULT_MDM = "runs/organism-mdm-sft"
DEFAULT_JSON = Path("bench-results.json")
# How the default MDM was made (docs/results/conversion.md has the full recipe).
MAKE_MDM = "ar2mdm convert --model organism --data tasks --sft --out {mdm} --steps 1500 --seq-len 96"
MEMORY_INTERVAL_S = 0.01  # whole benchmarks run for seconds: 10 ms sampling sees their peaks

# The sampler benchmark's target concerns threshold decoding; ancestral and ARPC are left out.
THRESHOLD_SPECS = tuple(s for s in bench_samplers.SPECS if s.name in ("low-confidence", "threshold"))

# Keyword arguments of each benchmark's `measure` besides the model. DEFAULT are the benchmarks'
# own command-line defaults (samplers: the threshold ones only); QUICK is small enough that the
# whole table prints in well under a minute.
DEFAULT: dict[str, dict[str, Any]] = {
    "train_step": {"batch": 8, "seq_len": 128, "repeats": 5, "bf16": False},
    "probe": {"backends": ["torch", "nnsight", "tl"], "batch": 8, "seq_len": 20, "repeats": 7},
    "eapig": {"batch_size": 8, "steps": 5, "repeats": 3, "backend": "torch", "device": "cpu"},
    "samplers": {"task": "countdown", "n": 100, "rounds": 5, "batch_size": 1, "specs": THRESHOLD_SPECS},
}
QUICK: dict[str, dict[str, Any]] = {
    "train_step": {"batch": 2, "seq_len": 32, "repeats": 3, "bf16": False},
    "probe": {"backends": ["torch", "nnsight", "tl"], "batch": 4, "seq_len": 16, "repeats": 3},
    "eapig": {"batch_size": 4, "steps": 5, "repeats": 2, "backend": "torch", "device": "cpu"},
    "samplers": {"task": "countdown", "n": 12, "rounds": 2, "batch_size": 1, "specs": THRESHOLD_SPECS[:3]},
}


@dataclass
class Row:
    """One line of the table: a ratio measured in one run, its target and the run's cost.

    status: "ok", "skipped: <why and what to do>" or "failed: <error>"; ratio, met, peak_mib and
    wall_s are None unless ok (met is also None where there is no target). model: the checkpoint.
    """

    benchmark: str
    compared: str
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    peak_mib: float | None = None
    wall_s: float | None = None
    note: str = ""
    status: str = "ok"
    model: str = ""


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: which checkpoint it needs ("ar" or "mdm"), its headline comparison (for a
    skipped row), how to run it, and how to read its result as rows."""

    name: str
    needs: str
    compared: str
    measure: Callable[..., dict]
    rows: Callable[[dict], list[Row]]


def _meets(ratio: float, op: str, target: float) -> bool:
    return ratio >= target if op == ">=" else ratio <= target


def train_step_rows(res: dict) -> list[Row]:
    ratio, target = res["ratio_mdm_over_ar"], bench_train_step.TARGET
    note = f"AR {res['ar_tokens_per_s']:.0f} tok/s, MDM {res['mdm_tokens_per_s']:.0f} tok/s"
    return [
        Row(
            "train_step", "MDM step / AR step (tokens/s)", ratio, f">= {target}", _meets(ratio, ">=", target), note=note
        )
    ]


def probe_rows(res: dict) -> list[Row]:
    out = []
    for backend, r in res["backends"].items():
        target = bench_probe.TARGETS.get(backend, max(bench_probe.TARGETS.values()))
        note = (
            f"{r['cached_tensors']} tensors, cache {r['cache_mib']:.1f} MiB, pass +{r['extra_peak_mib_cached_pass']:.1f} "
            f"MiB; vs sdpa {r['ratio_vs_sdpa']:.2f}"
        )
        out.append(
            Row(
                "probe",
                f"run_with_cache / forward [{backend}]",
                r["ratio"],
                f"<= {target}",
                _meets(r["ratio"], "<=", target),
                note=note,
            )
        )
    return out


def eapig_rows(res: dict) -> list[Row]:
    """One row per gradient method: its time over its pass bound (the plain model, no hooks)."""
    target, mem = bench_eapig.TARGET, res["extra_peak_rss_mib"]
    return [
        Row(
            "eapig",
            f"{m} / {res['passes'][m]} fwd+bwd ({res['baseline_attention']})",
            ratio,
            f"<= {target}",
            _meets(ratio, "<=", target),
            note=f"{res['edges']} edges; call +{mem[m]:.1f} MiB vs fwd+bwd +{mem['fwd_bwd']:.1f} MiB",
        )
        for m, ratio in res["ratio"].items()
    ]


def sampler_rows(res: dict) -> list[Row]:
    base, *others = res["rows"]  # measure puts the baseline first
    target, points = bench_samplers.TARGET, bench_samplers.ACCURACY_POINTS
    out = []
    for r in others:
        d_acc = r["accuracy"] - base["accuracy"]
        note = f"{res['task']} n={res['n']}: acc {r['accuracy']:.2f} ({d_acc:+.2f}), NFE {r['nfe']:.1f} vs {base['nfe']:.1f}"
        threshold = r["sampler"].startswith("threshold")
        met = r["ratio"] >= target and d_acc >= -points if threshold else None
        out.append(
            Row(
                "samplers",
                f"{r['sampler']} / {base['sampler']} (tokens/s)",
                r["ratio"],
                f">= {target}, d acc >= -{points:.2f}" if threshold else None,
                met,
                note=note,
            )
        )
    return out


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark("train_step", "ar", "MDM step / AR step (tokens/s)", bench_train_step.measure, train_step_rows),
        Benchmark("probe", "ar", "run_with_cache / forward", bench_probe.measure, probe_rows),
        Benchmark("eapig", "ar", "gradient methods / pass bound", bench_eapig.measure, eapig_rows),
        Benchmark("samplers", "mdm", "threshold / low-confidence (tokens/s)", bench_samplers.measure, sampler_rows),
    )
}


def missing_mdm(mdm: str | Path) -> str | None:
    """Why `mdm` is not an MDM checkpoint folder and how to make one, or None if it is one."""
    if (Path(mdm) / META_FILE).is_file():
        return None
    return (
        f"no MDM checkpoint at {mdm} (no {META_FILE}); make it with `{MAKE_MDM.format(mdm=mdm)}` "
        "or pass --mdm FOLDER (or --tiny)"
    )


def run_benchmark(bench: Benchmark, model: str, settings: dict[str, Any]) -> tuple[list[Row], dict | None]:
    """Run one benchmark on `model` and return its rows and raw result (None unless it ran).

    A UserError (a model that is not there, a task the tokenizer cannot render) becomes a skipped
    row carrying its message; any other exception a failed row, with its traceback on stderr.
    """
    reason = missing_mdm(model) if bench.needs == "mdm" else None
    if reason:
        return [Row(bench.name, bench.compared, status=f"skipped: {reason}", model=model)], None
    gc.collect()  # what an earlier benchmark left behind should not count against this one
    held: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        peak = bench_probe.extra_peak_mib(lambda: held.update(res=bench.measure(model, **settings)), MEMORY_INTERVAL_S)
    except UserError as err:
        return [Row(bench.name, bench.compared, status=f"skipped: {err}", model=model)], None
    except Exception as err:  # one broken benchmark must not lose the others' results
        traceback.print_exc()
        return [Row(bench.name, bench.compared, status=f"failed: {type(err).__name__}: {err}", model=model)], None
    wall = time.perf_counter() - t0
    rows = bench.rows(held["res"])
    for row in rows:
        row.peak_mib, row.wall_s, row.model = peak, wall, model
    return rows, held["res"]


def run_all(
    model: str = DEFAULT_MODEL,
    mdm: str = DEFAULT_MDM,
    *,
    only: Sequence[str] | None = None,
    quick: bool = False,
    progress: bool = True,
) -> dict:
    """Run the benchmarks named in `only` (default: all, in table order) and return the report:
    {"rows": [Row as dict], "results": {name: raw result or None}, "settings", "environment"}."""
    names = list(only or BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}.")
    table = QUICK if quick else DEFAULT
    rows: list[Row] = []
    results: dict[str, dict | None] = {}
    for name in names:
        bench = BENCHMARKS[name]
        source = mdm if bench.needs == "mdm" else model
        if progress:
            print(f"running {name} on {source} ...", file=sys.stderr, flush=True)
        bench_rows, results[name] = run_benchmark(bench, str(source), table[name])
        rows += bench_rows
    settings = {n: {k: [s.title for s in v] if k == "specs" else v for k, v in table[n].items()} for n in names}
    return {
        "model": str(model),
        "mdm": str(mdm),
        "quick": quick,
        "settings": settings,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "rows": [asdict(r) for r in rows],
        "results": results,
    }


def format_table(rows: Sequence[dict]) -> str:
    """The rows of a report as a fixed-width text table (skipped and failed rows say why)."""

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None or not math.isfinite(x) else format(x, fmt)

    wb = max([len("benchmark")] + [len(r["benchmark"]) for r in rows])
    wc = max([len("compared")] + [len(r["compared"]) for r in rows])
    wt = max([len("target")] + [len(r["target"] or "-") for r in rows])
    head = f"{'benchmark':<{wb}}  {'compared':<{wc}}  {'ratio':>6}  {'target':<{wt}}  {'met':<3}  {'+peak MiB':>9}  {'wall s':>6}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['benchmark']:<{wb}}  {r['compared']:<{wc}}  {r['status']}")
            continue
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            f"{r['benchmark']:<{wb}}  {r['compared']:<{wc}}  {num(r['ratio'], '.3f'):>6}  {r['target'] or '-':<{wt}}  "
            f"{met:<3}  {num(r['peak_mib'], '.0f'):>9}  {num(r['wall_s'], '.1f'):>6}  {r['note']}"
        )
    return "\n".join(lines)


def build_tiny(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny random-init Llama AR (the organism's tokenizer and architecture, 2 layers of
    width 32) under `folder`/ar and the same weights as an MDM under `folder`/mdm; return both.

    Untrained, so its accuracies are meaningless, but every benchmark runs on it end to end.
    """
    from conversion.checkpoints import load_ar
    from conversion.mdm import add_mask_token, save_mdm
    from conversion.organism import OrganismConfig, build_model, organism_tokenizer, save_checkpoint

    folder = Path(folder)
    tokenizer = organism_tokenizer(n_per_task=100)  # enough words for every task's prompts
    cfg = OrganismConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=64)
    ar = save_checkpoint(folder / "ar", build_model(cfg, tokenizer, seed), tokenizer)
    loaded = load_ar(ar)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(
        kind="mdm",
        source=str(ar),
        source_hash=loaded.meta.source_hash,
        family="llama",
        shift=True,
        mask_id=mask_id,
        noise="absorbing",
        schedule="linear",
    )
    return ar, save_mdm(loaded.model, loaded.tokenizer, meta, folder / "mdm")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", help=f"AR source for train_step, probe and eapig: any load_ar source (default: {DEFAULT_MODEL})"
    )
    ap.add_argument("--mdm", help=f"MDM folder for the sampler benchmark (default: {DEFAULT_MDM})")
    ap.add_argument(
        "--tiny", action="store_true", help="build a tiny random AR + MDM in a temporary folder and use them"
    )
    ap.add_argument("--quick", action="store_true", help="tiny settings (few repeats, small n): about a minute in all")
    ap.add_argument("--only", help=f"comma-separated benchmarks to run, of: {','.join(BENCHMARKS)}")
    ap.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"write rows and raw results here (default: ./{DEFAULT_JSON})"
    )
    args = ap.parse_args(argv)
    if args.tiny and (args.model or args.mdm):
        ap.error("--tiny builds its own AR and MDM; leave out --model and --mdm")
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        with tempfile.TemporaryDirectory(prefix="ar2mdm-bench-") as tmp:
            model, mdm = build_tiny(tmp) if args.tiny else (args.model or DEFAULT_MODEL, args.mdm or DEFAULT_MDM)
            report = run_all(str(model), str(mdm), only=only, quick=args.quick)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tiny:  # the temporary folders are gone: name the models by what they were
        report["model"], report["mdm"] = "tiny (random init)", "tiny (random init)"
        for row in report["rows"]:
            row["model"] = "tiny"
    env = report["environment"]
    print(
        f"AR: {report['model']}; MDM: {report['mdm']}; {'quick' if args.quick else 'default'} settings; "
        f"{env['threads']} thread(s), torch {env['torch']}"
    )
    print(format_table(report["rows"]))
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    return 1 if any(r["status"].startswith("failed") for r in report["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
