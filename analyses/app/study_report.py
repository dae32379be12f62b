"""The study's report: report.html (the comparison's page with the study's stages, sampler
curves and training curves), summary.json and the table printed at the end."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from analyses.app.stages import StageRecord, stage_output
from ar2mdm.common.env import fingerprint
from ar2mdm.common.outputs import atomic_write_text

# What repeats bit for bit for the same seed (tests: test_organism's tiny run, test_runfolder's
# resume, test_study's rerun), and what only repeats on the same machine, and why.
REPRODUCIBILITY = [
    {
        "numbers": "examples, tokenizer, held-out sets, pools' candidate draws, bootstrap resample indices",
        "same machine": "bit-identical",
        "another CPU": "bit-identical",
        "why": "integer streams from seeded generators (Python random, torch.Generator); no float arithmetic",
    },
    {
        "numbers": "organism training, conversion (weights, losses), snapshots",
        "same machine": "bit-identical (same threads, same library versions)",
        "another CPU": "differ",
        "why": "matrix kernels dispatch on the instruction set (AVX2 / AVX512) and split sums across threads, "
        "so float sums round differently in the last bits; 1,000+ optimiser steps amplify that into other weights",
    },
    {
        "numbers": "everything measured on trained models: accuracies, pools, LD gaps, scores, Jaccard, early mass, "
        "intervals, verdicts",
        "same machine": "bit-identical",
        "another CPU": "differ, by about as much as the seed floor",
        "why": "they are read off the trained weights; compare runs across machines through the seed floor, "
        "not digit by digit",
    },
    {
        "numbers": "the null pair (a model against itself)",
        "same machine": "Jaccard 1, effects 0",
        "another CPU": "Jaccard 1, effects 0",
        "why": "both passes run in one process on one machine",
    },
]


def summary_table(compare_data: Mapping[str, Any], sampler_rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per task: pool accuracies (LD>0 and top-1), low-confidence and ARM sampling accuracy (the
    decoded answer passes the task's checker), Jaccard, early mass."""
    from analyses.compare import summary_rows

    rows = summary_rows(compare_data)
    by = {(r["task"], r["sampler"]): r for r in sampler_rows if r.get("fraction") in (1.0, None)}
    for row in rows:
        lc, arm = by.get((row["task"], "low-confidence")), by.get((row["task"], "ar (the ARM)"))
        row["MDM sampling acc (checked answer)"] = f"{lc['accuracy']:.2f}" if lc else "-"
        row["ARM greedy acc (checked answer)"] = f"{arm['accuracy']:.2f}" if arm else "-"
    return rows


def claim_text(c: Mapping[str, Any]) -> str:
    """One line per claim: verdict, effect, detectable effect, seed floor and null pair."""
    from analyses.compare import format_interval
    from analyses.verdicts import stored_verdict

    text = f"{c['claim']} -- {stored_verdict(c).upper()}: {c['effect']} = {format_interval(c['interval'], 3)}"
    if c.get("detectable_effect") is not None:
        text += f"; detectable +/-{c['detectable_effect']:.3f}"
    floors = c.get("floor") or {}
    if floors:
        text += "; seed floor " + ", ".join(f"{p[6:].upper()} {format_interval(f, 3)}" for p, f in floors.items())
    elif c.get("floor_missing"):
        text += f"; {c['floor_missing']}"
    nulls = c.get("null") or {}
    if nulls:
        text += "; null pair " + ", ".join(f"{p[5:].upper()} {n['verdict']}" for p, n in nulls.items())
    return text


def write_study_report(
    out: Path,
    model: str,
    quick: bool,
    records: list[StageRecord],
    ar_source: str,
    mdm_path: Path,
    *,
    compare_dir: str = "compare",
    power: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """report.html and summary.json in `out` from the stages' outputs (`compare_dir`/report.json,
    samplers/results.json; `power`: the study's pool decision, see `study.plan_power`); returns
    summary.json's content."""
    from analyses.compare import report_html, table_html
    from analyses.generation import EvalRow, figure
    from conversion.report import training_figure

    compare_data = stage_output(out / compare_dir / "report.json")
    sampler_rows = stage_output(out / "samplers" / "results.json").get("rows", [])
    mdm_info = next(r.info for r in records if r.name == "mdm")
    tokens = mdm_info.get("tokens_seen", 0)
    stage_rows = [{"stage": r.name, "status": r.status, "seconds": f"{r.seconds:.0f}", "key": r.key} for r in records]
    lines = [
        f"<p>Model <b>{html.escape(model)}</b>: ARM <code>{html.escape(ar_source)}</code>, converted by "
        f"{mdm_info.get('steps')} steps ({tokens:,} tokens) into <code>{html.escape(str(mdm_path))}</code>.</p>"
    ]
    if model != "organism":
        lines.append(
            f"<p><b>How little conversion this is:</b> {tokens:,} tokens on this machine's budget; published conversions "
            "used about 30 B (DiffuGPT), 65 B (DiffuLLaMA) and 580 B (Dream) tokens. Read the MDM side as a barely "
            "converted model.</p>"
        )
    if quick:
        lines.append("<p><b>Quick mode:</b> tiny training and pools; the numbers only show that the pipeline runs.</p>")
    if compare_data.get("note"):
        lines.append(f"<p><b>Note:</b> {html.escape(compare_data['note'])}</p>")
    if power is not None:
        lines.append(
            f"<p><b>Pool size:</b> {power.get('target', 'a Jaccard interval of about +/-0.03')} needs {power['pool']} examples per task "
            f"(the comparison's first pool: {power['pilot_pool']}; estimated {power['estimated_minutes']} min). "
            + html.escape(
                f"Reran the comparison there ({power['reason']})." if power["run"] else f"Not rerun: {power['reason']}."
            )
            + "</p>"
        )
    env = fingerprint()
    lines += [
        "<h2>Stages</h2>",
        table_html(stage_rows),
        "<h2>Reproducibility</h2>",
        "<p>This run: " + html.escape(", ".join(f"{k} {v}" for k, v in env.items())) + ".</p>",
        table_html(REPRODUCIBILITY),
        "<h2>Summary</h2>",
        table_html(summary_table(compare_data, sampler_rows)),
    ]
    extra = {
        "samplers: accuracy against NFE": figure([EvalRow(**r) for r in sampler_rows]),
        "conversion: training curves": training_figure(mdm_path / "train.jsonl", title="conversion"),
    }
    page = report_html(compare_data, title=f"ar2mdm study: {model}", extra_figures=extra, sections=lines)
    atomic_write_text(out / "report.html", page)
    summary = {
        "model": model,
        "ar": ar_source,
        "mdm": str(mdm_path),
        "conversion": mdm_info,
        "stages": [asdict(r) for r in records],
        "claims": {
            k: {
                "verdict": c["verdict"],
                "effect": c["effect"],
                "interval": c["interval"],
                **{f: c.get(f) for f in ("verdict_without_floor", "detectable_effect", "floor", "floor_bound", "null")},
            }
            for k, c in compare_data["claims"].items()
        },
        "table": summary_table(compare_data, sampler_rows),
        "claims_text": {k: claim_text(c) for k, c in compare_data["claims"].items()},
        "environment": env,
        "compare_folder": compare_dir,
        "power": dict(power) if power is not None else None,
    }
    if compare_data.get("routing"):  # a mixture-of-experts pair: the routing claim and what it rests on
        routing = compare_data["routing"]
        summary["routing"] = {
            "claim": routing["claim"],
            "alignment": routing.get("alignment", {}),
            "jaccard": {t: e["overlap"] for t, e in routing["tasks"].items()},
        }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def print_summary(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))  # the table is wide; a pipe reports 80 columns
    rows = summary["table"]
    if rows:
        table = Table(title=f"ARM vs MDM ({summary['model']}): common-correct pool per task")
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("task", "kind") else "right")
        for r in rows:
            table.add_row(*r.values())
        console.print(table)
    for key, text in summary["claims_text"].items():
        console.print(f"claim ({key}): {text}", markup=False, highlight=False)
