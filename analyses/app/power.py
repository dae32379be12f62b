"""The study's pool choice (`ar2mdm study --power`): how many examples per task resolve the ARM vs
MDM Jaccard of every task to +/-`POWER_HALF_WIDTH` (the organism), or claim (a) -- local minus
global tasks' Jaccard -- to +/-`CLAIM_A_HALF_WIDTH` (SmolLM2, whose passes cost 80x more), and
whether a comparison on that pool fits the time left.

The pool comes from the pilot comparison's bootstrap intervals (`analyses.statistics.
pool_for_width`: an interval shrinks as 1 / sqrt(n); claim (a)'s pooled interval too, every
task's pool growing alike); the time from the pilot's, scaled linearly in the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analyses.statistics import Interval, pool_for_width

POWER_HALF_WIDTH = 0.03  # the Jaccard interval half width `power` sizes the pool for
CLAIM_A_HALF_WIDTH = 0.05  # claim (a)'s interval half width, the SmolLM2 study's target (issue 16)
MAX_POOL = 1000  # the largest pool `power` asks for (examples per task)


def needed_pool(
    report: Mapping[str, Any], half_width: float | None = POWER_HALF_WIDTH, claim_half_width: float | None = None
) -> dict[str, int | None]:
    """From a comparison's report.json: per task, the pool for a Jaccard interval of
    +/-half_width (skipped when None), and with `claim_half_width` under "claim (a)" the pool
    for claim (a)'s interval (scaled from the largest task pool of the pilot). None where an
    interval is missing or a point."""
    out: dict[str, int | None] = {}
    if half_width is not None:
        for task, entry in report["tasks"].items():
            j = entry["circuits"]["jaccard"]
            ok = j.get("low") is not None and j.get("high") is not None
            out[task] = (
                pool_for_width(entry["n"], Interval(j["estimate"], j["low"], j["high"]), half_width) if ok else None
            )
    if claim_half_width is not None:
        iv = (report.get("claims", {}).get("a") or {}).get("interval")
        n = max((entry["n"] for entry in report["tasks"].values()), default=0)
        ok = iv is not None and n > 0
        out["claim (a)"] = (
            pool_for_width(n, Interval(iv["estimate"], iv["low"], iv["high"]), claim_half_width) if ok else None
        )
    return out


def plan_power(
    needed: Mapping[str, int | None], pilot_pool: int, pilot_seconds: float, seconds_left: float
) -> dict[str, Any]:
    """Whether to rerun the comparison on a larger pool: the largest pool a task needs (capped at
    MAX_POOL), the time that would take (the pilot's, scaled linearly in the pool) and the verdict.

    >>> plan_power({"ioi": 400, "sudoku": None}, 100, 60.0, 600.0)["run"]
    True
    >>> plan_power({"ioi": 400}, 100, 60.0, 100.0)["reason"]
    'needs ~4.0 min, 1.7 min left of the budget'
    """
    wanted = [n for n in needed.values() if n is not None]
    pool = min(MAX_POOL, max(wanted)) if wanted else pilot_pool
    estimate = pilot_seconds * pool / pilot_pool
    plan = {
        "needed": dict(needed),
        "pool": pool,
        "pilot_pool": pilot_pool,
        "estimated_minutes": round(estimate / 60, 1),
    }
    if pool <= pilot_pool:
        return {**plan, "run": False, "reason": f"the pilot pool ({pilot_pool}) already resolves the target"}
    if estimate > seconds_left:
        return {
            **plan,
            "run": False,
            "reason": f"needs ~{estimate / 60:.1f} min, {max(seconds_left, 0) / 60:.1f} min left of the budget",
        }
    return {**plan, "run": True, "reason": f"fits: ~{estimate / 60:.1f} of {seconds_left / 60:.1f} min left"}
