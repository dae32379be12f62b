"""One comparison under several attribution methods: which claim verdicts depend on the method.

`ar2mdm compare --methods a,b` runs the whole comparison once per method
(`analyses.compare.run.compare_methods`) and `method_dependence` reads the claims side by side. A verdict
is *method-dependent* when two methods validated on ground truth (`VALIDATED`: an edge and node
ROC AUC of at least 0.95 on the four original ground-truth models, `analyses.validation.scoring.
TARGETS`) give it different kinds (`analyses.verdicts.verdict_kind`: "holds" and "holds (no seed
floor: ...)" are one kind). `mark` writes that into the first method's claims, whose report is
the main one: its verdict then ends in "(method-dependent: ...)" with every method's reading.
Methods without that validation (EAP, RelP, EAP-GP) are shown beside them and never make a
verdict method-dependent on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analyses.verdicts import verdict_kind

# the methods with a uniform ground-truth target (`analyses.validation.scoring.TARGETS`; a test
# keeps the two equal: analyses.validation imports this package, so it is not read from there)
VALIDATED = frozenset({"exact", "gim", "eap-ig-inputs", "eap-ig-activations"})


def method_dependence(claims_by_method: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """{claim key: {"verdicts": {method: verdict}, "dependent": bool, "validated": [methods]}} from
    {method: report claims} (each a `data["claims"]` of one compare run). dependent: two
    validated methods give the claim different verdict kinds."""
    methods = list(claims_by_method)
    keys = list(next(iter(claims_by_method.values()))) if methods else []
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        verdicts = {m: claims_by_method[m][key]["verdict"] for m in methods}
        validated = [m for m in methods if m in VALIDATED]
        kinds = {verdict_kind(verdicts[m]) for m in validated}
        out[key] = {"verdicts": verdicts, "dependent": len(kinds) > 1, "validated": validated}
    return out


def mark(claims: dict[str, dict[str, Any]], dependence: Mapping[str, Mapping[str, Any]]) -> None:
    """Append "(method-dependent: m1 kind1; m2 kind2 ...)" to each dependent claim's verdict, in place."""
    for key, d in dependence.items():
        if d["dependent"] and key in claims:
            readings = "; ".join(f"{m} {verdict_kind(v)}" for m, v in d["verdicts"].items())
            claims[key]["verdict"] = f"{claims[key]['verdict']} (method-dependent: {readings})"
            claims[key]["method_dependent"] = True


def dependence_rows(dependence: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Table rows: claim, each method's verdict (a validated method marked *), method-dependent."""
    rows = []
    for key, d in dependence.items():
        row = {"claim": f"({key})"}
        for m, v in d["verdicts"].items():
            row[m + ("*" if m in d["validated"] else "")] = v
        row["method-dependent"] = "yes" if d["dependent"] else "no"
        rows.append(row)
    return rows
