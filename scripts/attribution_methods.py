"""One benchmark of every attribution method: ground truth, agreement with exact patching, MIB's
CPR and CMD, cost.

Rows, for every method registered for edges (`analyses.attribution.methods_for("edge")`):

- the ground-truth models of `analyses.validation` (a planted circuit): ROC AUC of the edge and
  node scores and precision@K (K = the true edges);
- the organism ARM and its MDM (`runs/organism-mdm-sft`) on IOI, the examples both answer
  (logit difference > 0): Spearman correlation with exact patching over each method's own top-100
  edges (the edges a circuit built from it keeps), MIB's CPR and CMD (Mueller et al. 2025:
  the faithfulness curve of top-n circuits over 0.1 %..100 % of the edges, its area and its area
  from 1), wall time as a multiple of one forward+backward pass of the plain model (SDPA
  attention, no hooks) over the same batches, and the peak extra resident memory of the call
  (measured with large allocations mapped, MALLOC_MMAP_THRESHOLD_=131072, so freed memory
  leaves the resident set: the script re-executes itself with it).

Writes --out/results.json (every number), --out/table.md (the table docs/results/attribution-
methods.md shows) and --out/methods.html (the figure; plotly.js from its CDN).

    python scripts/attribution_methods.py --out docs/results/attribution-methods
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ (the repository root)

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from circuits_results import MODELS, common_correct, render_for
from plotly.subplots import make_subplots

from analyses.attribution import methods_for
from analyses.circuits import attribute, faithfulness_curve
from analyses.graph import compare_scores
from analyses.metrics import Targets, metric_values
from analyses.validation.scoring import all_ground_truths, score_methods
from ar2mdm.tasks import collate
from benchmarks.bench_probe import extra_peak_mib
from probe import ProbedModel

METHODS = methods_for("edge")  # exact first: the others are compared with it
TOP = 100


def forward_backward_seconds(pm: ProbedModel, items: list, batch_size: int, repeats: int = 3) -> float:
    """Median seconds of one forward+backward pass of the plain model over `items` in batches of
    `batch_size`: SDPA attention, no hooks, the logit difference differentiated w.r.t. the input
    embeddings (the bound a gradient method's passes are counted in)."""
    model = pm.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    pad = pm.tokenizer.pad_token_id
    parts = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    chunks = [(collate(part, pad), part) for part in parts]
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for batch, part in chunks:
                embeds = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
                metric_values("logit_diff", logits, Targets.of(part)).sum().backward()
            times.append(time.perf_counter() - t0)
    finally:
        model.set_attn_implementation(previous)
    return statistics.median(times)


def ground_truth_rows(steps: int) -> list[dict]:
    return score_methods(all_ground_truths(), METHODS, steps=steps)


def model_rows(label: str, pm: ProbedModel, items: list, steps: int, batch_size: int) -> list[dict]:
    """One row per method on one real model (see the module docstring)."""
    unit = forward_backward_seconds(pm, items, batch_size)
    graphs, cost = {}, {}
    for method in METHODS:
        box: dict = {}
        t0 = time.perf_counter()
        mib = extra_peak_mib(
            lambda m=method, b=box: b.update(graph=attribute(pm, items, method=m, steps=steps, batch_size=batch_size))
        )
        cost[method] = (time.perf_counter() - t0, mib)
        graphs[method] = box["graph"]
        print(
            f"  {label} {method}: {cost[method][0]:.1f} s ({cost[method][0] / unit:.1f} x), +{mib:.0f} MiB", flush=True
        )
    exact = graphs["exact"]
    rows = []
    for method in METHODS:
        curve = faithfulness_curve(pm, items, graphs[method], batch_size=batch_size)
        agree = compare_scores(graphs[method], exact, TOP)
        seconds, mib = cost[method]
        rows.append(
            {
                "model": label,
                "method": method,
                "spearman_own_top": agree["spearman_own_top"],
                "spearman_exact_top": agree["spearman_top"],
                "jaccard_top": agree["jaccard_top"],
                "cpr": curve.cpr,
                "cmd": curve.cmd,
                "seconds": seconds,
                "forward_backward_seconds": unit,
                "cost": seconds / unit,
                "peak_mib": mib,
                "examples": len(items),
                "edges": len(exact.edges),
            }
        )
    return rows


def table(gt_rows: list[dict], rows: list[dict]) -> str:
    """Methods as rows: ground-truth edge AUC per model, then per real model rho / CPR / CMD / cost."""
    gts = list(dict.fromkeys(r["model"] for r in gt_rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = ["method", *[f"AUC {g}" for g in gts]]
    for m in models:
        head += [f"{m} rho@{TOP}", f"{m} CPR", f"{m} CMD", f"{m} cost (x fwd+bwd)", f"{m} MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        cells = [method]
        for g in gts:
            (r,) = [r for r in gt_rows if (r["model"], r["method"], r["level"]) == (g, method, "edge")]
            cells.append(f"{r['auc']:.3f}")
        for m in models:
            (r,) = [r for r in rows if (r["model"], r["method"]) == (m, method)]
            rho = "-" if method == "exact" else f"{r['spearman_own_top']:.3f}"
            cells += [rho, f"{r['cpr']:.3f}", f"{r['cmd']:.3f}", f"{r['cost']:.1f}", f"{r['peak_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(gt_rows: list[dict], rows: list[dict]):
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Ground truth: edge ROC AUC", f"Organism IOI: Spearman with exact (own top {TOP}) vs cost"),
    )
    for g in dict.fromkeys(r["model"] for r in gt_rows):
        picked = [r for r in gt_rows if r["model"] == g and r["level"] == "edge"]
        fig.add_bar(x=[r["method"] for r in picked], y=[r["auc"] for r in picked], name=g, row=1, col=1)
    for m in dict.fromkeys(r["model"] for r in rows):
        picked = [r for r in rows if r["model"] == m and r["method"] != "exact"]
        fig.add_scatter(
            x=[r["cost"] for r in picked],
            y=[r["spearman_own_top"] for r in picked],
            text=[r["method"] for r in picked],
            mode="markers+text",
            textposition="top center",
            name=m,
            row=1,
            col=2,
        )
    fig.update_xaxes(type="log", title="seconds / one forward+backward pass of the plain model", row=1, col=2)
    fig.update_yaxes(title="Spearman rho", row=1, col=2)
    fig.update_layout(height=480, width=1300, barmode="group")
    return fig


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc keeps freed memory in its heap, so a later call's peak would hide under an earlier
        # one's: large tensors mapped (and returned on free) make each call's extra peak its own
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="IOI examples drawn (before keeping common-correct ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5, help="interpolation / path points m of EAP-IG and EAP-GP")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("docs/results/attribution-methods"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    gt_rows = ground_truth_rows(args.steps)
    pms = {label: ProbedModel.from_checkpoint(source, backend="torch") for label, source in MODELS.items()}
    examples = common_correct(pms, args.n, args.seed)
    rows = []
    for label, pm in pms.items():
        rows += model_rows(label, pm, render_for(pm, examples), args.steps, args.batch_size)
    results = {
        "methods": METHODS,
        "steps": args.steps,
        "n_drawn": args.n,
        "n_common_correct": len(examples),
        "threads": torch.get_num_threads(),
        "ground_truth": gt_rows,
        "models": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "table.md").write_text(table(gt_rows, rows))
    figure(gt_rows, rows).write_html(args.out / "methods.html", include_plotlyjs="cdn", full_html=True)
    print(table(gt_rows, rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
