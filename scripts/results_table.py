"""Write docs/RESULTS.md, the table of measured results, from the JSON files under docs/results/.

    python scripts/results_table.py            # rewrite docs/RESULTS.md
    python scripts/results_table.py --check    # exit 1 when docs/RESULTS.md differs from what it would write
    make results                               # regenerates the results files, then runs this last

The table is a list of rows (`ROWS`). A row whose figures a measuring command writes to a results
file names that file (`sources`, paths from the repository root) and a formatter: a function that
takes the file's parsed JSON (one argument per file) and returns the row's result text, so the
figures are read, never copied. A row whose figures are in no results file (historical records,
printed benchmark output) keeps its text as written (`text`); the table's last column says
"as written" for those, so a reader knows regenerating the results does not update them. A read
row whose text still holds a figure no file has says which in `as_written`.

A results file that does not exist yet gives its row "(not measured yet: run `<command>`)", with
the command from `REGENERATE`. Rounding follows the table as it was written by hand: accuracies to
three decimals (a trailing zero dropped), effects and ratios to two, claim estimates to three.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_formatters beside this file
import results_formatters as fmt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = Path("docs") / "RESULTS.md"

# The command that writes each results file (shown when the file is missing).
REGENERATE: dict[str, str] = {
    "docs/results/lora/bench_lora.json": "python scripts/results.py --run lora",
    "docs/results/harness/harness.json": "python scripts/results.py --run harness",
    "docs/results/sampling/organism/results.json": "python scripts/results.py --run sampling",
    "docs/results/sampling/bench_samplers.json": (
        "python -m benchmarks.bench_samplers --rounds 5 --n 100 --json docs/results/sampling/bench_samplers.json"
    ),
    "docs/results/sampling/parallel/copy-block8.json": "python scripts/results.py --run parallel",
    "docs/results/sampling/parallel/copy-block-diffusion.json": (
        "python -m benchmarks.bench_parallel --mdm runs/organism-mdm-copy-block8 --n 20 --rounds 1 "
        "--json docs/results/sampling/parallel/copy-block-diffusion.json"
    ),
    "docs/results/sampling/parallel/smollm2-continuations.json": (
        "python -m benchmarks.bench_parallel --continuations --mdm runs/smollm2-mdm-cpu --prompts 4 "
        "--max-new-tokens 128 --block-length 32 --threads 2 "
        "--json docs/results/sampling/parallel/smollm2-continuations.json"
    ),
    "docs/results/sampling/smollm2/genppl.json": (
        "python scripts/sampler_results.py --smollm2-mdm runs/smollm2-mdm-cpu --prompts 8 --max-new-tokens 32"
    ),
    "docs/results/depth_neurons/results.json": "python scripts/results.py --run depth_neurons",
    "docs/results/circuits/results.json": "python scripts/results.py --run circuits",
    "docs/results/faithfulness/smollm2-ioi64.json": "python scripts/results.py --run faithfulness",
    "docs/results/formats/load_memory.json": "python scripts/results.py --run formats-memory",
    "docs/results/attribution_memory.json": "python scripts/results.py --run attribution-memory",
    "docs/results/study-organism/summary.json": "python scripts/results.py --run study",
    "docs/results/study-organism-moe/summary.json": "python scripts/results.py --run study-moe",
    "docs/results/validation/groundtruth.json": "python scripts/results.py --run validation",
    "docs/results/attribution-methods/results.json": "python scripts/results.py --run attribution-methods",
    "docs/results/compare/smollm2/report.json": (
        "ar2mdm compare --ar smollm2 --mdm runs/smollm2-mdm-cpu --out docs/results/compare/smollm2 "
        "--tasks ioi,greater_than,countdown --pool-size 40 --draw 120 --n-boot 1000 --no-faithfulness "
        "--denoising 1,0 --n-random 3 --batch-size 8"
    ),
    "docs/results/study-smollm2/summary.json": (
        "ar2mdm study --model smollm2 --budget 60 --power --n 16 --out runs/study-smollm2-60 && "
        "cp runs/study-smollm2-60/summary.json docs/results/study-smollm2/"
    ),
    "docs/results/compare/organism/report.json": (
        "ar2mdm compare --ar organism --mdm runs/organism-mdm-sft --out docs/results/compare/organism "
        "--pool-size 300 --draw 600 --n-boot 1000"
    ),
    "docs/results/probe/probe_results.json": "python scripts/results.py --run probe",
}


@dataclass(frozen=True)
class Row:
    """One line of the table.

    what: the first column. command: the third column (the command and/or document the figures
    come from), kept as written. sources: the results files the row's figures are read from, by
    `format` (called with one parsed JSON per file, in this order); empty for a row whose figures
    are in no results file, which shows `text` instead. as_written: for a read row, the figures
    of its text that no results file holds (named in the last column)."""

    what: str
    command: str
    sources: tuple[str, ...] = ()
    format: Callable[..., str] | None = None
    text: str = ""
    as_written: str = ""


# ---------------------------------------------------------------------------------------------
# The table

ROWS: tuple[Row, ...] = (
    Row(
        "SmolLM2-135M, IOI (200 prompts)",
        "`python scripts/measure_tasks.py`",
        text="correct name above the other 98.5%, mean logit diff 5.14",
    ),
    Row("SmolLM2-135M, Greater-Than (200)", "same", text="100%, mean logit diff 3.90, prob diff 0.946"),
    Row(
        "organism AR (6 layers), held-out accuracy, 1,500 steps (244 s)",
        "`ar2mdm organism train --steps 1500`; [`docs/results/organism.md`](results/organism.md)",
        text="IOI 1.00, Greater-Than 1.00, induction 1.00, Countdown 0.655, infilling 1.00, sudoku 0.515 (every "
        "target reached); clean - corrupt LD gap >= 1 on every task (Countdown 1.07, the smallest)",
    ),
    Row(
        "organism -> MDM on task text, 1,500 steps (12 min) (3-layer organism, before 2026-11-30)",
        "[`docs/results/conversion.md`](results/conversion.md)",
        text="held-out masked-token accuracy 0.061 -> 0.602",
    ),
    Row(
        "organism -> MDM, SFT on tasks, 1,500 steps (10 min), confidence fill (3-layer organism, before 2026-11-30)",
        "[`docs/results/conversion.md`](results/conversion.md)",
        text="IOI 1.00, Greater-Than 1.00, induction 1.00, Countdown 0.39, infilling 1.00, sudoku 0.395",
    ),
    Row(
        "SmolLM2-135M -> MDM on SOTU, 300 steps",
        "[`docs/results/conversion.md`](results/conversion.md)",
        text="~94 tokens/s; held-out masked loss 8.19 -> 5.29",
    ),
    Row(
        "SmolLM2-135M -> MDM on one H100, 500 x 64 x 512",
        "[`docs/results/smollm2-h100/`](results/smollm2-h100/)",
        text="~105 k tokens/s (bf16); held-out loss 4.65 -> 4.18",
    ),
    Row(
        "LoRA r=8 vs full conversion, SmolLM2-135M (4 x 128 tokens a step)",
        "`python -m benchmarks.bench_lora`; [`docs/results/lora.md`](results/lora.md)",
        ("docs/results/lora/bench_lora.json",),
        fmt.lora,
    ),
    Row(
        "lm-evaluation-harness vs ar2mdm's own eval, organism ARM and its 400-step SFT MDM (64 held-out examples a "
        "task)",
        "`python scripts/results.py --run harness`; [`docs/results/harness.md`](results/harness.md)",
        ("docs/results/harness/harness.json",),
        fmt.harness,
    ),
    Row("MDM / AR training-step throughput", "`python -m benchmarks.bench_train_step`", text="1.08 (target >= 0.9)"),
    Row(
        "organism MDM (6 layers), Countdown accuracy at NFE = L (200)",
        "[`docs/results/sampling.md`](results/sampling.md)",
        ("docs/results/sampling/organism/results.json",),
        fmt.organism_samplers,
    ),
    Row(
        "threshold vs low-confidence tokens/s, Countdown (3-layer organism, before 2026-11-30)",
        "`python -m benchmarks.bench_samplers`",
        ("docs/results/sampling/bench_samplers.json",),
        fmt.threshold_speed,
    ),
    Row(
        "parallel decoding on a 32-token copy task (organism copy MDM, blocks of 8, 100 held-out)",
        "`python -m benchmarks.bench_parallel`; [`docs/results/sampling.md`](results/sampling.md)",
        ("docs/results/sampling/parallel/copy-block8.json",),
        fmt.parallel_copy,
    ),
    Row(
        "cache drift per step (mean / max logit, one token per call)",
        "same",
        ("docs/results/sampling/parallel/copy-block8.json", "docs/results/sampling/parallel/copy-block-diffusion.json"),
        fmt.cache_drift,
    ),
    Row(
        "SmolLM2 202-step MDM, 128-token continuations",
        "`python -m benchmarks.bench_parallel --continuations`; [`docs/results/sampling.md`](results/sampling.md)",
        ("docs/results/sampling/parallel/smollm2-continuations.json",),
        fmt.continuations,
    ),
    Row(
        "SmolLM2 300-step MDM, gen-PPL / entropy",
        "[`docs/results/sampling.md`](results/sampling.md)",
        ("docs/results/sampling/smollm2/genppl.json",),
        fmt.smollm2_genppl,
    ),
    Row(
        "probe run_with_cache vs plain forward, SmolLM2",
        "`python -m benchmarks.bench_probe`; [`docs/results/probe.md`](results/probe.md)",
        text="torch 1.05x, nnsight 1.08x, TL 1.15x (targets 1.10 / 1.25); organism 1.15 / 1.19-1.27 / 1.48-1.76 "
        "(fixed per-pass hook costs)",
    ),
    Row(
        "depth / neurons, organism AR vs MDM (6 tasks, 6 layers)",
        "[`docs/results/depth_neurons.md`](results/depth_neurons.md)",
        ("docs/results/depth_neurons/results.json",),
        fmt.depth_neurons,
    ),
    Row(
        "circuits, organism AR vs MDM (IOI, 1,108 edges, 6 layers)",
        "[`docs/results/circuits.md`](results/circuits.md)",
        ("docs/results/circuits/results.json",),
        fmt.circuits,
    ),
    Row(
        "faithfulness curve at 70k edges, SmolLM2 IOI-64, 10 sizes",
        "`python -m benchmarks.bench_faithfulness`; [`docs/results/faithfulness.md`](results/faithfulness.md)",
        ("docs/results/faithfulness/smollm2-ioi64.json",),
        fmt.faithfulness,
    ),
    Row(
        "opening a published MDM (Dream layout, bf16)",
        "`python -m benchmarks.bench_load_memory`; [`docs/FORMATS.md`](FORMATS.md)",
        ("docs/results/formats/load_memory.json",),
        fmt.load_memory,
    ),
    Row(
        "attribution methods (exact, EAP, RelP, RelP-AH, GIM, EAP-IG x2, EAP-GP) on ground truth and the organism",
        "`python scripts/attribution_methods.py`; [`docs/results/attribution-methods.md`](results/attribution-methods.md)",
        ("docs/results/attribution-methods/results.json",),
        fmt.attribution_methods,
    ),
    Row(
        "gradient methods' wall time / their pass bound (plain SDPA model, no hooks), SmolLM2 IOI batch 8",
        "`python -m benchmarks.bench_eapig [--kv-receivers per-query]`; "
        "[`docs/results/attribution-methods.md`](results/attribution-methods.md)",
        text="EAP-IG 1.07-1.39 (grouped), 1.19-1.44 (per-query); EAP 1.18-1.37, GIM 1.25-1.40, EAP-GP "
        "1.05-1.25, over two runs each (target <= 1.2, not met reliably); before 2026-12-08, against "
        "the eager model: 1.16 (organism), 1.07 (SmolLM2)",
    ),
    Row(
        "EAP-IG peak memory, predicted / measured (bytes alive)",
        "`python -m benchmarks.bench_attribution_memory --malloc-mmap`; "
        "[`docs/results/attribution-memory.md`](results/attribution-memory.md)",
        ("docs/results/attribution_memory.json",),
        fmt.attribution_memory,
        as_written="the IOI-64 peaks (1.57 GiB, 2.16 GiB before streaming)",
    ),
    Row(
        "`make run` (the study) from a fresh clone with an empty cache, seed floor included",
        "[`docs/results/organism.md`](results/organism.md)",
        ("docs/results/study-organism/summary.json",),
        fmt.study_run,
        as_written="the fresh-clone times (the file's study ran with the organism already trained)",
    ),
    Row(
        "MoE organism (4 experts, top-2) -> MDM: routing, ARM vs MDM (`ar2mdm study --experts 4`)",
        "[`docs/results/moe.md`](results/moe.md)",
        ("docs/results/study-organism-moe/summary.json",),
        fmt.study_moe,
    ),
    Row(
        "circuits across block size, organism (`study --block-sizes 1,4,16`, +514 s)",
        "[`docs/results/validation.md`](results/validation.md)",
        text="Jaccard with the ARM falls as blocks grow on 5 of 6 tasks (sign test p = 0.22): IOI 0.83 / 0.75 / "
        "0.72 / 0.71 (block 1 / 4 / 16 / full), Greater-Than 0.72 / 0.61 / 0.57 / 0.55, induction 0.85 / 0.83 / "
        "0.73 / 0.73; every MDM above the ARM's seed floor (ARM vs ARM' 0.31-0.63)",
    ),
    Row(
        "the instrument on ground truth and controls",
        "[`docs/results/validation.md`](results/validation.md)",
        ("docs/results/validation/groundtruth.json",),
        fmt.ground_truth,
        as_written="the planted shift, null pairs and ARM vs ARM'",
    ),
    Row(
        "ARM vs MDM claims, SmolLM2 vs its 300-step CPU conversion (IOI, Greater-Than, Countdown, pool 40)",
        "[`docs/results/compare.md`](results/compare.md)",
        ("docs/results/compare/smollm2/report.json",),
        fmt.smollm2_claims,
    ),
    Row(
        "`ar2mdm study --model smollm2 --budget 6 --n 16`",
        "[`docs/results/compare.md`](results/compare.md)",
        text="6 min 24 s; the budget buys 15 conversion steps (15,360 tokens), pools of 8: a path check, not a result",
    ),
    Row(
        "`ar2mdm study --model smollm2 --budget 60 --power --n 16`",
        "[`docs/results/compare.md`](results/compare.md), [`docs/results/study-smollm2/`](results/study-smollm2/)",
        ("docs/results/study-smollm2/summary.json",),
        fmt.smollm2_study,
    ),
    Row(
        "ARM vs MDM claims, organism (6 tasks, pool 300, 95% CI) (3-layer organism, before 2026-11-30)",
        "[`docs/results/compare.md`](results/compare.md)",
        ("docs/results/compare/organism/report.json",),
        fmt.organism_claims,
    ),
    Row(
        "all benchmarks in one table (organism) (3-layer organism, before 2026-11-30)",
        "`make bench`",
        text="MDM/AR step 1.03; cache/forward 1.21 torch, 1.43 nnsight, 1.60 tl (target 1.5 missed); EAP-IG/(m+2) "
        "1.36 at batch 8 (1.16 at batch 32); threshold/low-confidence 1.09 (tau 0.9) and 1.29 (tau 0.7) at equal "
        "accuracy, 2.12 at -18 points (tau 0.5)",
    ),
    Row(
        "IOI head patching, organism AR vs MDM (6 layers)",
        "[`docs/results/probe.md`](results/probe.md)",
        ("docs/results/probe/probe_results.json",),
        fmt.ioi_heads,
    ),
)

HEADER = """\
# Measured results

<!-- Generated by scripts/results_table.py from the JSON files under docs/results/; do not edit by hand. -->

Each row links the document that says how and where its figures were measured (a
`docs/results/*.md` file, or [FORMATS.md](FORMATS.md) for the memory of a published MDM); a row
that names only a command (a benchmark, `scripts/measure_tasks.py`, `make bench`) comes from that
command's output. The documents and the JSON files beside them are regenerated by `make results`
(`scripts/results.py`; `docs/results/provenance.json` records what each was made from), and
`make results-check` lists which are stale. Entries that need a GPU or SmolLM2 on a machine
without them are listed there, not run. `make results` runs `python scripts/results_table.py`
last, which writes this page: the table is generated from the JSON files under `docs/results/`,
so do not edit it by hand (its rows and wording are in `scripts/results_table.py`, and
`python scripts/results_table.py --check` says whether this page is current).

2-core CPU unless noted; details and readings in [`docs/results/`](results/). Rows marked "3-layer organism"
were measured on the organism before it became 6 layers deep; `make results-check` lists which
results documents still describe older code, and `make results` regenerates them.

The last column names the results file each row's figures are read from. "as written" marks
figures that no results file holds: they stay as the document or command output in the third
column gave them, and regenerating the results does not change them.
"""


# ---------------------------------------------------------------------------------------------
# Writing


def result_cell(row: Row, root: Path = ROOT) -> str:
    """The row's result text: read from its results files, or as written."""
    if not row.sources:
        return row.text
    assert row.format is not None, f"row {row.what!r} has sources but no formatter"
    for source in row.sources:
        if not (root / source).is_file():
            return f"(not measured yet: run `{REGENERATE[source]}`)"
    return row.format(*(json.loads((root / source).read_text()) for source in row.sources))


def source_cell(row: Row) -> str:
    """The last column: links to the results files, or "as written"."""
    if not row.sources:
        return "as written"
    links = ", ".join(
        f"[`{source.removeprefix('docs/results/')}`]({source.removeprefix('docs/')})" for source in row.sources
    )
    return f"{links}; as written: {row.as_written}" if row.as_written else links


def render(root: Path = ROOT) -> str:
    """The whole of docs/RESULTS.md."""
    lines = ["| what | result | command | figures from |", "|---|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row.what} | {result_cell(row, root)} | {row.command} | {source_cell(row)} |")
    return HEADER + "\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/RESULTS.md is not what it would write")
    args = parser.parse_args(argv)
    text = render()
    path = ROOT / DOC
    if args.check:
        if not path.is_file() or path.read_text() != text:
            print(f"{DOC} is out of date with docs/results/: run `python scripts/results_table.py`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {DOC} ({len(ROWS)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
