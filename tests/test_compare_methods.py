"""`compare --methods a,b`: claims read under several attribution methods, a verdict that two
ground-truth-validated methods read differently marked method-dependent."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import quick_options, task_examples
from test_depth import probed3
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.compare import markdown_summary, write_report
from analyses.compare.methods import VALIDATED, dependence_rows, mark, method_dependence
from analyses.compare.run import compare_methods
from analyses.validation.scoring import TARGETS
from analyses.verdicts import NO_FLOOR, verdict_kind
from ar2mdm.common.errors import UserError


def claims(**verdicts: str) -> dict:
    return {key: {"claim": f"claim {key}", "verdict": v} for key, v in verdicts.items()}


def test_validated_methods_are_those_with_a_ground_truth_target() -> None:
    assert set(TARGETS) == VALIDATED


def test_two_validated_methods_that_disagree_make_a_claim_method_dependent() -> None:
    by_method = {
        "eap-ig-inputs": claims(a=f"holds ({NO_FLOOR})", b="no difference", c="inconclusive"),
        "exact": claims(a="within the seed floor", b="no difference", c="inconclusive"),
        "eap": claims(a="holds", b="reversed", c="holds"),  # not validated: never decides
    }
    dep = method_dependence(by_method)
    assert dep["a"]["dependent"] and not dep["b"]["dependent"] and not dep["c"]["dependent"]
    assert dep["a"]["validated"] == ["eap-ig-inputs", "exact"]
    # the floor note is no disagreement: the kind is what counts
    same = method_dependence({"gim": claims(a="holds"), "exact": claims(a=f"holds ({NO_FLOOR})")})
    assert not same["a"]["dependent"]
    main = by_method["eap-ig-inputs"]
    mark(main, dep)
    assert main["a"]["verdict"].endswith(
        "(method-dependent: eap-ig-inputs holds; exact within the seed floor; eap holds)"
    )
    assert verdict_kind(main["a"]["verdict"]) == "holds" and main["a"]["method_dependent"]
    assert main["b"]["verdict"] == "no difference" and "method_dependent" not in main["b"]
    rows = dependence_rows(dep)
    assert rows[0]["eap-ig-inputs*"] == f"holds ({NO_FLOOR})" and rows[0]["eap"] == "holds"
    assert [r["method-dependent"] for r in rows] == ["yes", "no", "no"]


def test_compare_under_two_methods(tmp_path: Path) -> None:
    opts = quick_options()
    main, results = compare_methods(
        probed3(), probed3(kind="mdm"), opts, ["eap-ig-inputs", "gim"], examples=task_examples(40), log=lambda _: None
    )
    assert list(results) == ["eap-ig-inputs", "gim"] and main is results["eap-ig-inputs"]
    assert results["gim"].data["options"]["method"] == "gim"
    dep = main.data["method_dependence"]
    for key, d in dep.items():
        assert d["verdicts"]["gim"] == results["gim"].data["claims"][key]["verdict"]
        assert d["dependent"] == (
            verdict_kind(d["verdicts"]["gim"]) != verdict_kind(results["eap-ig-inputs"].data["claims"][key]["verdict"])
        )
        assert ("method-dependent" in main.data["claims"][key]["verdict"]) == d["dependent"]
    write_report(main, tmp_path)
    assert "Claims under each attribution method" in (tmp_path / "summary.md").read_text()
    assert "method-dependent" in markdown_summary(main.data)
    with pytest.raises(UserError, match="attribution method"):
        compare_methods(probed3(), probed3(kind="mdm"), opts, ["gim", "magic"], examples={}, log=lambda _: None)


def test_cli_methods_are_checked_before_any_model_loads(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["compare", "--ar", "no/such-arm", "--mdm", "no/such-mdm", "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*base, "--methods", "gim,magic"])
    assert res.exit_code == 2 and "magic" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*base, "--methods", "gim,gim"])
    assert res.exit_code == 2 and "more than once" in res.output
