"""One ARM against several of its MDMs (e.g. block-diffusion conversions at block sizes 1, 4, 16
and fully bidirectional): how the circuits move away from the ARM's as the attention widens.

`compare_series(ar, {"block 4": mdm4, "full": mdm}, options)` runs `compare(ar, mdm, options)`
for every MDM and collects, per task and MDM, the numbers the series is about:

- `jaccard`: the Jaccard overlap of the top-K edges with the ARM's (estimate, low, high: a 95%
  bootstrap interval, as in `compare`);
- `early_mass_mdm` / `early_mass_ar`: the share of the top-K nodes' score in the first third of
  the layers, of the MDM and of the ARM (each pair has its own pool, so the ARM's value can move);
- `early_mass_diff`: the paired MDM - ARM difference of early mass (estimate, low, high);
- `accuracy_mdm`: the MDM's accuracy on the task's candidate examples under the pool's criterion
  (pool stats `accuracy_mdm`), and `accuracy_mdm_ld` / `accuracy_mdm_top1` under each criterion
  (LD > 0: answer preferred to the counterfactual; top-1: the answer is its most likely token);
- `pool`: the size of the pair's common-correct pool (both models correct by the criterion);
- `block_size`: the MDM's block size (`mdm.config.block_size`; None = fully bidirectional,
  shown as "full").

`trend` (in data["trend"]): per task, Kendall's tau between the MDMs' place in the series and
their Jaccard estimate (negative: the circuits drift from the ARM's as blocks grow) with its exact (asymptotic when estimates tie)
two-sided p-value (with four MDMs the smallest possible is 1/12, so one task alone never
establishes a trend), and across tasks a two-sided sign test on the taus' signs. With `floor`
(task -> the ARM vs ARM' Jaccard interval, the seed floor of `compare`'s controls) the Jaccard
table gets a column for it: MDMs whose Jaccard lies inside the floor differ from the ARM no more
than a second ARM trained alike does.

Every MDM sees the same candidate examples (drawn once, from the first MDM's tokenizer, unless
`examples` is given); the common-correct pool is still the pair's own. `write_series` writes
series.json, series.md, series.html and each MDM's full `compare` report under out/<slug>/.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from analyses.compare.pool import check_pair, criterion_label, task_examples
from analyses.compare.report import (
    CompareResult,
    format_interval,
    format_number,
    json_safe,
    md_table,
    page_html,
    table_html,
    write_report,
)
from analyses.compare.run import CompareOptions, compare, top_ks
from analyses.graph import Graph
from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import atomic_write_text
from ar2mdm.tasks import Example
from probe.model import ProbedModel

Order = Literal["block_size", "given"]

# quantity key -> (title, how one cell is shown)
QUANTITIES: dict[str, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    "jaccard": ("Jaccard@K with the ARM (95% CI)", lambda e: format_interval(e["jaccard"])),
    "early_mass_mdm": ("Early-layer mass of the MDM", lambda e: format_number(e["early_mass_mdm"])),
    "early_mass_ar": ("Early-layer mass of the ARM (on the pair's pool)", lambda e: format_number(e["early_mass_ar"])),
    "early_mass_diff": ("Early-layer mass MDM - ARM (95% CI)", lambda e: format_interval(e["early_mass_diff"])),
    "accuracy_mdm_ld": (
        "MDM accuracy (LD>0: answer preferred to the counterfactual, a forced choice)",
        lambda e: format_number(e.get("accuracy_mdm_ld")),
    ),
    "accuracy_mdm_top1": (
        "MDM accuracy (top-1: the answer is its most likely token)",
        lambda e: format_number(e.get("accuracy_mdm_top1")),
    ),
    "pool": ("Common-correct pool", lambda e: str(e["pool"])),
}


def quantity_title(q: str, data: Mapping[str, Any]) -> str:
    """A quantity's title; the pool's names its criterion ("both models correct by LD>0")."""
    title = QUANTITIES[q][0]
    if q == "pool":
        options = data.get("options", {})
        if options.get("common_correct", True):
            return f"{title} (both models correct by {criterion_label(options.get('pool_criterion'))})"
        return f"{title} (every aligned example)"
    return title


@dataclass
class SeriesResult:
    """`data`: JSON-able series (see `compare_series`); `results`: each MDM's own CompareResult,
    by label, in the series' order."""

    data: dict[str, Any]
    results: dict[str, CompareResult] = field(default_factory=dict)


def block_label(block_size: int | None) -> str:
    """'full' for a fully bidirectional MDM, else the block size as text."""
    return "full" if block_size is None else str(block_size)


def compare_series(
    ar: ProbedModel,
    mdms: Mapping[str, ProbedModel],
    options: CompareOptions | None = None,
    *,
    examples: Mapping[str, Sequence[Example]] | None = None,
    order: Order = "block_size",
    floor: Mapping[str, Mapping[str, Any]] | None = None,
    log: Callable[[str], None] = print,
) -> SeriesResult:
    """Compare the ARM with every MDM of `mdms` (label -> model; at least two) under one set of
    options. order: "block_size" (default) sorts the MDMs by block size, smallest first, fully
    bidirectional ones (block size None) last, MDMs of equal block size in the caller's order;
    "given" keeps the mapping's order. examples: candidate examples per task (default: drawn
    once with `task_examples` from the first MDM and shared by all).

    Returns a SeriesResult whose data holds "ar" (its source), "order" (labels), "mdms" (label ->
    {"block_size", "block"}), "options" (the checked options, as `compare` records them) and
    "tasks": task -> label -> {"jaccard": interval dict | None, "early_mass_mdm",
    "early_mass_ar": float | None (shares in [0, 1]), "early_mass_diff": interval dict | None,
    "accuracy_mdm", "accuracy_mdm_ld", "accuracy_mdm_top1": float | None, "pool": int,
    "block_size": int | None}; the None values mark a
    task whose pool was too small for that pair (it was not analysed).

    Raises UserError for fewer than two MDMs, one model given under two labels, an unknown order
    or bad options (a K above the graph's size among them, `top_ks`); CheckpointError
    (from `check_pair`, before anything runs) for an MDM that cannot be compared with the ARM (not
    an MDM, another architecture, another tokenizer); and whatever `compare` raises (UserError
    when no task has a pool for a pair)."""
    if len(mdms) < 2:
        raise UserError(f"a series needs at least two MDMs, got {len(mdms)}; compare one MDM with `ar2mdm compare`.")
    if order not in ("block_size", "given"):
        raise UserError(f"order must be 'block_size' or 'given', got {order!r}.")
    opts = (options or CompareOptions()).checked()
    seen: dict[int, str] = {}
    for label, mdm in mdms.items():
        if id(mdm) in seen:
            raise UserError(
                f"MDMs {seen[id(mdm)]!r} and {label!r} are one model object; a series compares different MDMs."
            )
        seen[id(mdm)] = label
    for mdm in mdms.values():
        check_pair(ar, mdm)  # fail before the first (long) comparison; compare logs the warnings
    top_ks(opts, Graph(ar.shape))  # a K above the graph's size, before the first comparison too
    labels = list(mdms)
    if order == "block_size":
        labels.sort(key=lambda k: (mdms[k].config.block_size is None, mdms[k].config.block_size or 0))
    if examples is None:
        examples = task_examples(mdms[labels[0]], opts.tasks, opts.draw or 2 * opts.pool_size, opts.seed)
    ar_name = str(getattr(ar.meta, "source", "ar"))
    results: dict[str, CompareResult] = {}
    for label in labels:
        log(f"series: ARM vs {label} (block size {block_label(mdms[label].config.block_size)})")
        results[label] = compare(
            ar, mdms[label], opts, labels={"ar": ar_name, "mdm": label}, examples=examples, log=log
        )
    data: dict[str, Any] = {
        "ar": ar_name,
        "order": labels,
        "order_by": order,
        "mdms": {
            k: {"block_size": mdms[k].config.block_size, "block": block_label(mdms[k].config.block_size)}
            for k in labels
        },
        "options": results[labels[0]].data["options"],
        "tasks": {t: {k: _entry(results[k].data, t, mdms[k].config.block_size) for k in labels} for t in opts.tasks},
        "floor": {t: dict(v) for t, v in (floor or {}).items()},
    }
    data["trend"] = trend(data)
    return SeriesResult(json_safe(data), results)


def trend(data: Mapping[str, Any]) -> dict[str, Any]:
    """Kendall's tau of Jaccard against the place in the series, per task (None with fewer than
    three defined points), and the sign test across tasks (see the module docstring)."""
    from scipy.stats import binomtest, kendalltau

    tasks: dict[str, Any] = {}
    for task, per in data["tasks"].items():
        points = [
            (i, per[k]["jaccard"]["estimate"])
            for i, k in enumerate(data["order"])
            if per[k]["jaccard"] and per[k]["jaccard"].get("estimate") is not None
        ]
        if len(points) < 3 or len({y for _, y in points}) < 2:
            tasks[task] = None
            continue
        res = kendalltau([x for x, _ in points], [y for _, y in points], method="auto")  # exact unless ties
        tasks[task] = {"kendall_tau": float(res.statistic), "p": float(res.pvalue), "points": len(points)}
    taus = [v["kendall_tau"] for v in tasks.values() if v is not None and v["kendall_tau"] != 0]
    negative = sum(t < 0 for t in taus)
    pooled = {
        "negative": negative,
        "of": len(taus),
        "sign_test_p": float(binomtest(negative, len(taus), 0.5).pvalue) if taus else None,
    }
    return {"tasks": tasks, "pooled": pooled}


def _entry(data: Mapping[str, Any], task: str, block_size: int | None) -> dict[str, Any]:
    """One task of one comparison's report data, reduced to the series' numbers."""
    pool = data["pools"].get(task, {})
    entry = data["tasks"].get(task)
    cmp = entry["depth"]["compare"] if entry else None
    return {
        "jaccard": entry["circuits"]["jaccard"] if entry else None,
        "early_mass_mdm": cmp["b"]["early_mass"] if cmp else None,
        "early_mass_ar": cmp["a"]["early_mass"] if cmp else None,
        "early_mass_diff": cmp["early_mass_diff"] if cmp else None,
        "accuracy_mdm": pool.get("accuracy_mdm"),
        "accuracy_mdm_ld": pool.get("accuracy_mdm_ld"),
        "accuracy_mdm_top1": pool.get("accuracy_mdm_top1"),
        "pool": pool.get("pool", 0),
        "block_size": block_size,
    }


def series_tables(data: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """quantity key -> rows (one per task: "task", then one column per MDM label, in order; the
    Jaccard rows end with the seed floor and the trend where the data has them)."""
    tables = {
        q: [{"task": t, **{k: show(per[k]) for k in data["order"]}} for t, per in data["tasks"].items()]
        for q, (_, show) in QUANTITIES.items()
    }
    floor = data.get("floor") or {}
    trends = (data.get("trend") or {}).get("tasks", {})
    for row in tables["jaccard"]:
        if floor:
            row["ARM vs ARM' (seed floor)"] = format_interval(floor.get(row["task"]))
        if trends:
            t = trends.get(row["task"])
            row["Kendall tau (p)"] = "-" if t is None else f"{t['kendall_tau']:.2f} ({t['p']:.2f})"
    return tables


def _header(data: Mapping[str, Any]) -> str:
    mdms = ", ".join(f"{k} (block size {data['mdms'][k]['block']})" for k in data["order"])
    o = data["options"]
    return (
        f"ARM {data['ar']} against {len(data['order'])} MDMs: {mdms}. K = {o['k_edges']} edges, "
        f"{o['k_nodes']} nodes; {o['method']} m = {o['steps']}; 95% bootstrap intervals ({o['n_boot']} resamples)."
    )


def series_markdown(data: Mapping[str, Any]) -> str:
    """One Markdown table per quantity: rows tasks, columns the MDMs in the series' order."""
    lines = [_header(data), ""]
    pooled = (data.get("trend") or {}).get("pooled")
    if pooled and pooled["of"]:
        lines += [
            f"Trend: Jaccard with the ARM falls along the series on {pooled['negative']} of {pooled['of']} tasks "
            f"(sign test p = {pooled['sign_test_p']:.3f}).",
            "",
        ]
    for q, rows in series_tables(data).items():
        lines += [f"### {quantity_title(q, data)}", "", *md_table(rows), ""]
    return "\n".join(lines)


def series_figures(data: Mapping[str, Any]) -> dict[str, Any]:
    """One plotly figure per quantity: x = the MDMs' block sizes as categories (so 1, 4, 16, full
    are evenly spaced, a log-like axis; the labels when block sizes repeat), one line per task,
    error bars for the intervals."""
    import plotly.graph_objects as go

    order = data["order"]
    blocks = [data["mdms"][k]["block"] for k in order]
    x = blocks if len(set(blocks)) == len(blocks) else order
    figs = {}
    for q in QUANTITIES:
        title = quantity_title(q, data)
        fig = go.Figure()
        for task, per in data["tasks"].items():
            values = [per[k].get(q) for k in order]
            intervals = all(isinstance(v, dict) or v is None for v in values)
            y = [v.get("estimate") if isinstance(v, dict) else v for v in values]
            error = None
            if intervals:
                hi = [v["high"] - v["estimate"] if v and v.get("high") is not None else None for v in values]
                lo = [v["estimate"] - v["low"] if v and v.get("low") is not None else None for v in values]
                error = {"type": "data", "array": hi, "arrayminus": lo, "visible": True}
            fig.add_trace(go.Scatter(x=x, y=y, name=task, mode="lines+markers", error_y=error))
        fig.update_xaxes(title_text="block size" if x is blocks else "MDM", type="category")
        fig.update_layout(title=title, yaxis_title=q, height=400, width=800)
        figs[q] = fig
    return figs


def series_html(data: Mapping[str, Any], *, plotlyjs: bool | str = True) -> str:
    """One page: the tables and the figures; plotlyjs as in `report_html`."""
    parts = ["<h1>ARM vs a series of MDMs</h1>", f"<p>{html.escape(_header(data))}</p>"]
    figs = series_figures(data)
    for i, (q, rows) in enumerate(series_tables(data).items()):
        parts += [f"<h2>{html.escape(quantity_title(q, data))}</h2>", table_html(rows)]
        parts.append(figs[q].to_html(full_html=False, include_plotlyjs=plotlyjs if i == 0 else False))
    return page_html("ARM vs MDMs", parts)


def slug(label: str) -> str:
    """A folder name for an MDM label: runs of other characters than [A-Za-z0-9._-] become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "mdm"


def write_series(result: SeriesResult, out: str | Path, *, plotlyjs: bool | str = True) -> Path:
    """series.json, series.md and series.html under `out` (each written atomically), and each
    MDM's own report (`write_report`) under out/<slug of its label>/ (a number appended when two
    labels give the same slug). Returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders: dict[str, str] = {}
    for label in result.data["order"]:
        name, i = slug(label), 2
        while name in folders.values():
            name, i = f"{slug(label)}-{i}", i + 1
        folders[label] = name
        write_report(result.results[label], out / name, title=f"{result.data['ar']} vs {label}")
    data = {**result.data, "folders": folders}
    atomic_write_text(out / "series.json", json.dumps(data, indent=1, allow_nan=False))
    atomic_write_text(out / "series.md", series_markdown(data) + "\n")
    atomic_write_text(out / "series.html", series_html(data, plotlyjs=plotlyjs))
    return out
