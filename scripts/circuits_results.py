"""EAP and EAP-IG against exact edge patching on the organism AR and its MDM (IOI), with circuits.

For each model (the organism AR, `organism`, and its SFT-converted MDM, `runs/organism-mdm-sft`):
render the same IOI examples for its reading mode (AR after the prompt; MDM: the answer masked in
place, read where its shift says), keep those both models answer correctly (clean logit
difference > 0), then score every edge with exact patching (ground truth), EAP, EAP-IG on inputs
and EAP-IG on activations (m = --steps), and compare each with the exact scores (Spearman over
all edges, over the 100 and the 20 edges of largest |exact score|, on |score|; Jaccard of the
top 100).
EAP-IG on inputs is also run for a few other m. Then: faithfulness curves of each method's top-n
circuits, the Jaccard curve of AR vs MDM top-K edges, and node importance s(v).

Writes under --out: `results.json` (every number), one graph JSON per model and method
(`<model>-<method>.json`, loadable with `analyses.graph.Graph.load`), and plotly figures
(`importance.html`, `edges.html`, `faithfulness.html`, `jaccard.html`; plotly.js from its CDN).

    python scripts/circuits_results.py --n 48 --out docs/results/circuits
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from plotly.subplots import make_subplots

from analyses.attribution import methods_for
from analyses.circuit_plots import curves_figure, edges_figure, importance_heatmap
from analyses.circuits import attribute, faithfulness_curve
from analyses.compare import rendered_for
from analyses.graph import compare_scores, jaccard_curve, node_importance
from analyses.metrics import Targets, metric_values
from ar2mdm.tasks import collate, generate_aligned, get_task
from probe import ProbedModel

MODELS = {"organism-ar": "organism", "organism-mdm": "runs/organism-mdm-sft"}
METHODS = methods_for("edge")  # exact first: the others are compared with it
TOP = 100
TOP_SMALL = 20


def render_for(pm: ProbedModel, examples) -> list:
    return [rendered_for(pm, ex) for ex in examples]


@torch.no_grad()
def clean_logit_diff(pm: ProbedModel, items) -> torch.Tensor:
    batch = collate(items, pm.tokenizer.pad_token_id)
    return metric_values("logit_diff", pm(batch), Targets.of(items))


def common_correct(pms: dict[str, ProbedModel], n: int, seed: int) -> list:
    """n IOI examples drawn from `seed` (aligned for AR and MDM reading), keeping those every model
    in `pms` (the organism AR and MDM) answers with logit difference > 0."""
    tok = pms["organism-ar"].tokenizer
    mask_id = pms["organism-mdm"].config.mask_id
    examples = generate_aligned(get_task("ioi", tok), n, tok, seed, modes=("ar", "mdm"), mask_id=mask_id)
    correct = torch.ones(len(examples), dtype=torch.bool)
    for pm in pms.values():
        correct &= clean_logit_diff(pm, render_for(pm, examples)) > 0
    return [ex for ex, ok in zip(examples, correct.tolist(), strict=True) if ok]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="IOI examples drawn (before keeping common-correct ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps m")
    ap.add_argument("--sweep", type=int, nargs="*", default=[1, 2, 10, 20], help="other m for EAP-IG on inputs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("docs/results/circuits"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    pms = {label: ProbedModel.from_checkpoint(source, backend="torch") for label, source in MODELS.items()}
    examples = common_correct(pms, args.n, args.seed)
    results: dict = {
        "n_drawn": args.n,
        "n_common_correct": len(examples),
        "seed": args.seed,
        "steps": args.steps,
        "top": TOP,
        "models": {},
    }
    graphs: dict[str, dict] = {}
    for label, pm in pms.items():
        items = render_for(pm, examples)
        graphs[label] = {}
        seconds = {}
        for method in METHODS:
            t0 = time.perf_counter()
            graphs[label][method] = attribute(
                pm,
                items,
                method=method,
                steps=args.steps,
                batch_size=args.batch_size,
                meta={"model": label, "task": "ioi"},
            )
            seconds[method] = time.perf_counter() - t0
            graphs[label][method].save(args.out / f"{label}-{method}.json")
        exact = graphs[label]["exact"]
        agreement = {m: compare_scores(graphs[label][m], exact, TOP) for m in METHODS[1:]}
        for m in METHODS[1:]:
            small = compare_scores(graphs[label][m], exact, TOP_SMALL)
            agreement[m].update(spearman_top20=small["spearman_top"], jaccard_top20=small["jaccard_top"])
        sweep = {}
        for m in sorted({*args.sweep, args.steps}):
            g = attribute(pm, items, method="eap-ig-inputs", steps=m, batch_size=args.batch_size)
            sweep[m] = {
                **compare_scores(g, exact, TOP),
                "spearman_top20": compare_scores(g, exact, TOP_SMALL)["spearman_top"],
            }
        curves = {}
        for method in METHODS:
            t0 = time.perf_counter()
            curves[method] = faithfulness_curve(pm, items, graphs[label][method], batch_size=args.batch_size).to_dict()
            curves[method]["seconds"] = time.perf_counter() - t0
        importance = node_importance(graphs[label]["eap-ig-inputs"], TOP)
        results["models"][label] = {
            "source": MODELS[label],
            "kind": pm.config.kind,
            "shift": pm.config.shift,
            "edges": len(exact.edges),
            "clean_logit_diff": exact.meta["clean_metric"],
            "corrupt_logit_diff": exact.meta["corrupt_metric"],
            "seconds": seconds,
            "agreement_with_exact": agreement,
            "eap_ig_inputs_steps": sweep,
            "faithfulness": curves,
            "top_edges_exact": [(e, exact.score(e)) for e in exact.top(15)],
            "top_edges_eap_ig": [
                (e, graphs[label]["eap-ig-inputs"].score(e)) for e in graphs[label]["eap-ig-inputs"].top(15)
            ],
            "node_importance_top100_eap_ig": importance,
            "node_scores_exact": exact.node_scores,
        }
        print(
            f"{label}: {len(items)} examples, {len(exact.edges)} edges, LD clean {exact.meta['clean_metric']:.2f} "
            f"corrupt {exact.meta['corrupt_metric']:.2f}; seconds { ({k: round(v, 1) for k, v in seconds.items()}) }"
        )
        for m, a in agreement.items():
            print(
                f"  {m:<20} spearman all {a['spearman_all']:.3f}  top{TOP} {a['spearman_top']:.3f}  "
                f"top{TOP_SMALL} {a['spearman_top20']:.3f}  "
                f"|score| {a['spearman_abs']:.3f}  jaccard top{TOP} {a['jaccard_top']:.2f}  "
                f"faithfulness area {curves[m]['area']:.3f}"
            )
        for m, a in sweep.items():
            print(
                f"  eap-ig-inputs m={m:<3} spearman all {a['spearman_all']:.3f}  top{TOP} {a['spearman_top']:.3f}  "
                f"top{TOP_SMALL} {a['spearman_top20']:.3f}"
            )

    # AR vs MDM: overlap of top-K edges, per method
    overlap = {}
    for method in METHODS:
        ks, values = jaccard_curve(graphs["organism-ar"][method], graphs["organism-mdm"][method])
        overlap[method] = {"k": ks, "jaccard": values}
    results["jaccard_ar_vs_mdm"] = overlap
    (args.out / "results.json").write_text(json.dumps(results, indent=1))

    write = {"include_plotlyjs": "cdn", "full_html": True}
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(MODELS))
    for i, label in enumerate(MODELS, start=1):
        heat = importance_heatmap(graphs[label]["eap-ig-inputs"], TOP)
        heat.data[0].update(showscale=i == 2)
        fig.add_trace(heat.data[0], row=1, col=i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=f"IOI node importance s(v), top {TOP} EAP-IG edges (m = {args.steps})", height=380, width=1000
    )
    fig.write_html(args.out / "importance.html", **write)
    with (args.out / "edges.html").open("w") as f:
        for label in MODELS:
            f.write(edges_figure(graphs[label]["eap-ig-inputs"], 40).to_html(**{**write, "full_html": False}))
    curves = {
        f"{label} {m}": ([max(s, 0.5) for s in c["sizes"]], c["values"])
        for label, r in results["models"].items()
        for m, c in r["faithfulness"].items()
    }
    curves_figure(
        curves,
        title="IOI faithfulness of top-n circuits (edges outside patched to corrupted)",
        x_title="edges requested (n; 0 drawn at 0.5)",
        y_title="faithfulness",
    ).write_html(args.out / "faithfulness.html", **write)
    curves_figure(
        {m: (v["k"], v["jaccard"]) for m, v in overlap.items()},
        title="Organism AR vs MDM on IOI: Jaccard overlap of the top-K edges",
        x_title="K",
        y_title="Jaccard",
    ).write_html(args.out / "jaccard.html", **write)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
