"""A comparison's result and how it is written: report.json, report.html, summary.md, graphs/.

`CompareResult` holds every number (JSON-safe `data`) and the circuit graphs; `write_report`
writes them atomically; `markdown_summary` and `report_html` (with plotly `figures`) show the
claims, the per-task table, circuits, ablations, units, the denoising trajectory and the
tracking over a conversion's snapshots, whichever were run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from analyses.compare.controls import PAIR_LABELS
from analyses.compare.methods import dependence_rows
from analyses.compare.pool import CRITERIA, criterion_label
from analyses.compare.routing import routing_figure, routing_markdown, routing_rows
from analyses.depth.distribution import region
from analyses.graph import Graph
from analyses.statistics import Interval, format_interval, pool_for_width
from analyses.verdicts import is_unfloored, stored_verdict
from ar2mdm.common.outputs import atomic_write_text
from ar2mdm.tasks import TASKS
from ar2mdm.tasks.evaluate import LD_GAP_TARGET


@dataclass
class CompareResult:
    """Everything `compare` measured: JSON-able `data` and the circuit graphs (not in JSON)."""

    data: dict[str, Any]
    graphs: dict[str, dict[str, Graph]] = field(default_factory=dict)  # task -> {"ar", "mdm"}

    @property
    def claims(self) -> dict[str, Any]:
        return self.data["claims"]


def json_safe(x: Any) -> Any:
    """JSON-safe: NaN / inf -> None, tensors -> lists, intervals -> dicts."""
    if isinstance(x, Interval):
        return json_safe(x.to_dict())
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, Tensor):
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def format_number(x: float | None, digits: int = 2) -> str:
    """A number for a table; "-" where it is undefined (NaN, stored as None: e.g. the early mass
    of a model whose top-K nodes all score 0, as when the read position cannot see the
    corruption)."""
    return "-" if x is None else f"{x:.{digits}f}"


def accuracy_cells(pool: Mapping[str, Any]) -> dict[str, str]:
    """Each model's accuracy over a task's aligned examples under each criterion, the pool's
    first: {"acc AR (LD>0)": ..., "acc MDM (LD>0)": ..., "acc AR (top-1)": ..., ...}. Reports
    written before the pool had a criterion hold the LD > 0 accuracy only (top-1 reads "-")."""
    criterion = pool.get("criterion") or "ld"
    cells = {}
    for c in (criterion, *(c for c in CRITERIA if c != criterion)):
        for m in ("ar", "mdm"):
            value = pool.get(f"accuracy_{m}_{c}", pool.get(f"accuracy_{m}") if c == criterion else None)
            cells[f"acc {m.upper()} ({criterion_label(c)})"] = format_number(value)
    return cells


def pool_caption(data: Mapping[str, Any]) -> str:
    """What the per-task table's pool and accuracies mean (the pool's criterion named)."""
    criterion = data.get("options", {}).get("pool_criterion") or "ld"
    pool = (
        f"the examples both models answer correctly by {criterion_label(criterion)}"
        if data.get("options", {}).get("common_correct", True)
        else "every aligned example, solved or not"
    )
    meanings = "; ".join(f"{label}: {meaning}" for label, meaning in CRITERIA.values())
    return f"Per task: pool = {pool}; accuracies over the aligned examples by each criterion ({meanings})."


def summary_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per task: pool, accuracies under each pool criterion (`accuracy_cells`), Jaccard,
    early mass AR / MDM and their difference."""
    rows = []
    for task, pool in data["pools"].items():
        entry = data["tasks"].get(task)
        row = {"task": task, "kind": TASKS[task].kind, "pool": str(pool["pool"]), **accuracy_cells(pool)}
        if entry is None:
            row.update(
                {
                    "LD gap AR / MDM": "-",
                    "Jaccard@K": "(pool too small)",
                    "early mass AR": "-",
                    "early mass MDM": "-",
                    "MDM - AR": "-",
                }
            )
        else:
            cmp = entry["depth"]["compare"]
            gaps = [entry["circuits"][m]["clean_ld"] - entry["circuits"][m]["corrupt_ld"] for m in ("ar", "mdm")]
            # a small clean - corrupt gap means attribution measures a tiny effect: flag it
            small = min(gaps) < LD_GAP_TARGET
            row["LD gap AR / MDM"] = f"{gaps[0]:.2f} / {gaps[1]:.2f}" + (" (small!)" if small else "")
            row.update(
                {
                    "Jaccard@K": format_interval(entry["circuits"]["jaccard"]),
                    "early mass AR": format_number(cmp["a"]["early_mass"]),
                    "early mass MDM": format_number(cmp["b"]["early_mass"]),
                    "MDM - AR": format_interval(cmp["early_mass_diff"]),
                }
            )
        rows.append(row)
    return rows


def claim_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per claim: effect with its interval and verdict, the smallest detectable effect,
    the null pairs and the seed floors with the bound an effect must clear."""
    rows = []
    for key, c in data["claims"].items():
        mde = c.get("detectable_effect")
        nulls = c.get("null", {})
        floors = c.get("floor", {})
        rows.append(
            {
                "claim": f"({key}) {c['claim']}",
                "effect": c["effect"],
                "estimate [95% CI]": format_interval(c["interval"], 3),
                "verdict": stored_verdict(c),
                "detectable": f"+/-{mde:.3f}" if mde is not None else "-",
                "null pair": "; ".join(
                    f"{PAIR_LABELS[p]} {format_interval(n['interval'], 3)} {n['verdict']}" for p, n in nulls.items()
                )
                or "not run",
                "seed floor": "; ".join(f"{PAIR_LABELS[p]} {format_interval(f, 3)}" for p, f in floors.items())
                + (f" (must clear {c['floor_bound']:.3f})" if c.get("floor_bound") is not None else "")
                if floors
                else c.get("floor_missing") or "none measured",
            }
        )
    return rows


def controls_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per analysed task: Jaccard@K and early-mass difference of the main pair beside
    each control pair, and the pool that would resolve Jaccard to +/-0.03."""
    rows = []
    for task, entry in data["tasks"].items():
        main = {
            "jaccard": entry["circuits"]["jaccard"],
            "early_mass_diff": entry["depth"]["compare"]["early_mass_diff"],
        }
        pairs = {"main": main, **entry.get("controls", {})}
        row = {"task": task, "pool": str(entry["n"])}
        for name, stats in pairs.items():
            row[f"Jaccard {PAIR_LABELS[name]}"] = format_interval(stats["jaccard"])
        for name, stats in pairs.items():
            row[f"early mass diff {PAIR_LABELS[name]}"] = format_interval(stats["early_mass_diff"])
        j = entry["circuits"]["jaccard"]
        need = (
            pool_for_width(entry["n"], Interval(j["estimate"], j["low"], j["high"]), 0.03)
            if j.get("low") is not None
            else None
        )
        row["pool for Jaccard +/-0.03"] = str(need) if need is not None else "-"
        rows.append(row)
    return rows


def md_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    head = list(rows[0])
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows),
    ]


METHODS_CAPTION = (
    "Claims under each attribution method (* validated on ground truth: a verdict these disagree on "
    "is method-dependent; reports per method under methods/):"
)


def markdown_summary(data: Mapping[str, Any]) -> str:
    """The report's numbers as Markdown: claims, per-task table, circuits, ablations, units,
    denoising trajectory and tracking (whichever were run)."""
    lines = [f"**Warning:** {w}" for w in data.get("warnings", [])]
    lines += [
        f"K = {data['options']['k_edges']} edges of {data['shape']['edges']}, {data['options']['k_nodes']} nodes; "
        f"EAP-IG m = {data['options']['steps']}; 95% bootstrap intervals ({data['options']['n_boot']} resamples).",
        "",
    ]
    for key, c in data["claims"].items():
        lines.append(
            f"- ({key}) {c['claim']}: **{stored_verdict(c)}** -- {c['effect']} = {format_interval(c['interval'], 3)}"
        )
    lines += ["", "Claims against their controls:", "", *md_table(claim_rows(data)), ""]
    if data.get("method_dependence"):
        lines += [METHODS_CAPTION, "", *md_table(dependence_rows(data["method_dependence"])), ""]
    lines += [pool_caption(data), "", *md_table(summary_rows(data)), ""]
    if any(e.get("controls") for e in data["tasks"].values()):
        lines += ["Controls per task (null pair: a model against itself; seed floor: models trained alike):", ""]
        lines += [*md_table(controls_rows(data)), ""]
    rows = []
    for t, e in data["tasks"].items():
        row = {"task": t}
        for m in ("ar", "mdm"):
            c = e["circuits"][m]
            row[f"LD clean / corrupt {m.upper()}"] = f"{c['clean_ld']:.2f} / {c['corrupt_ld']:.2f}"
            if "faithfulness" in c:
                f = c["faithfulness"]
                cmd = f"{f['cmd']:.2f}" if "cmd" in f else "-"
                row[f"CPR / CMD {m.upper()}"] = f"{f.get('cpr', f['area']):.2f} / {cmd}"
            ab = e["depth"][m].get("ablation")
            if ab and "error" not in ab:
                row[f"early top-K zero-ablation drop {m.upper()} (vs random)"] = (
                    f"{format_interval(ab['target']['drop'])} ({format_interval(ab['versus']['random'])})"
                )
            elif ab:
                row[f"early top-K zero-ablation drop {m.upper()} (vs random)"] = "no early node in the top-K"
        rows.append(row)
    lines += ["Circuits and ablations per model:", "", *md_table(rows), ""]
    lines += [
        "Share of the top-K nodes' score per layer (ARM -> MDM; the early third is marked *):",
        "",
        *md_table(layer_rows(data)),
        "",
    ]
    units = data.get("units", {})
    for kind in ("neurons", "heads"):
        if kind not in units:
            continue
        cmp = units[kind]["compare"]
        lines += [
            f"{kind}: MDM - AR (95% CI): median selectivity index {format_interval(cmp['median_selectivity_index']['diff'], 3)}, "
            f"median entropy {format_interval(cmp['median_entropy']['diff'], 3)}; Gini of attribution per task: "
            + ", ".join(
                f"{t} {format_interval(cmp[f'{t}:gini']['diff'])}" for t in data["tasks"] if f"{t}:gini" in cmp
            ),
            "",
        ]
    if data.get("routing"):
        lines += routing_markdown(data["routing"])
    points = {t: d for t, d in data.get("denoising", {}).items() if "points" in d}
    if points:
        lines += ["Denoising trajectory (MDM; t = share of the answer still masked):", ""]
        lines += md_table(
            [
                {
                    "task": t,
                    "t": f"{p['t']:.2f}",
                    "clean LD": f"{p['clean_ld']:.2f}",
                    "Jaccard with t=1": f"{p['jaccard_t1']:.2f}",
                    "Jaccard with ARM": f"{p['jaccard_ar']:.2f}",
                    "early mass": f"{p['early_mass']:.2f}",
                }
                for t, d in points.items()
                for p in d["points"]
            ]
        )
        lines.append("")
    tracked = data.get("track", {}).get("tasks", {})
    if tracked:
        lines += ["Across the conversion's snapshots:", ""]
        lines += md_table(
            [
                {
                    "task": t,
                    "step": p["step"],
                    "accuracy (LD>0)": f"{p['accuracy']:.2f}",
                    "Jaccard with ARM": f"{p['jaccard_ar']:.2f}",
                    "early mass": f"{p['early_mass']:.2f}",
                    "ARM early mass": f"{d['ar_early_mass']:.2f}",
                }
                for t, d in tracked.items()
                for p in d["points"]
            ]
        )
        lines.append("")
    if data.get("note"):
        lines += [f"Note: {data['note']}", ""]
    return "\n".join(lines)


def layer_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per task: each layer's share of the top-K nodes' score, "ARM -> MDM" (the
    per-layer reading of early mass; layers in the early third carry a *)."""
    n_layers = data["shape"]["n_layers"]
    rows = []
    for t, e in data["tasks"].items():
        row = {"task": t}
        for layer in range(n_layers):
            a, b = (e["depth"]["compare"][k]["mass"][layer] for k in ("a", "b"))
            mark = "*" if region(layer, n_layers) == "early" else ""
            row[f"L{layer}{mark}"] = f"{format_number(a)} -> {format_number(b)}"
        rows.append(row)
    return rows


def figures(data: Mapping[str, Any]) -> dict[str, Any]:
    """Plotly figures of a comparison: Jaccard curves, layer mass, lens, faithfulness, denoising
    trajectory, snapshots (each only when the comparison has its data)."""
    from analyses.circuit_plots import curves_figure

    tasks = list(data["tasks"])
    if not tasks:
        return {}
    method = data.get("options", {}).get("method", "eap-ig-inputs")
    figs: dict[str, Any] = {
        "jaccard": curves_figure(
            {
                t: (e["circuits"]["jaccard_curve"]["k"], e["circuits"]["jaccard_curve"]["jaccard"])
                for t, e in data["tasks"].items()
            },
            title=f"ARM vs MDM: Jaccard overlap of the top-K edges ({method})",
            x_title="K",
            y_title="Jaccard",
        ),
        "layers": _layers_figure(data, tasks),
        "lens": _lens_figure(data, tasks),
    }
    if any("faithfulness" in data["tasks"][t]["circuits"]["ar"] for t in tasks):
        curves = {
            f"{t} {m.upper()}": (
                [max(s, 0.5) for s in e["circuits"][m]["faithfulness"]["sizes"]],
                e["circuits"][m]["faithfulness"]["values"],
            )
            for t, e in data["tasks"].items()
            for m in ("ar", "mdm")
        }
        figs["faithfulness"] = curves_figure(
            curves, title=f"Faithfulness of top-n circuits ({method})", x_title="edges (n)", y_title="faithfulness"
        )
    points = {t: d["points"] for t, d in data.get("denoising", {}).items() if "points" in d}
    if points:
        figs["denoising"] = _denoising_figure(points)
    tracked = data.get("track", {}).get("tasks", {})
    if tracked:
        figs["track"] = _track_figure(tracked)
    return figs


COLORS = {"ar": "#1f77b4", "mdm": "#d62728"}


def _layers_figure(data: Mapping[str, Any], tasks: Sequence[str]) -> Any:
    """Stacked bars: each model's share of the top-K nodes' score per layer, per task."""
    import plotly.graph_objects as go

    fig = go.Figure()
    n_layers = data["shape"]["n_layers"]
    for m in ("ar", "mdm"):
        key = "a" if m == "ar" else "b"
        for layer in range(n_layers):
            mass = [data["tasks"][t]["depth"]["compare"][key]["mass"] for t in tasks]
            fig.add_trace(
                go.Bar(
                    x=tasks,
                    y=[per_layer[layer] or 0.0 for per_layer in mass],
                    name=f"{m.upper()} L{layer}",
                    offsetgroup=m,
                    marker={"color": COLORS[m], "opacity": 1 - 0.8 * layer / max(1, n_layers)},
                    base=[sum(v or 0.0 for v in per_layer[:layer]) for per_layer in mass],
                )
            )
    fig.update_layout(
        title=f"Share of the top-{data['options']['k_nodes']} nodes' score per layer (left bar ARM, right bar MDM)",
        yaxis_title="mass",
        height=450,
        width=max(700, 160 * len(tasks)),
    )
    return fig


def _lens_figure(data: Mapping[str, Any], tasks: Sequence[str]) -> Any:
    """One panel per task: the share of examples whose answer the logit lens ranks first, by layer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True)
    for i, t in enumerate(tasks, start=1):
        for m in ("ar", "mdm"):
            lens = data["tasks"][t]["depth"][m]["lens"]
            trace = go.Scatter(
                x=list(range(len(lens["top1"]))),
                y=lens["top1"],
                name=m.upper(),
                line={"color": COLORS[m]},
                showlegend=i == 1,
            )
            fig.add_trace(trace, row=1, col=i)
    fig.update_yaxes(title_text="answer ranked first (share)", row=1, col=1)
    fig.update_xaxes(title_text="layer (0 = embedding)")
    fig.update_layout(title="Logit lens at the read position", height=380, width=max(700, 260 * len(tasks)))
    return fig


def _denoising_figure(points: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """The MDM's circuit along the denoising trajectory: Jaccard with t = 1 and the ARM, early mass."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["Jaccard with the t = 1 circuit / with the ARM", "early-layer mass"]
    )
    for t, pts in points.items():
        ts = [p["t"] for p in pts]
        lines = [
            (1, "jaccard_t1", f"{t}: vs t=1", None),
            (1, "jaccard_ar", f"{t}: vs ARM", {"dash": "dot"}),
            (2, "early_mass", f"{t}: early mass", None),
        ]
        for col, key, name, line in lines:
            trace = go.Scatter(x=ts, y=[p[key] for p in pts], name=name, mode="lines+markers", line=line)
            fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="t (share of the answer still masked)", autorange="reversed")
    fig.update_layout(title="MDM circuit along the denoising trajectory", height=420, width=1100)
    return fig


def _track_figure(tracked: Mapping[str, Mapping[str, Any]]) -> Any:
    """Accuracy, Jaccard with the ARM and early mass across a conversion run's snapshots."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    titles = ["accuracy (LD>0) on the ARM's correct examples", "Jaccard with the ARM", "early-layer mass"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles)
    for t, d in tracked.items():
        steps = [p["step"] for p in d["points"]]
        for col, key in enumerate(("accuracy", "jaccard_ar", "early_mass"), start=1):
            trace = go.Scatter(
                x=steps,
                y=[p[key] for p in d["points"]],
                name=t,
                legendgroup=t,
                showlegend=col == 1,
                mode="lines+markers",
            )
            fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title_text="conversion step")
    fig.update_layout(title="Across the conversion run's snapshots", height=400, width=1300)
    return fig


def table_html(rows: Sequence[Mapping[str, str]]) -> str:
    import html

    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(
    data: Mapping[str, Any],
    *,
    title: str = "ARM vs MDM",
    extra_figures: Mapping[str, Any] | None = None,
    sections: Sequence[str] = (),
    plotlyjs: bool | str = True,
) -> str:
    """One HTML page: claims, summary table, figures. plotlyjs: True embeds plotly.js once (a
    self-contained page, ~4.5 MB); "cdn" links it (small pages for a repository)."""
    import html

    figs = {**figures(data), **(extra_figures or {})}
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>ARM: <code>{html.escape(str(data['models']['ar']))}</code>, MDM: <code>{html.escape(str(data['models']['mdm']))}</code>; "
        f"{data['shape']['n_layers']} layers, {data['shape']['edges']} edges; K = {data['options']['k_edges']} edges, "
        f"{data['options']['k_nodes']} nodes; EAP-IG m = {data['options']['steps']}; 95% bootstrap intervals "
        f"({data['options']['n_boot']} resamples).</p>",
        *(
            f"<p>{role.upper()} from the hub: <code>{html.escape(h['repo_id'])}</code> at commit "
            f"<code>{html.escape(h['revision'])}</code></p>"
            for role, h in data.get("hub", {}).items()
        ),
        *(f"<p style='color:#b00'><b>Warning:</b> {html.escape(w)}</p>" for w in data.get("warnings", [])),
        *sections,
        "<h2>Claims of the reference study</h2>",
    ]
    parts.append(table_html(claim_rows(data)))
    if data.get("method_dependence"):
        parts += [f"<p>{html.escape(METHODS_CAPTION)}</p>", table_html(dependence_rows(data["method_dependence"]))]
    parts += [
        "<h2>Per task (common-correct pool)</h2>",
        f"<p>{html.escape(pool_caption(data))}</p>",
        table_html(summary_rows(data)),
    ]
    if any(e.get("controls") for e in data["tasks"].values()):
        parts += ["<h2>Controls per task</h2>", table_html(controls_rows(data))]
    if data.get("routing"):
        c = data["routing"]["claim"]
        parts += [
            "<h2>Routing (mixture of experts)</h2>",
            f"<p>{html.escape(c['claim'])}: <b>{html.escape(stored_verdict(c))}</b>"
            + (" (seed floor: missing)" if c["seed_floor_missing"] and not is_unfloored(stored_verdict(c)) else "")
            + "</p>",
            table_html(routing_rows(data["routing"])),
        ]
        figs["Routing: entropy and expert overlap"] = routing_figure(data["routing"])
    first = True
    for name, fig in figs.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs if first else False))
        first = False
    return page_html(title, parts)


PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}code{background:#f4f4f4}"
)


def page_html(title: str, parts: Sequence[str]) -> str:
    """A whole HTML page around `parts` (HTML fragments), in the reports' one style."""
    import html

    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_report(
    result: CompareResult, out: str | Path, *, title: str = "ARM vs MDM", plotlyjs: bool | str = True
) -> Path:
    """report.json (every number), report.html (self-contained), summary.md and one graph JSON per
    task and model (graphs/TASK-ar.json, loadable with `Graph.load`) under `out`."""
    out = Path(out)
    (out / "graphs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(result.data, indent=1, allow_nan=False))
    atomic_write_text(out / "report.html", report_html(result.data, title=title, plotlyjs=plotlyjs))
    atomic_write_text(out / "summary.md", markdown_summary(result.data) + "\n")
    for task, graphs in result.graphs.items():
        for m, g in graphs.items():
            g.save(out / "graphs" / f"{task}-{m}.json")
    return out
