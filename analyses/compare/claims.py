"""The reference study's three claims, each with an effect size, a pooled interval and a verdict.

(a) edge overlap is higher on local tasks than on global ones:
    mean Jaccard(local) - mean Jaccard(global) > 0;
(b) the MDM puts more of its top-K node mass in the first third of the layers than the ARM on
    global tasks: mean over global tasks of early mass (MDM - AR) > 0;
(c) MDM units are less specialised: median selectivity index over MLP neurons (MDM - AR) < 0.

Intervals pool each task's bootstrap replicates (tasks resampled independently, examples within
a task); `analyses.statistics.verdict` reads "holds", "reversed", "inconclusive" or "untested".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.compare.pool import Pool
from analyses.graph import Graph
from analyses.statistics import Interval, pooled, verdict
from common.errors import UserError
from tasks import TASKS


def default_k_edges(n_edges: int) -> int:
    return min(n_edges, max(10, min(1000, n_edges // 10)))


def default_k_nodes(n_nodes: int) -> int:
    return min(n_nodes, max(3, round(n_nodes / 5)))


def node_examples(graph: Graph) -> dict[str, Float[Tensor, " examples"]]:
    """Per-example node scores (sum of each sender's outgoing edges) from `graph.examples`."""
    if graph.examples is None:
        raise UserError("node_examples needs per-example scores: attribute(..., per_example=True).")
    index = {s: i for i, s in enumerate(graph.senders)}
    cols = torch.tensor([index[s] for s, _ in graph.pairs])
    nodes = torch.zeros(graph.examples.shape[0], len(graph.senders), dtype=torch.float64)
    nodes.index_add_(1, cols, graph.examples.double())
    return {s: nodes[:, i] for s, i in index.items() if s != "embed"}


def claims(
    pools: Mapping[str, Pool | None],
    jaccard_reps: Mapping[str, Float[Tensor, " boot"]],
    depth_reps: Mapping[str, Float[Tensor, " boot"]],
    data: Mapping[str, Any],
    selectivity: Interval | None,
) -> dict[str, Any]:
    """The three claims with effect sizes, intervals and verdicts."""
    local = [t for t in pools if TASKS[t].kind == "local"]
    glob = [t for t in pools if TASKS[t].kind == "global"]
    out: dict[str, Any] = {}

    def jac(t: str) -> float:
        return data["tasks"][t]["circuits"]["jaccard"].estimate

    a = None
    if local and glob:
        a = pooled(
            [jac(t) for t in local + glob],
            [jaccard_reps[t] for t in local + glob],
            [1 / len(local)] * len(local) + [-1 / len(glob)] * len(glob),
        )
    out["a"] = {
        "claim": "edge overlap (Jaccard of top-K edges, ARM vs MDM) is higher on local than on global tasks",
        "effect": "mean Jaccard over local tasks - mean over global tasks",
        "interval": a,
        "verdict": verdict(a, 1),
        "local_tasks": local,
        "global_tasks": glob,
        "per_task": {t: data["tasks"][t]["circuits"]["jaccard"] for t in pools},
    }
    b = None
    if glob:
        b = pooled(
            [data["tasks"][t]["depth"]["compare"]["early_mass_diff"]["estimate"] for t in glob],
            [depth_reps[t] for t in glob],
            [1 / len(glob)] * len(glob),
        )
    out["b"] = {
        "claim": "the MDM has more early-layer (first third) mass among its top-K nodes than the ARM on global tasks",
        "effect": "mean over global tasks of early mass (MDM - ARM)",
        "interval": b,
        "verdict": verdict(b, 1),
        "global_tasks": glob,
        "per_task": {t: data["tasks"][t]["depth"]["compare"]["early_mass_diff"] for t in pools},
    }
    out["c"] = {
        "claim": "MDM units are less specialised than the ARM's (single-component specialisation is weaker)",
        "effect": "median selectivity index over MLP neurons across tasks (MDM - ARM)",
        "interval": selectivity,
        "verdict": verdict(selectivity, -1),
        "supporting": (
            {k: data["units"]["neurons"]["compare"][k]["diff"] for k in ("median_entropy",)}
            if "neurons" in data["units"]
            else {}
        ),
    }
    return out
