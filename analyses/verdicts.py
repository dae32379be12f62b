"""The words a claim's verdict is given in, and how readers tell them apart.

`analyses.statistics.verdict` reads an interval as one of:

- "holds": the interval excludes 0 on the claimed side (and clears the seed floor, when one was
  measured); "reversed": it excludes 0 on the other side (likewise);
- "within the seed floor": it excludes 0, but not the effect two models trained alike with another
  seed already show; "within the null pairs' noise" (the routing claim, whose null pairs, two
  halves of one model's pool, bound it too): it does not clear what sampling alone moves;
- "no difference": it lies inside the equivalence margin; "inconclusive": anything else;
  "untested": no interval.

A claim read without a seed floor (no ARM' / MDM' was given) was never tested against what
training with another seed alone changes: on the study's organism, effects of the same kind are
"within the seed floor" once the floor is measured. Its "holds" and "reversed" carry that in the
verdict itself (`unfloored`): "holds (no seed floor: not tested against training-seed noise)".
Code that branches on a verdict reads its kind (`verdict_kind`), which is the same for both.

Nothing here imports torch: scripts that read stored summaries use it too (`stored_verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HOLDS = "holds"
REVERSED = "reversed"
INCONCLUSIVE = "inconclusive"
UNTESTED = "untested"
NO_DIFFERENCE = "no difference"
WITHIN_FLOOR = "within the seed floor"
WITHIN_NULL = "within the null pairs' noise"
KINDS = (HOLDS, REVERSED, WITHIN_FLOOR, WITHIN_NULL, NO_DIFFERENCE, INCONCLUSIVE, UNTESTED)

NO_FLOOR = "no seed floor: not tested against training-seed noise"


def unfloored(verdict: str) -> str:
    """A verdict read without a seed floor: "holds" and "reversed" say so in the verdict itself
    ("holds (no seed floor: ...)"); the others are the same with a floor or without one (a floor
    only turns "holds" / "reversed" into "within the seed floor")."""
    return f"{verdict} ({NO_FLOOR})" if verdict in (HOLDS, REVERSED) else verdict


def verdict_kind(verdict: str) -> str:
    """The kind of a verdict string (one of `KINDS`): "holds (no seed floor: ...)" -> "holds".
    For code that branches on a verdict, old (plain) and new strings alike."""
    kind = verdict.split(" (", 1)[0]
    if kind not in KINDS:
        raise ValueError(f"not a verdict: {verdict!r} (verdicts are {', '.join(KINDS)}).")
    return kind


def is_unfloored(verdict: str) -> bool:
    """Whether a verdict string says it was read without a seed floor."""
    return verdict.endswith(f"({NO_FLOOR})")


def stored_verdict(claim: Mapping[str, Any]) -> str:
    """The verdict of a stored claim (report.json or a study's summary.json, of any ar2mdm version)
    in today's words: files written before verdicts named a missing floor hold a plain "holds" /
    "reversed" for claims read without one. A claim was read without a seed floor when it has no
    floor bound ("floor_bound" None or absent: absent in files older than the seed floor) or, for
    the routing claim, says "seed_floor_missing"."""
    text = str(claim["verdict"])
    if is_unfloored(text):
        return text
    if "seed_floor_missing" in claim:
        missing = bool(claim["seed_floor_missing"])
    else:
        missing = claim.get("floor_bound") is None
    return unfloored(text) if missing else text
