"""`ar2mdm study` in quick mode: every stage runs once, is cached on a rerun, and a crash in a
late stage resumes there (earlier stages are not redone); a changed option reruns only its stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import analyses.compare
from analyses.app.cli import app
from analyses.app.power import needed_pool, plan_power
from analyses.app.study import StudyConfig, run_study
from analyses.verdicts import KINDS, verdict_kind
from ar2mdm.common.errors import UserError


def statuses(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


@pytest.mark.e2e
def test_study_runs_caches_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    cfg = StudyConfig(out=out, quick=True)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in the compare stage")

    with monkeypatch.context() as m:
        m.setattr(analyses.compare, "compare", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_study(cfg, log=lambda _: None)
    earlier = ("ar", "mdm", "ar_twin", "mdm_twin", "samplers")
    for stage in earlier:
        assert (out / stage / "stage.json").is_file(), stage
    assert not (out / "compare" / "stage.json").exists() and not (out / "report.html").exists()

    summary = run_study(cfg, log=lambda _: None)
    assert statuses(summary) == {**dict.fromkeys(earlier, "cached"), "compare": "ran"}
    page = (out / "report.html").read_text()
    assert "Claims of the reference study" in page and "samplers: accuracy against NFE" in page
    assert "Controls per task" in page and "ARM vs ARM&#x27; (seed)" in page
    assert "Reproducibility" in page and "bit-identical" in page
    saved = json.loads((out / "summary.json").read_text())
    assert set(saved["claims"]) == {"a", "b", "c"}
    assert saved["environment"]["threads"] >= 1 and saved["environment"]["cpu_capability"]
    assert all(verdict_kind(c["verdict"]) in KINDS for c in saved["claims"].values())
    for c in saved["claims"].values():  # the null pairs and both seed floors beside every claim
        assert {n["verdict"] for n in c["null"].values()} == {"no difference"} and set(c["null"]) == {
            "null_ar",
            "null_mdm",
        }
        assert set(c["floor"]) == {"floor_ar", "floor_mdm"} and c["floor_bound"] is not None
    twin_report = json.loads((out / "ar_twin" / "model" / "report.json").read_text())
    main_report = json.loads((out / "ar" / "model" / "report.json").read_text())
    assert (twin_report["seed"], twin_report["data_seed"]) == (1, 0) and main_report["seed"] == 0
    assert saved["conversion"]["steps"] == 12
    assert [r["task"] for r in saved["table"]] == ["ioi", "greater_than", "countdown"]
    report = json.loads((out / "compare" / "report.json").read_text())
    assert [p["step"] for p in report["track"]["tasks"]["ioi"]["points"]] == [0, 6, 12]

    again = run_study(StudyConfig(out=out, quick=True, seed=0), log=lambda _: None)
    assert set(statuses(again).values()) == {"cached"}
    assert again["claims"] == summary["claims"]

    # power: with no time left the comparison is not rerun, and the report says what was needed
    powered = run_study(StudyConfig(out=out, quick=True, power=True, budget=0.01), log=lambda _: None)
    assert set(statuses(powered).values()) == {"cached"} and powered["power"]["run"] is False
    needed = [n for n in powered["power"]["needed"].values() if n is not None]
    assert powered["power"]["pool"] == min(1000, max(needed)) and "min left of the budget" in powered["power"]["reason"]
    assert "Not rerun" in (out / "report.html").read_text()
    # and when the plan fits, the comparison reruns on the larger pool and the report reads it
    import analyses.app.study as study_module

    def fits(needed, pilot_pool, seconds, left):
        plan = plan_power(needed, pilot_pool, seconds, float("inf"))
        return {**plan, "pool": pilot_pool + 2, "run": True}

    with monkeypatch.context() as m:
        m.setattr(study_module, "plan_power", fits)
        rerun = run_study(StudyConfig(out=out, quick=True, power=True), log=lambda _: None)
    assert statuses(rerun)["compare_power"] == "ran" and rerun["compare_folder"] == "compare_power"
    powered_report = json.loads((out / "compare_power" / "report.json").read_text())
    assert powered_report["options"]["pool_size"] == 10 and rerun["power"]["pool"] == 10

    # block sizes: one more conversion (block:4) and the series; everything before stays cached
    blocks = run_study(StudyConfig(out=out, quick=True, block_sizes=(4,)), log=lambda _: None)
    assert statuses(blocks) == {**dict.fromkeys((*earlier, "compare"), "cached"), "mdm_block4": "ran", "blocks": "ran"}
    meta = json.loads((out / "mdm_block4" / "model" / "ar2mdm.json").read_text())
    assert meta["block_size"] == 4
    series = json.loads((out / "blocks" / "series.json").read_text())
    assert series["order"] == ["block 4", "full"]
    assert "| task | block 4 | full |" in (out / "blocks" / "series.md").read_text()


def test_study_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--model"):
        StudyConfig(out=tmp_path, model="gpt5").checked()
    with pytest.raises(UserError, match="budget"):
        StudyConfig(out=tmp_path, model="smollm2", budget=0).checked()
    res = CliRunner().invoke(app, ["study", "--out", str(tmp_path), "--convert-steps", "0"])
    assert res.exit_code == 2 and "convert_steps" in res.output and "Traceback" not in res.output
    with pytest.raises(UserError, match="--experts 4: a mixture-of-experts organism needs --model organism"):
        StudyConfig(out=tmp_path, model="smollm2", experts=4).checked()


@pytest.mark.slow
def test_study_of_an_moe_organism_reports_routing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`study --quick --experts 2`: the ARM and its seed twin are Mixtral organisms, the MDMs their
    conversions, and the comparison has the routing section with its controls."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    run_study(StudyConfig(out=out, quick=True, experts=2), log=lambda _: None)
    for stage in ("ar", "ar_twin"):
        report = json.loads((out / stage / "model" / "report.json").read_text())
        assert report["config"]["n_experts"] == 2
    routing = json.loads((out / "compare" / "report.json").read_text())["routing"]
    assert routing["n_experts"] == 2 and routing["moe_layers"] == [0, 1, 2, 3, 4, 5]
    assert not routing["claim"]["seed_floor_missing"]
    assert "Routing (mixture of experts)" in (out / "compare" / "report.html").read_text()


def test_power_plan_by_hand() -> None:
    """The pool for +/-0.03 is n (w / 0.03)^2 for a bootstrap half width w (here 100 examples at
    +/-0.06 -> 400); the rerun's time is the pilot's scaled by the pool."""
    report = {
        "tasks": {
            "ioi": {"n": 100, "circuits": {"jaccard": {"estimate": 0.5, "low": 0.44, "high": 0.56}}},
            "sudoku": {"n": 90, "circuits": {"jaccard": {"estimate": 1.0, "low": 1.0, "high": 1.0}}},
        }
    }
    needed = needed_pool(report)
    assert needed["sudoku"] is None and needed["ioi"] == pytest.approx(400, abs=1)  # abs: float rounding of 0.06
    plan = plan_power(needed, 100, 120.0, 600.0)
    assert plan["pool"] == needed["ioi"] and plan["estimated_minutes"] == pytest.approx(8.0, abs=0.05) and plan["run"]
    assert plan_power(needed, 100, 120.0, 400.0)["run"] is False
    assert plan_power({"ioi": 5000}, 100, 1.0, 1e9)["pool"] == 1000
    assert plan_power({"ioi": 80}, 100, 1.0, 1e9)["run"] is False
    # claim (a): its pooled interval +/-0.08 at the pilot's largest pool (100) -> 100 (0.08 / 0.05)^2 = 256
    report["claims"] = {"a": {"interval": {"estimate": 0.2, "low": 0.12, "high": 0.28}}}
    claim = needed_pool(report, None, 0.05)
    assert list(claim) == ["claim (a)"] and claim["claim (a)"] == pytest.approx(256, abs=1)
    assert needed_pool({"tasks": report["tasks"], "claims": {"a": {"interval": None}}}, None, 0.05) == {
        "claim (a)": None
    }
