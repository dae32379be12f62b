"""ARM vs MDM, all analyses on one common-correct pool, and the reference study's claims tested.

- `run`: `compare(ar, mdm, CompareOptions(...))`, the whole comparison (see its docstring);
- `pool`: the pair check and the common-correct pool;
- `claims`: claims (a)-(c) with pooled intervals and verdicts;
- `trajectory`: the MDM's denoising trajectory, and `track` across a conversion's snapshots;
- `report`: `CompareResult`, `write_report` (report.json, report.html, summary.md, graphs/).

Everything is importable from `analyses.compare` itself:

    >>> result = compare(pm_ar, pm_mdm, CompareOptions(tasks=("ioi", "countdown")))   # doctest: +SKIP
    >>> write_report(result, "out/compare")                                              # doctest: +SKIP
"""

from analyses.compare.claims import claims, default_k_edges, default_k_nodes, node_examples
from analyses.compare.pool import MIN_POOL, Pool, check_pair, common_pool, rendered_for, task_examples
from analyses.compare.report import (
    CompareResult,
    figures,
    format_interval,
    json_safe,
    markdown_summary,
    md_table,
    report_html,
    summary_rows,
    table_html,
    write_report,
)
from analyses.compare.run import CompareOptions, NodeScores, compare
from analyses.compare.series import SeriesResult, compare_series, write_series
from analyses.compare.trajectory import denoising_trajectory, revealed, snapshots_of, track

__all__ = [
    "MIN_POOL",
    "CompareOptions",
    "CompareResult",
    "NodeScores",
    "Pool",
    "SeriesResult",
    "check_pair",
    "claims",
    "common_pool",
    "compare",
    "compare_series",
    "default_k_edges",
    "default_k_nodes",
    "denoising_trajectory",
    "figures",
    "format_interval",
    "json_safe",
    "markdown_summary",
    "md_table",
    "node_examples",
    "rendered_for",
    "report_html",
    "revealed",
    "snapshots_of",
    "summary_rows",
    "table_html",
    "task_examples",
    "track",
    "write_report",
    "write_series",
]
