"""What a compare report's words mean: the pool's "correct" (LD > 0 or top-1) against hand-built
logits, and verdicts read without a seed floor, which must say so in the verdict itself.

Models: the ARM and MDM below return logits set by hand per example (the tiny tokenizer's
rendering and reading rules from test_depth's 3-layer pair), so which examples each criterion
counts correct is known before any code runs: the four cases disagree on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer
from test_compare import stats
from test_depth import MASK_ID, probed3
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.compare import CompareOptions, claims, common_pool, markdown_summary, report_html, summary_rows
from analyses.compare.pool import read_answers, rendered_for
from analyses.compare.routing import routing_claim
from analyses.statistics import Interval
from analyses.verdicts import NO_FLOOR, stored_verdict, unfloored, verdict_kind
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import get_task

UNFLOORED_HOLDS = "holds (no seed floor: not tested against training-seed noise)"

# case -> what the logits at the read position say (c: the answer, k: the counterfactual, x: a
# third token, m: the mask token), and whether LD > 0 / top-1 (for an MDM: the mask left out)
CASES = {
    "top": ({"c": 3.0}, True, True),  # the answer tops everything
    "forced": ({"c": 2.0, "k": 1.0, "x": 5.0}, True, False),  # answer over counterfactual, a third token on top
    "wrong": ({"k": 3.0}, False, False),
    "mask": ({"c": 3.0, "m": 9.0}, True, None),  # top-1 for an MDM (its mask never counts), not for an ARM
}
AR_PLAN = ["top", "top", "top", "mask"]  # by example index mod 4
MDM_PLAN = ["top", "forced", "wrong", "mask"]


class HandLogits:
    """A stand-in model: `base`'s reading rules and tokenizer, logits set by `plan` (one case of
    CASES per example, by its place in `prompts`)."""

    def __init__(self, base, prompts: list[str], plan: list[str]) -> None:
        self.config, self.tokenizer, self.meta = base.config, base.tokenizer, base.meta
        self.vocab = base.model.config.vocab_size
        self.case = {p: plan[i % len(plan)] for i, p in enumerate(prompts)}

    def __call__(self, batch) -> torch.Tensor:
        logits = torch.zeros(len(batch.items), batch.input_ids.shape[1], self.vocab)
        for b, r in enumerate(batch.items):
            c, k = int(r.correct_ids[0]), int(r.counterfactual_ids[0])
            x = next(i for i in range(5, self.vocab) if i not in (c, k, MASK_ID))
            ids = {"c": c, "k": k, "x": x, "m": MASK_ID}
            for key, value in CASES[self.case[r.example.prompt]][0].items():
                logits[b, int(r.read_positions[0]), ids[key]] = value
        return logits


def ioi_examples(n: int = 16):
    tok = tiny_tokenizer()
    examples = get_task("ioi", tok).generate_aligned(n, tok, seed=3, modes=("ar", "mdm"), mask_id=MASK_ID)
    assert len({ex.prompt for ex in examples}) == len(examples) == n
    return examples


def test_read_answers_by_hand() -> None:
    """One logit row per case: LD is the answer's logit minus the counterfactual's; top-1 is the
    argmax, with the mask token left out when asked (an MDM's)."""
    ar = probed3()
    examples = ioi_examples(4)
    rows = [rendered_for(ar, ex) for ex in examples]
    model = HandLogits(ar, [ex.prompt for ex in examples], list(CASES))
    batch = type("B", (), {"items": rows, "input_ids": torch.zeros(4, max(len(r.input_ids) for r in rows))})()
    logits = model(batch)
    ld, top1 = read_answers(logits, rows)
    assert ld.tolist() == [3.0, 1.0, -3.0, 3.0]
    assert top1.tolist() == [True, False, False, False]  # "mask": the mask token tops the row
    _, top1_mdm = read_answers(logits, rows, exclude=MASK_ID)
    assert top1_mdm.tolist() == [True, False, False, True]


@pytest.mark.parametrize("criterion", ["ld", "top1"])
def test_pool_follows_its_criterion(criterion: str, unchecked_types) -> None:  # HandLogits is no ProbedModel
    """Accuracies and pools against the plans, counted by hand from CASES: LD > 0 keeps the MDM's
    forced choices, top-1 drops them and the ARM's mask-topped rows."""
    examples = ioi_examples(16)
    prompts = [ex.prompt for ex in examples]
    ar = HandLogits(probed3(), prompts, AR_PLAN)
    mdm = HandLogits(probed3(kind="mdm"), prompts, MDM_PLAN)
    pool = common_pool(ar, mdm, "ioi", examples, pool_size=100, criterion=criterion)

    def ok(plan: list[str], i: int, c: str, is_mdm: bool) -> bool:
        _, by_ld, by_top1 = CASES[plan[i % 4]]
        if by_top1 is None:  # the mask case: top-1 only where the mask is left out
            by_top1 = is_mdm
        return by_ld if c == "ld" else by_top1

    want = {
        (m, c): sum(ok(plan, i, c, m == "mdm") for i in range(16)) / 16
        for m, plan in (("ar", AR_PLAN), ("mdm", MDM_PLAN))
        for c in ("ld", "top1")
    }
    assert want == {("ar", "ld"): 1.0, ("ar", "top1"): 0.75, ("mdm", "ld"): 0.75, ("mdm", "top1"): 0.5}
    s = pool.stats
    for (m, c), value in want.items():
        assert s[f"accuracy_{m}_{c}"] == value, (m, c)
    assert (s["accuracy_ar"], s["accuracy_mdm"]) == (want[("ar", criterion)], want[("mdm", criterion)])
    kept = [p for i, p in enumerate(prompts) if ok(AR_PLAN, i, criterion, False) and ok(MDM_PLAN, i, criterion, True)]
    assert [r.example.prompt for r in pool.ar] == kept == [r.example.prompt for r in pool.mdm]
    assert len(kept) == {"ld": 12, "top1": 4}[criterion]  # cases top/forced/mask vs top only
    assert s["criterion"] == criterion and s["both_correct"] == len(kept)
    assert (s["both_correct_ld"], s["both_correct_top1"]) == (12, 4)

    # the per-task table names each accuracy's criterion, the pool's first
    data = {"pools": {"ioi": json.loads(json.dumps(s))}, "tasks": {}}
    (row,) = summary_rows(data)
    first = {"ld": "LD>0", "top1": "top-1"}[criterion]
    accuracy_columns = [k for k in row if k.startswith("acc ")]
    assert accuracy_columns[:2] == [f"acc AR ({first})", f"acc MDM ({first})"] and len(accuracy_columns) == 4
    assert row["acc MDM (LD>0)"] == "0.75" and row["acc MDM (top-1)"] == "0.50"
    assert row["acc AR (LD>0)"] == "1.00" and row["acc AR (top-1)"] == "0.75"


def test_tables_of_older_reports_name_ld() -> None:
    """A report.json written before the pool had a criterion held LD > 0 accuracies only."""
    data = {"pools": {"ioi": {"pool": 3, "accuracy_ar": 0.9, "accuracy_mdm": 0.97}}, "tasks": {}}
    (row,) = summary_rows(data)
    assert row["acc AR (LD>0)"] == "0.90" and row["acc MDM (LD>0)"] == "0.97"
    assert row["acc MDM (top-1)"] == "-" and "acc MDM" not in row


def test_bad_criterion_is_a_clear_error(unchecked_types) -> None:  # a value off the Literal on purpose
    with pytest.raises(UserError, match="pool criterion 'top-1' is unknown; choose one of: ld .*top1"):
        CompareOptions(pool_criterion="top-1").checked()
    with pytest.raises(UserError, match="pool criterion"):
        common_pool(probed3(), probed3(kind="mdm"), "ioi", ioi_examples(4), 4, criterion="acc")


def test_cli_bad_criterion_is_one_line(tmp_path: Path) -> None:
    from test_probe import folder

    ar, mdm = str(folder("llama")), str(folder("llama", "mdm"))
    res = CliRunner().invoke(
        app, ["compare", "--ar", ar, "--mdm", mdm, "--out", str(tmp_path / "o"), "--pool-criterion", "best"]
    )
    assert res.exit_code == 2 and "pool criterion 'best' is unknown" in res.output and "Traceback" not in res.output


# --- verdicts without a seed floor ------------------------------------------------------------------


def test_verdict_words() -> None:
    assert unfloored("holds") == UNFLOORED_HOLDS and NO_FLOOR in unfloored("reversed")
    for same in ("inconclusive", "no difference", "untested", "within the seed floor"):
        assert unfloored(same) == same  # a floor cannot change these
    assert verdict_kind(UNFLOORED_HOLDS) == "holds" == verdict_kind("holds")
    assert verdict_kind(unfloored("reversed")) == "reversed"
    with pytest.raises(ValueError, match="not a verdict"):
        verdict_kind("maybe")
    # stored claims of any version: files older than the seed floor have no floor_bound at all
    assert stored_verdict({"verdict": "holds"}) == UNFLOORED_HOLDS
    assert stored_verdict({"verdict": "holds", "floor_bound": None}) == UNFLOORED_HOLDS
    assert stored_verdict({"verdict": UNFLOORED_HOLDS, "floor_bound": None}) == UNFLOORED_HOLDS
    assert stored_verdict({"verdict": "holds", "floor_bound": 0.1}) == "holds"
    assert stored_verdict({"verdict": "reversed", "seed_floor_missing": False, "bound": None}) == "reversed"
    assert stored_verdict({"verdict": "holds", "seed_floor_missing": True}) == UNFLOORED_HOLDS


def claims_without_floor() -> dict:
    """Claims of a pair whose (a) and (b) hold and (c) is reversed, with null pairs, no seed twins."""
    n = 50
    tasks = ["ioi", "greater_than", "countdown"]
    jac = {"ioi": 0.8, "greater_than": 0.6, "countdown": 0.2}
    main = {t: stats(torch.full((n,), jac[t]), torch.full((n,), 0.1)) for t in tasks}
    null = {t: stats(torch.ones(n), torch.zeros(n)) for t in tasks}
    sel = {"main": Interval(0.05, 0.02, 0.08), "null_ar": Interval(0.0, 0.0, 0.0)}
    return claims(tasks, {"main": main, "null_ar": null}, sel)


def test_claims_without_a_floor_say_so_in_the_verdict() -> None:
    out = claims_without_floor()
    assert [out[k]["verdict_without_floor"] for k in "abc"] == ["holds", "holds", "reversed"]
    assert out["a"]["verdict"] == out["b"]["verdict"] == UNFLOORED_HOLDS
    assert out["c"]["verdict"] == f"reversed ({NO_FLOOR})"
    assert out["a"]["null"]["null_ar"]["verdict"] == "no difference"  # controls keep their words
    # with a floor measured the verdict is the plain reading against it
    n = 50
    floor = {t: stats(torch.full((n,), 0.5), torch.zeros(n)) for t in ("ioi", "greater_than", "countdown")}
    main = {t: stats(torch.full((n,), v), torch.full((n,), 0.1)) for t, v in (("ioi", 0.8), ("greater_than", 0.6))}
    main["countdown"] = stats(torch.full((n,), 0.2), torch.full((n,), 0.1))
    floored = claims(["ioi", "greater_than", "countdown"], {"main": main, "floor_ar": floor}, {})
    assert floored["a"]["verdict"] == "holds" and floored["b"]["verdict"] == "holds"
    assert floored["c"]["verdict"] == "untested"


def test_routing_claim_without_a_seed_floor_says_so() -> None:
    n = 40
    main = {"ioi": (Interval(0.2, 0.2, 0.2), torch.full((n,), 0.2))}  # 1 - Jaccard 0.8
    null = {"ioi": (Interval(1.0, 1.0, 1.0), torch.ones(n))}
    alone = routing_claim({"main": main, "null_ar": null})
    assert alone["seed_floor_missing"] and alone["verdict"] == UNFLOORED_HOLDS
    floor = {"ioi": (Interval(0.9, 0.9, 0.9), torch.full((n,), 0.9))}
    assert routing_claim({"main": main, "null_ar": null, "floor_ar": floor})["verdict"] == "holds"


def test_report_shows_the_missing_floor_in_the_verdict(tmp_path: Path) -> None:
    """A whole comparison without seed twins: every claim's verdict is its plain reading with the
    missing floor named (JSON), and the report (Markdown, HTML) shows the verdict so; with hand
    claims that hold, the words reach summary.md and report.html."""
    from test_compare import quick_options, task_examples

    from analyses.compare import compare, json_safe, write_report

    opts = quick_options()
    result = compare(probed3(), probed3(kind="mdm"), opts, examples=task_examples(40), log=lambda _: None)
    write_report(result, tmp_path / "real")
    saved = json.loads((tmp_path / "real" / "report.json").read_text())
    for key, c in saved["claims"].items():
        assert c["floor_bound"] is None and "--ar-seed-twin" in c["floor_missing"], key
        assert c["verdict"] == unfloored(c["verdict_without_floor"]), key
    assert saved["options"]["pool_criterion"] == "ld"
    assert all(p["criterion"] == "ld" and "accuracy_mdm_top1" in p for p in saved["pools"].values())
    md = (tmp_path / "real" / "summary.md").read_text()
    assert "| acc AR (LD>0) | acc MDM (LD>0) | acc AR (top-1) | acc MDM (top-1) |" in md
    assert "both models answer correctly by LD>0" in md

    result.data["claims"] = json_safe(claims_without_floor())
    write_report(result, tmp_path / "hand")
    saved = json.loads((tmp_path / "hand" / "report.json").read_text())
    assert saved["claims"]["a"]["verdict"] == UNFLOORED_HOLDS
    md = (tmp_path / "hand" / "summary.md").read_text()
    assert f"**{UNFLOORED_HOLDS}**" in md and f"| {UNFLOORED_HOLDS} |" in md
    assert f"**reversed ({NO_FLOOR})**" in md and "| holds |" not in md and "**holds**" not in md
    page = (tmp_path / "hand" / "report.html").read_text()
    assert f"<td>{UNFLOORED_HOLDS}</td>" in page and "<td>holds</td>" not in page


def test_older_reports_render_their_unfloored_verdicts_in_todays_words() -> None:
    """A report.json written before verdicts named a missing floor: its plain "holds" is shown
    with the floor named (the report's readers go through `stored_verdict`)."""
    data = {
        "warnings": [],
        "options": {"k_edges": 10, "k_nodes": 3, "steps": 2, "n_boot": 10},
        "shape": {"edges": 100, "n_layers": 3},
        "models": {"ar": "a", "mdm": "m"},
        "pools": {},
        "tasks": {},
        "claims": {
            "a": {
                "claim": "x",
                "effect": "e",
                "interval": {"estimate": 0.2, "low": 0.1, "high": 0.3},
                "verdict": "holds",
            }
        },
    }
    md = markdown_summary(data)
    assert f"**{UNFLOORED_HOLDS}**" in md and "**holds**" not in md
    assert UNFLOORED_HOLDS in report_html(data, plotlyjs=False)
