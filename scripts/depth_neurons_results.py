"""Layer depth and unit specialisation of the organism AR model against its MDM, on six tasks.

For each task of `conversion.organism` (local: ioi, greater_than, induction; global: countdown,
infilling, sudoku), the held-out examples `eval_examples(n)` are rendered for each model's
reading (AR: after the prompt; MDM: answer masked in place, read where its shift says) and kept in
a *common-correct pool*: both renderings align and both models give the correct answer a higher
logit than the counterfactual one (clean LD > 0). Then, on that pool, for each model:

1. logit lens by layer (`analyses.depth.lens_profile`);
2. node scores by exact activation patching (noising: each head / MLP alone set to its value on
   the corrupted input, drop of LD per example) and direct logit attribution;
3. layer distribution of the top-K nodes, ARM vs MDM, with paired bootstrap intervals
   (`compare_depth`);
4. targeted ablation: the top-K nodes that lie in the first third of the layers,
   zero- and mean-ablated, against 10 random kind-matched draws and the most important nodes of
   the middle and of the last third (`targeted_ablation`);
5. unit profiles of every MLP neuron and head over the six tasks (`profile_units`), the
   concentration / specialisation comparison (`compare_profiles`), and for every task a causal
   check: mean-ablate the task's top units (by selectivity, and by attribution) against random
   units from the same layers, and the same units on the other tasks (`causal_check`); the top
   neuron's top tokens and vocabulary projection.

Writes `results.json` (every number) and small plotly figures (`lens.html`, `layers.html`,
`ablation.html`, `causal.html`; plotly.js from its CDN) under --out.

    OMP_NUM_THREADS=1 python scripts/depth_neurons_results.py --n 200 --out docs/results/depth_neurons
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyses.compare import common_pool, format_interval, json_safe
from analyses.depth import (
    baseline_logit_diffs,
    compare_depth,
    dla_scores,
    layer_distribution,
    lens_profile,
    mean_scores,
    node_patching_scores,
    targeted_ablation,
)
from analyses.neurons import causal_check, compare_profiles, profile_units, vocab_projection
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import task_names
from conversion.organism import eval_examples
from probe import ProbedModel

MODELS = {"ar": "organism", "mdm": "runs/organism-mdm-sft"}
TASKS = task_names()


def pools(models: dict[str, ProbedModel], n: int, common_correct: bool) -> tuple[dict, dict]:
    """Per task: {model: [Rendered]} over the same examples (`analyses.compare.common_pool`, every
    aligned example when not common_correct), and pool statistics."""
    examples = eval_examples(n)
    out, stats = {}, {}
    for task in TASKS:
        pool = common_pool(
            models["ar"], models["mdm"], task, examples[task], len(examples[task]), require_correct=common_correct
        )
        out[task] = {"ar": pool.ar, "mdm": pool.mdm}
        stats[task] = pool.stats
        print(f"pool {task}: {stats[task]}", flush=True)
    return out, stats


def top_neuron_story(pm: ProbedModel, profile, task: str) -> dict:
    unit = profile.ranking(task, "selectivity")[0]
    u = profile.units.index(unit)
    tok = pm.tokenizer
    proj = vocab_projection(pm, unit, k=8)
    t = profile.tasks.index(task)
    return {
        "unit": unit,
        "selectivity": float(profile.selectivity()[u, t]),
        "selectivity_index": float(profile.selectivity_index()[u]),
        "attr_mean_by_task": dict(zip(profile.tasks, profile.attr_mean[u].tolist(), strict=True)),
        "top_tokens": [tok.decode([int(i)]) for i in profile.top_tokens[u]],
        "top_token_tasks": [profile.tasks[int(i)] for i in profile.top_tasks[u]],
        "top_values": profile.top_values[u].tolist(),
        "promotes": [tok.decode([i]) for i in proj.top_ids],
        "suppresses": [tok.decode([i]) for i in proj.bottom_ids],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="held-out examples drawn per task")
    ap.add_argument("--k", type=int, default=6, help="top-K nodes for the layer distribution and the targeted ablation")
    ap.add_argument("--n-random", type=int, default=10)
    ap.add_argument("--n-neurons", type=int, default=10, help="units ablated per causal check (neurons)")
    ap.add_argument("--n-heads", type=int, default=2, help="units ablated per causal check (heads)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument(
        "--all-examples", action="store_true", help="use every aligned example, not the common-correct pool"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/depth_neurons"))
    ap.add_argument("--tables", action="store_true", help="only print Markdown tables of an existing OUT/results.json")
    args = ap.parse_args()
    if args.tables:
        print(tables(json.loads((args.out / "results.json").read_text())))
        return
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    models = {m: ProbedModel.from_checkpoint(src, backend="torch") for m, src in MODELS.items()}
    pool, pool_stats = pools(models, args.n, not args.all_examples)
    result: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "models": MODELS,
        "pools": pool_stats,
        "tasks": {},
        "neurons": {},
    }
    boot = {"n_boot": args.n_boot, "seed": args.seed}

    # --- depth -----------------------------------------------------------------------------------
    for task in TASKS:
        entry: dict = {}
        patch = {}
        for m, pm in models.items():
            items = pool[task][m]
            clean, corrupted = baseline_logit_diffs(pm, items)
            patch[m] = node_patching_scores(pm, items)
            dla = mean_scores(dla_scores(pm, items))
            scores = mean_scores(patch[m])
            entry[m] = {
                "clean_ld": float(clean.mean()),
                "corrupted_ld": float(corrupted.mean()),
                "lens": lens_profile(pm, items).summary(),
                "patching": scores,
                "dla": dla,
                "dist_patching": layer_distribution(scores, pm.config.n_layers, args.k).to_dict(),
                "dist_patching_all": layer_distribution(scores, pm.config.n_layers).to_dict(),
                "dist_dla": layer_distribution(dla, pm.config.n_layers, args.k).to_dict(),
            }
            entry[m]["ablation"] = {}
            for method in ("zero", "mean"):
                try:
                    ta = targeted_ablation(
                        pm, items, scores, k=args.k, method=method, n_random=args.n_random, task=task, **boot
                    )
                    entry[m]["ablation"][method] = ta.to_dict()
                except UserError as err:  # no layer-0 node among the top-K: record why
                    entry[m]["ablation"][method] = {"error": str(err)}
            print(
                f"{task} {m}: LD {entry[m]['clean_ld']:.2f} / {entry[m]['corrupted_ld']:.2f}, "
                f"early mass {entry[m]['dist_patching']['early_mass']:.2f}, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
        n_layers = models["ar"].config.n_layers
        entry["compare"] = compare_depth(patch["ar"], patch["mdm"], n_layers, args.k, task=task, **boot).to_dict()
        entry["compare_all"] = compare_depth(patch["ar"], patch["mdm"], n_layers, None, task=task, **boot).to_dict()
        result["tasks"][task] = entry

    # --- units -----------------------------------------------------------------------------------
    for kind, n_units in (("neurons", args.n_neurons), ("heads", args.n_heads)):
        profiles = {
            m: profile_units(pm, {t: pool[t][m] for t in TASKS}, kind=kind, keep=True) for m, pm in models.items()
        }
        block: dict = {
            "compare": {
                k: {s: iv.to_dict() for s, iv in v.items()}
                for k, v in compare_profiles(profiles["ar"], profiles["mdm"], **boot).items()
            }
        }
        for m, pm in models.items():
            prof = profiles[m]
            block[m] = {"summary": prof.summary(), "checks": {}, "top": {}}
            for task in TASKS:
                tasks = {t: pool[t][m] for t in TASKS}
                for by in ("selectivity", "attribution"):
                    check = causal_check(
                        pm, prof, tasks, task, n_units=n_units, by=by, method="mean", n_random=args.n_random, **boot
                    )
                    block[m]["checks"][f"{task}/{by}"] = check.to_dict()
                if kind == "neurons":
                    block[m]["top"][task] = top_neuron_story(pm, prof, task)
            print(f"{kind} {m}: {time.perf_counter() - t0:.0f}s", flush=True)
        result["neurons"][kind] = block
    result["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(json_safe(result), separators=(",", ":"), allow_nan=False))
    figures(result, args.out)
    print(f"done in {result['seconds']:.0f}s -> {args.out}")


# --- tables -------------------------------------------------------------------------------------------


def tables(r: dict) -> str:
    tasks = list(r["tasks"])
    out = ["| task | aligned | common-correct pool | AR LD > 0 | MDM LD > 0 |", "|---|---|---|---|---|"]
    for t in tasks:
        p = r["pools"][t]
        out.append(f"| {t} | {p['aligned']} | {p['pool']} | {p['accuracy_ar']:.2f} | {p['accuracy_mdm']:.2f} |")
    out += [
        "",
        "| task | model | clean / corrupted LD | top-1 share: embed, L0, L1, ... | lens LD: embed, L0, L1, ... |",
        "|---|---|---|---|---|",
    ]
    for t in tasks:
        for m in ("ar", "mdm"):
            e = r["tasks"][t][m]
            lens = e["lens"]
            out.append(
                f"| {t} | {m} | {e['clean_ld']:.2f} / {e['corrupted_ld']:.2f} | "
                + ", ".join(f"{v:.2f}" for v in lens["top1"])
                + " | "
                + ", ".join(f"{v:.2f}" for v in lens["mean_logit_diff"])
                + " |"
            )
    out += [
        "",
        "| task | top-K AR (mass L0, L1, ...) | top-K MDM | early mass AR | early mass MDM | MDM - AR early mass | MDM - AR centre | all nodes: MDM - AR early mass |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        c, ca = r["tasks"][t]["compare"], r["tasks"][t]["compare_all"]
        out.append(
            f"| {t} | "
            + ", ".join(f"{v:.2f}" for v in c["a"]["mass"])
            + " | "
            + ", ".join(f"{v:.2f}" for v in c["b"]["mass"])
            + f" | {format_interval(c['early_mass'].get('ar'))} | {format_interval(c['early_mass'].get('mdm'))} | {format_interval(c['early_mass_diff'])} | {format_interval(c['centre_diff'])} | {format_interval(ca['early_mass_diff'])} |"
        )
    for method in ("zero", "mean"):
        out += [
            "",
            f"{method}-ablation: LD drop (clean - ablated), 95% CI; in brackets after it, the share of the clean - corrupted gap:",
            "",
            "| task | model | early nodes ablated | early top-K | random (10 draws) | middle control | late control | drop early - drop random |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in tasks:
            for m in ("ar", "mdm"):
                a = r["tasks"][t][m]["ablation"][method]
                if "error" in a:
                    out.append(f"| {t} | {m} | {a['error']} | | | | | |")
                    continue
                ctl = a["controls"]

                def arm(res: dict | None) -> str:
                    return "-" if not res else f"{format_interval(res['drop'])} ({res['gap_share']['estimate']:.2f})"

                out.append(
                    f"| {t} | {m} | {', '.join(a['target']['components'])} | {arm(a['target'])} | {arm(ctl['random'])} | "
                    f"{arm(ctl.get('middle'))} | {arm(ctl.get('late'))} | {format_interval(a['versus']['random'])} |"
                )
    for kind in ("neurons", "heads"):
        cmp = r["neurons"][kind]["compare"]
        out += [
            "",
            f"{kind}: concentration of attribution (AR, MDM, MDM - AR; 95% CI)",
            "",
            "| task | Gini AR | Gini MDM | diff | share of units for 80% AR | MDM | diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in tasks:
            g, k = cmp[f"{t}:gini"], cmp[f"{t}:share_k80"]
            out.append(
                f"| {t} | {format_interval(g['a'])} | {format_interval(g['b'])} | {format_interval(g['diff'])} | {format_interval(k['a'], 3)} | {format_interval(k['b'], 3)} | {format_interval(k['diff'], 3)} |"
            )
        for key in ("median_selectivity_index", "median_entropy"):
            out.append(
                f"| all tasks: {key} | {format_interval(cmp[key]['a'])} | {format_interval(cmp[key]['b'])} | {format_interval(cmp[key]['diff'])} | | | |"
            )
        out += [
            "",
            f"{kind}: causal checks (mean ablation; LD drop, 95% CI)",
            "",
            "| task | model | ranked by | top units | random (same layers) | top - random | mean drop on the other tasks |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in tasks:
            for m in ("ar", "mdm"):
                for by in ("selectivity", "attribution"):
                    c = r["neurons"][kind][m]["checks"][f"{t}/{by}"]
                    off = [v["drop"]["estimate"] for v in c["off_target"].values()]
                    out.append(
                        f"| {t} | {m} | {by} | {format_interval(c['target']['drop'])} | {format_interval(c['random']['drop'])} | {format_interval(c['versus_random'])} | {sum(off) / len(off):.2f} |"
                    )
    out += [
        "",
        "| task | model | most selective neuron | selectivity | index | top tokens | promotes |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        for m in ("ar", "mdm"):
            s = r["neurons"]["neurons"][m]["top"][t]
            out.append(
                f"| {t} | {m} | {s['unit']} | {s['selectivity']:.2f} | {s['selectivity_index']:.2f} | "
                f"{' '.join(repr(x) for x in s['top_tokens'][:5])} | {' '.join(repr(x) for x in s['promotes'][:5])} |"
            )
    return "\n".join(out)


# --- figures ------------------------------------------------------------------------------------------


def figures(result: dict, out: Path) -> None:
    tasks = list(result["tasks"])
    colors = {"ar": "#1f77b4", "mdm": "#d62728"}
    fig = make_subplots(rows=2, cols=len(tasks), subplot_titles=tasks, shared_yaxes=False, vertical_spacing=0.12)
    for i, task in enumerate(tasks, start=1):
        for m in ("ar", "mdm"):
            lens = result["tasks"][task][m]["lens"]
            x = ["embed"] + [p.split(".")[0] for p in lens["points"][1:]]
            fig.add_trace(
                go.Scatter(x=x, y=lens["top1"], name=m, line={"color": colors[m]}, showlegend=i == 1), row=1, col=i
            )
            fig.add_trace(
                go.Scatter(
                    x=x, y=lens["mean_logit_diff"], name=m, line={"color": colors[m], "dash": "dot"}, showlegend=False
                ),
                row=2,
                col=i,
            )
    fig.update_yaxes(title_text="top-1 share", row=1, col=1)
    fig.update_yaxes(title_text="lens logit diff", row=2, col=1)
    fig.update_layout(title="Logit lens at the read position (common-correct pool)", height=550, width=1400)
    fig.write_html(out / "lens.html", include_plotlyjs="cdn")

    fig = go.Figure()
    n_layers = len(result["tasks"][tasks[0]]["ar"]["dist_patching"]["mass"])
    for m in ("ar", "mdm"):
        for layer in range(n_layers):
            fig.add_trace(
                go.Bar(
                    x=tasks,
                    y=[result["tasks"][t][m]["dist_patching"]["mass"][layer] for t in tasks],
                    name=f"{m} L{layer}",
                    offsetgroup=m,
                    marker={"color": colors[m], "opacity": 1 - 0.8 * layer / n_layers},
                    base=[sum(result["tasks"][t][m]["dist_patching"]["mass"][:layer]) for t in tasks],
                )
            )
    fig.update_layout(
        title="Share of top-K node-patching mass per layer (left bar AR, right bar MDM)",
        yaxis_title="mass",
        height=450,
        width=1000,
    )
    fig.write_html(out / "layers.html", include_plotlyjs="cdn")

    fig = make_subplots(rows=1, cols=2, subplot_titles=["AR", "MDM"], shared_yaxes=True)
    arms = ("target", "random", "middle", "late")
    for c, m in enumerate(("ar", "mdm"), start=1):
        for arm in arms:
            ys, lo, hi = [], [], []
            for t in tasks:
                ab = result["tasks"][t][m]["ablation"].get("zero", {})
                r = ab.get("target") if arm == "target" else ab.get("controls", {}).get(arm)
                d = r["gap_share"] if r else {"estimate": None, "low": None, "high": None}
                ys.append(d["estimate"])
                lo.append(None if d["estimate"] is None else d["estimate"] - d["low"])
                hi.append(None if d["estimate"] is None else d["high"] - d["estimate"])
            fig.add_trace(
                go.Bar(
                    x=tasks,
                    y=ys,
                    name=arm,
                    error_y={"type": "data", "array": hi, "arrayminus": lo},
                    showlegend=c == 1,
                    offsetgroup=arm,
                ),
                row=1,
                col=c,
            )
    fig.update_yaxes(title_text="drop / (clean - corrupted) LD", row=1, col=1)
    fig.update_layout(
        title="Zero-ablation of the early-third top-K nodes vs random and middle / late controls (95% CI)",
        height=450,
        width=1300,
    )
    fig.write_html(out / "ablation.html", include_plotlyjs="cdn")

    fig = make_subplots(rows=1, cols=2, subplot_titles=["AR neurons", "MDM neurons"], shared_yaxes=True)
    for c, m in enumerate(("ar", "mdm"), start=1):
        checks = result["neurons"]["neurons"][m]["checks"]
        for arm, key in (("top by selectivity", "selectivity"), ("top by attribution", "attribution")):
            for part in ("target", "random"):
                ys, lo, hi = [], [], []
                for t in tasks:
                    d = checks[f"{t}/{key}"][part]["drop"]
                    ys.append(d["estimate"])
                    lo.append(d["estimate"] - d["low"])
                    hi.append(d["high"] - d["estimate"])
                fig.add_trace(
                    go.Bar(
                        x=tasks,
                        y=ys,
                        name=f"{arm}: {part}",
                        error_y={"type": "data", "array": hi, "arrayminus": lo},
                        showlegend=c == 1,
                        offsetgroup=f"{key}{part}",
                    ),
                    row=1,
                    col=c,
                )
    fig.update_yaxes(title_text="LD drop (mean ablation)", row=1, col=1)
    fig.update_layout(
        title="Causal check: ablate a task's top neurons vs as many random neurons from the same layers (95% CI)",
        height=450,
        width=1300,
    )
    fig.write_html(out / "causal.html", include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
