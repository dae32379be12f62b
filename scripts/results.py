"""Every results document, the command that makes it, and whether it still describes this code.

    python scripts/results.py              # list: each entry fresh / STALE / never stamped
    python scripts/results.py --check      # the same, exit 1 when any runnable entry is not fresh
    python scripts/results.py --run        # regenerate every stale runnable entry, in order
    python scripts/results.py --run study  # just these entries (stale or not)
    python scripts/results.py --stamp study  # record an entry whose commands you ran yourself
                                             # (e.g. from a fresh clone) on this checkout's code
    make results                           # = --run

docs/results/ holds measured numbers. They go out of date when the code that produced them
changes, so each entry below names its outputs, the commands that regenerate them, and the
code its numbers depend on (`deps`: packages or files of this repository). After an entry's
commands succeed, `docs/results/provenance.json` records the commit and a hash of its deps (every
tracked file under them, by content); an entry is *fresh* when that hash equals today's, *stale*
when the code changed since, and *never stamped* when it was produced before this record existed
(its document says when and at which commit). Entries that need hardware or assets this machine
lacks (`needs`) are listed but not run; their documents say where they were measured.

Order matters: an entry may read a run folder an earlier one writes (`runs/...`, ignored by git).
Minutes are measured on the 2-core CPU this project is developed on.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROVENANCE = ROOT / "docs" / "results" / "provenance.json"
PY = sys.executable
# the code every measured number depends on
CORE = ("ar2mdm", "conversion", "probe", "analyses")


@dataclass(frozen=True)
class Entry:
    """One results document: what regenerates it and what its numbers depend on.

    commands: argv lists run from the repository root; copies: (from, to) files copied after them
    (a run folder's summary into docs/results); deps: paths whose content the numbers depend on;
    needs: what this machine must have ("gpu", "smollm2"), else the entry is listed, not run;
    minutes: measured wall time on 2 CPU cores."""

    name: str
    outputs: tuple[str, ...]
    commands: tuple[tuple[str, ...], ...]
    deps: tuple[str, ...]
    minutes: float
    copies: tuple[tuple[str, str], ...] = ()
    needs: tuple[str, ...] = ()
    doc: str = ""


AR2MDM = (PY, "-m", "analyses.app.cli")


def _script_entry(
    name: str, output: str, script: str, args: tuple[str, ...], minutes: float, needs: tuple[str, ...] = ()
) -> Entry:
    """An entry made by `scripts/<script> ARGS --out docs/results/<name>`: it depends on the core
    packages and on the script itself, writes `output` inside its folder and is described in
    docs/results/<name>.md."""
    folder = f"docs/results/{name}"
    return Entry(
        name,
        (f"{folder}/{output}",),
        ((PY, f"scripts/{script}", *args, "--out", folder),),
        (*CORE, f"scripts/{script}"),
        minutes,
        needs=needs,
        doc=f"{folder}.md",
    )


ENTRIES: tuple[Entry, ...] = (
    Entry(
        "organism",
        ("~/.cache/ar2mdm/models/organism",),
        ((*AR2MDM, "organism", "train", "--steps", "1500", "--overwrite"),),
        ("conversion", "ar2mdm/tasks", "ar2mdm/diffusion", "ar2mdm/common"),
        4.5,
        doc="docs/results/organism.md (AR training); the ARM every entry below reads",
    ),
    Entry(
        "validation",
        ("docs/results/validation/groundtruth.json", "docs/results/validation/groundtruth.md"),
        (
            (PY, "-m", "analyses.validation", "--out", "docs/results/validation"),
            (PY, "-m", "analyses.validation.planted"),
        ),
        ("analyses", "probe", "ar2mdm/tasks", "ar2mdm/common"),
        0.2,
        doc="docs/results/validation.md (ground truth, planted shift)",
    ),
    Entry(
        "study",
        ("docs/results/study-organism/summary.json", "docs/results/study-organism/compare-summary.md"),
        ((*AR2MDM, "study", "--out", "runs/results-study"),),
        CORE,
        15.5,
        copies=(
            ("runs/results-study/summary.json", "docs/results/study-organism/summary.json"),
            ("runs/results-study/compare/summary.md", "docs/results/study-organism/compare-summary.md"),
            ("runs/results-study/samplers/results.md", "docs/results/study-organism/samplers.md"),
        ),
        doc="docs/results/organism.md (the study), validation.md (controls)",
    ),
    Entry(
        "study-moe",
        ("docs/results/study-organism-moe/summary.json", "docs/results/study-organism-moe/compare-summary.md"),
        ((*AR2MDM, "study", "--experts", "4", "--out", "runs/results-study-moe"),),
        CORE,
        30.0,
        copies=(
            ("runs/results-study-moe/summary.json", "docs/results/study-organism-moe/summary.json"),
            ("runs/results-study-moe/compare/summary.md", "docs/results/study-organism-moe/compare-summary.md"),
        ),
        doc="docs/results/moe.md (the MoE organism pair: routing, ARM vs MDM)",
    ),
    Entry(
        "organism-mdm-sft",
        ("runs/organism-mdm-sft",),
        (
            (*AR2MDM, "convert", "--model", "organism", "--data", "tasks", "--sft", "--out", "runs/organism-mdm-sft")
            + ("--steps", "1500", "--seq-len", "96", "--batch-size", "32", "--lr", "5e-4", "--warmup", "50")
            + ("--eval-every", "250", "--eval-blocks", "64", "--save-every", "250", "--log-every", "10", "--overwrite"),
        ),
        ("conversion", "ar2mdm/diffusion", "ar2mdm/tasks", "ar2mdm/common"),
        2.9,
        doc="the MDM the documents below read (docs/results/conversion.md)",
    ),
    Entry(
        "notebooks",
        ("notebooks/quickstart.ipynb",),
        ((PY, "scripts/notebooks.py", "--store"),),
        (*CORE, "notebooks", "scripts/notebooks.py"),
        2.5,
        needs=("static-figures",),
        doc="notebooks/*.ipynb stored executed (figures as PNG), on the models in the cache",
    ),
    _script_entry("circuits", "results.json", "circuits_results.py", ("--n", "48"), 2.5),
    Entry(
        "attribution-methods",
        ("docs/results/attribution-methods/results.json", "docs/results/attribution-methods/table.md"),
        ((PY, "scripts/attribution_methods.py", "--n", "48", "--out", "docs/results/attribution-methods"),),
        (*CORE, "scripts/attribution_methods.py", "scripts/circuits_results.py"),
        12.0,
        doc="docs/results/attribution-methods.md (every method: ground truth, exact, CPR/CMD, cost)",
    ),
    _script_entry("depth_neurons", "results.json", "depth_neurons_results.py", ("--n", "200"), 6.5),
    _script_entry("sampling", "organism/results.json", "sampler_results.py", ("--mdm", "runs/organism-mdm-sft"), 3.0),
    _script_entry(
        "probe", "probe_results.json", "probe_results.py", ("--n", "16", "--n-organism", "64"), 3.0, needs=("smollm2",)
    ),
    Entry(
        "faithfulness",
        ("docs/results/faithfulness/smollm2-ioi64.json",),
        ((PY, "-m", "benchmarks.bench_faithfulness", "--json", "docs/results/faithfulness/smollm2-ioi64.json"),),
        ("ar2mdm/common", "probe", "analyses", "ar2mdm/tasks", "benchmarks/bench_faithfulness.py"),
        3.3,
        needs=("smollm2",),
        doc="docs/results/faithfulness.md (a faithfulness curve at 70k edges on 2 cores)",
    ),
    Entry(
        "attribution-memory",
        ("docs/results/attribution_memory.json",),
        (
            (
                PY,
                "-m",
                "benchmarks.bench_attribution_memory",
                "--malloc-mmap",
                "--json",
                "docs/results/attribution_memory.json",
            ),
        ),
        ("ar2mdm/common", "probe", "analyses", "ar2mdm/tasks", "benchmarks/bench_attribution_memory.py"),
        3.0,
        needs=("smollm2",),
        doc="docs/results/attribution-memory.md (EAP-IG peak memory predicted vs measured, three sizes)",
    ),
    Entry(
        "parallel",
        ("docs/results/sampling/parallel/copy-block8.json",),
        (
            (PY, "scripts/long_answer_data.py", "--op", "copy", "--length", "32"),
            (*AR2MDM, "convert", "--model", "organism", "--sft", "--data", "runs/long-answer/copy-train.jsonl")
            + ("--out", "runs/organism-mdm-copy", "--steps", "2000", "--seq-len", "96", "--batch-size", "32")
            + ("--lr", "5e-4", "--warmup", "50", "--log-every", "50", "--eval-every", "500", "--overwrite"),
            (PY, "-m", "benchmarks.bench_parallel", "--mdm", "runs/organism-mdm-copy")
            + ("--task", "runs/long-answer/copy-eval.jsonl", "--n", "100", "--rounds", "3", "--block-length", "8")
            + ("--json", "docs/results/sampling/parallel/copy-block8.json")
            + ("--html", "docs/results/sampling/parallel/copy-block8.html"),
        ),
        (
            "ar2mdm/common",
            "ar2mdm/sampling",
            "ar2mdm/tasks",
            "conversion",
            "ar2mdm/diffusion",
            "benchmarks/bench_parallel.py",
        ),
        19.0,
        doc="docs/results/sampling.md (parallel decoding on a 32-token copy task; the block-diffusion and SmolLM2 rows have their own commands there)",
    ),
    Entry(
        "harness",
        ("docs/results/harness/harness.json",),
        (
            (*AR2MDM, "convert", "--model", "organism", "--data", "tasks", "--sft", "--out", "runs/organism-mdm-tasks")
            + ("--steps", "400", "--seq-len", "96", "--batch-size", "32", "--lr", "5e-4", "--warmup", "50")
            + ("--log-every", "50", "--overwrite"),
            (PY, "benchmarks/bench_harness.py", "--mdm", "runs/organism-mdm-tasks", "--n", "64"),
        ),
        (
            "ar2mdm/common",
            "ar2mdm/diffusion",
            "ar2mdm/sampling",
            "ar2mdm/tasks",
            "conversion",
            "analyses/generation.py",
            "analyses/harness.py",
            "analyses/harness_run.py",
            "analyses/harness_tasks.py",
            "analyses/likelihood.py",
            "benchmarks/bench_harness.py",
        ),
        15.0,
        doc="docs/results/harness.md (lm-evaluation-harness against ar2mdm's own evaluation; the MC ELBO's convergence)",
    ),
    Entry(
        "lora",
        ("docs/results/lora/bench_lora.json",),
        ((PY, "-m", "benchmarks.bench_lora", "--json", "docs/results/lora/bench_lora.json"),),
        ("ar2mdm/common", "ar2mdm/diffusion", "conversion", "benchmarks/bench_lora.py", "benchmarks/bench_probe.py"),
        3.0,
        needs=("smollm2",),
        doc="docs/results/lora.md (LoRA against full conversion: trainable share, optimizer state, peak memory)",
    ),
    Entry(
        "formats-memory",
        ("docs/results/formats/load_memory.json",),
        ((PY, "-m", "benchmarks.bench_load_memory", "--json", "docs/results/formats/load_memory.json"),),
        ("ar2mdm/common", "conversion", "benchmarks/bench_load_memory.py"),
        0.5,
        doc="docs/FORMATS.md (Memory: a published MDM's load measured on replicas, predicted for 7B/8B)",
    ),
    _script_entry(
        "published-pair",
        "load.json",
        "published_pair.py",
        ("--size", "0.5b", "--device", "cuda", "--dtype", "bf16"),
        5.0,
        needs=("gpu",),
    ),
    Entry(
        "smollm2-h100",
        ("docs/results/smollm2-h100/README.md",),
        (),
        CORE,
        30.0,
        needs=("gpu", "smollm2"),
        doc="docs/results/smollm2-h100/README.md (an H100 run; a GPU session regenerates it)",
    ),
)


@dataclass
class Status:
    entry: Entry
    state: str  # "fresh", "stale", "never stamped"
    runnable: bool
    missing: list[str] = field(default_factory=list)
    stamp: dict | None = None


def _tracked(paths: tuple[str, ...]) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return sorted(p for p in out.stdout.splitlines() if p)


def code_hash(deps: tuple[str, ...]) -> str:
    """sha256 over (path, content) of every tracked file under `deps`, as the files are now."""
    h = hashlib.sha256()
    for path in _tracked(deps):
        file = ROOT / path
        if file.is_file():
            h.update(path.encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _commit(deps: tuple[str, ...] = ()) -> str:
    """HEAD, with "+dirty" when a tracked file under `deps` (default: any) has uncommitted changes
    (an entry's own outputs changing is not its code changing)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", *deps], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _available(need: str) -> bool:
    if need == "gpu":
        import torch

        return torch.cuda.is_available()
    if need == "static-figures":  # plotly's PNG export: kaleido and a Chrome (scripts/notebooks.py)
        probe = subprocess.run(
            [PY, "-c", "import plotly.graph_objects as go; go.Figure().to_image(format='png', width=20, height=20)"],
            capture_output=True,
        )
        return probe.returncode == 0
    if need == "smollm2":  # installed by `make assets` (ar2mdm setup); not fetched here
        from ar2mdm.common.env import cache_dir

        return (cache_dir() / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    return False


def _stamps() -> dict:
    return json.loads(PROVENANCE.read_text()) if PROVENANCE.is_file() else {}


def status(entry: Entry) -> Status:
    stamp = _stamps().get(entry.name)
    missing = [n for n in entry.needs if not _available(n)]
    runnable = bool(entry.commands) and not missing
    if stamp is None:
        state = "never stamped"
    else:
        state = "fresh" if stamp["code"] == code_hash(entry.deps) else "stale"
    return Status(entry, state, runnable, missing, stamp)


def run(entry: Entry) -> float:
    """Run an entry's commands and copies, then stamp it. Returns the wall minutes."""
    t0 = time.perf_counter()
    for argv in entry.commands:
        print("$", shlex.join(argv), flush=True)
        subprocess.run(argv, cwd=ROOT, check=True)
    for src, dst in entry.copies:
        (ROOT / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / src, ROOT / dst)
    minutes = (time.perf_counter() - t0) / 60
    stamp(entry, minutes)
    return minutes


def stamp(entry: Entry, minutes: float | None = None, note: str | None = None) -> None:
    """Record in provenance.json that `entry`'s outputs were made from this checkout's code."""
    stamps = _stamps()
    stamps[entry.name] = {
        "commit": _commit(entry.deps),
        "code": code_hash(entry.deps),
        "date": datetime.date.today().isoformat(),
        "minutes": None if minutes is None else round(minutes, 1),
        "commands": [shlex.join(a) for a in entry.commands],
        **({"note": note} if note else {}),
    }
    PROVENANCE.write_text(json.dumps(stamps, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="entries to run (default: every stale runnable one)")
    ap.add_argument("--run", action="store_true", help="regenerate (the named, else every stale runnable) entries")
    ap.add_argument("--check", action="store_true", help="exit 1 when a runnable entry is not fresh")
    ap.add_argument(
        "--stamp",
        action="store_true",
        help="record the named entries as made from this checkout's code (you ran their commands yourself)",
    )
    ap.add_argument("--note", help="with --stamp: how the outputs were made (where, which commit)")
    args = ap.parse_args(argv)
    known = {e.name: e for e in ENTRIES}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown entries {unknown}; the entries are: {', '.join(known)}", file=sys.stderr)
        return 2
    if args.stamp:
        if not args.names:
            print("--stamp needs the entries to record", file=sys.stderr)
            return 2
        for name in args.names:
            stamp(known[name], note=args.note)
            print(f"{name}: stamped at {_commit()}")
        return 0
    statuses = [status(e) for e in ENTRIES]
    for s in statuses:
        where = f"{s.stamp['commit']} {s.stamp['date']}" if s.stamp else "-"
        note = "" if s.runnable else f"  (not here: needs {', '.join(s.missing) or 'a manual run'})"
        print(f"{s.entry.name:18s} {s.state:14s} {where:22s} ~{s.entry.minutes:g} min  {s.entry.doc}{note}")
    if args.run:
        chosen = [known[n] for n in args.names] or [s.entry for s in statuses if s.runnable and s.state != "fresh"]
        total = sum(e.minutes for e in chosen)
        print(f"\nregenerating {len(chosen)} entries (~{total:g} min): {', '.join(e.name for e in chosen)}")
        for e in chosen:
            if e.needs and any(not _available(n) for n in e.needs):
                print(f"skipping {e.name}: needs {', '.join(e.needs)}")
                continue
            print(f"{e.name}: {run(e):.1f} min")
        return 0
    if args.check:
        return int(any(s.runnable and s.state != "fresh" for s in statuses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
