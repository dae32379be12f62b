"""analyses.compare.series: one ARM against MDMs of several block sizes, checked against direct
`compare` runs, the saved graphs (analyses.graph's own Jaccard) and the block-causal mask's
definition (a block at least as long as the sequence is full attention); plus the CLI's errors.

Models: test_depth's random 3-layer Llama as the ARM and the same weights read as MDMs that
differ only in `ModelMeta.block_size`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_tokenizer
from test_compare import quick_options, task_examples
from test_depth import MASK_ID, hf_model, probed3
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.compare import CompareOptions, SeriesResult, compare, compare_series, write_series
from analyses.graph import Graph, jaccard
from ar2mdm.common.errors import CheckpointError, UserError
from ar2mdm.common.metadata import ModelMeta
from probe import ProbedModel

TASKS = ("ioi", "greater_than")
K = 20
# random weights: keep every aligned example so every task has a pool
OPTS = quick_options(tasks=TASKS, k_edges=K, common_correct=False)
QUIET = {"log": lambda _: None}
LONG = 10_000  # longer than any rendered example: one block holds the whole sequence


def mdm(block_size: int | None) -> ProbedModel:
    """The 3-layer model's own weights read as an MDM with this block size (None: bidirectional)."""
    meta = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID, block_size=block_size)
    return ProbedModel(hf_model(), tiny_tokenizer(), meta, backend="torch")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[SeriesResult, Path, dict, dict[str, ProbedModel]]:
    """The series over MDMs given out of order, written to disk, and the shared examples."""
    ar = probed3()
    mdms = {"full": mdm(None), "block 4": mdm(4), "long": mdm(LONG), "block 2": mdm(2)}
    examples = task_examples(12)
    result = compare_series(ar, mdms, OPTS, examples=examples, **QUIET)
    out = write_series(result, tmp_path_factory.mktemp("series"))
    return result, out, examples, mdms


def test_series_is_ordered_by_block_size_full_last(series) -> None:
    result, _, _, _ = series
    data = result.data
    assert data["order"] == ["block 2", "block 4", "long", "full"] == list(result.results)
    assert [data["mdms"][k]["block"] for k in data["order"]] == ["2", "4", str(LONG), "full"]
    for per in data["tasks"].values():
        assert [e["block_size"] for e in per.values()] == [2, 4, LONG, None]


def test_series_entries_equal_direct_comparisons_and_the_saved_graphs(series) -> None:
    result, out, examples, mdms = series
    data = result.data
    saved = json.loads((out / "series.json").read_text())
    assert saved["tasks"] == data["tasks"] and set(saved["folders"]) == set(data["order"])
    for label in ("block 2", "full"):  # two direct runs: independent of the series' bookkeeping
        direct = compare(probed3(), mdms[label], OPTS, examples=examples, **QUIET).data
        for task in TASKS:
            entry, cmp = data["tasks"][task][label], direct["tasks"][task]["depth"]["compare"]
            assert entry["jaccard"] == direct["tasks"][task]["circuits"]["jaccard"]
            assert entry["early_mass_mdm"] == cmp["b"]["early_mass"]
            assert entry["early_mass_ar"] == cmp["a"]["early_mass"]
            assert entry["early_mass_diff"] == cmp["early_mass_diff"]
            assert entry["accuracy_mdm"] == direct["pools"][task]["accuracy_mdm"]
            for c in ("ld", "top1"):
                assert entry[f"accuracy_mdm_{c}"] == direct["pools"][task][f"accuracy_mdm_{c}"]
            assert entry["pool"] == direct["pools"][task]["pool"] == 8
    for label, folder in saved["folders"].items():
        for task in TASKS:
            ga, gm = (Graph.load(out / folder / "graphs" / f"{task}-{m}.json") for m in ("ar", "mdm"))
            assert data["tasks"][task][label]["jaccard"]["estimate"] == pytest.approx(jaccard(ga, gm, K))
            assert json.loads((out / folder / "report.json").read_text())["models"]["mdm"] == label


def test_one_block_over_the_whole_sequence_is_full_attention(series) -> None:
    result, out, _, _ = series
    for task, per in result.data["tasks"].items():
        long, full = dict(per["long"]), dict(per["full"])
        assert long.pop("block_size") == LONG and full.pop("block_size") is None
        assert long == full
        gl, gf = (Graph.load(out / f / "graphs" / f"{task}-mdm.json") for f in ("long", "full"))
        assert gl.scores.tolist() == gf.scores.tolist()
    # ... while a short block changes the MDM's circuit (the ARM's side is the same model)
    blocks = [result.data["tasks"][t]["block 2"]["jaccard"] for t in TASKS]
    assert blocks != [result.data["tasks"][t]["full"]["jaccard"] for t in TASKS]


def test_series_files_have_one_column_per_mdm(series) -> None:
    _, out, _, _ = series
    md = (out / "series.md").read_text()
    assert md.count("| task | block 2 | block 4 | long | full |") == 7  # one table per quantity
    assert "### Jaccard@K with the ARM (95% CI)" in md
    # accuracy under both criteria, each named; the pool says what it holds
    assert "### MDM accuracy (LD>0: answer preferred to the counterfactual, a forced choice)" in md
    assert "### MDM accuracy (top-1: the answer is its most likely token)" in md
    assert "### Common-correct pool (every aligned example)" in md  # OPTS: common_correct=False
    assert "| ioi |" in md and "block size full" in md
    page = (out / "series.html").read_text()
    assert page.count("Plotly.newPlot") == 7 and "Early-layer mass MDM - ARM" in page
    assert {p.name for p in out.iterdir()} >= {"series.json", "series.md", "series.html", "block-2", "full"}


def test_given_order_and_errors() -> None:
    ar = probed3()
    opts = CompareOptions(**{**OPTS.__dict__, "tasks": ("ioi",)})
    mdms = {"full": mdm(None), "block 2": mdm(2)}
    result = compare_series(ar, mdms, opts, examples=task_examples(10), order="given", **QUIET)
    assert result.data["order"] == ["full", "block 2"] and result.data["order_by"] == "given"
    with pytest.raises(UserError, match="at least two MDMs"):
        compare_series(ar, {"full": mdm(None)}, opts, **QUIET)
    with pytest.raises(CheckpointError, match="masked diffusion"):
        compare_series(ar, {"full": mdm(None), "ar": probed3()}, opts, **QUIET)
    same = mdm(None)
    with pytest.raises(UserError, match="one model object"):
        compare_series(ar, {"full": same, "again": same}, opts, **QUIET)
    with pytest.raises(UserError, match="k_edges .* the largest allowed value is"):
        compare_series(ar, mdms, CompareOptions(**{**opts.__dict__, "k_edges": 10**6}), **QUIET)


def test_source_key_sees_one_checkpoint_through_its_spellings(tmp_path: Path, monkeypatch) -> None:
    from ar2mdm.common.metadata import source_key

    (tmp_path / "runs" / "base").mkdir(parents=True)
    (tmp_path / "runs" / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    keys = {source_key(s) for s in ("runs/base", "./runs/base", "runs/other/../base", str(tmp_path / "runs/base"))}
    assert keys == {str((tmp_path / "runs" / "base").resolve())}
    assert source_key("runs/other") != source_key("runs/base")
    assert source_key("organism") == "organism"  # a name is its own key


def test_unknown_order_is_refused(unchecked_types) -> None:
    with pytest.raises(UserError, match="order"):
        compare_series(probed3(), {"a": mdm(None), "b": mdm(2)}, order="size", **QUIET)  # type: ignore[arg-type]


def test_cli_compare_series_errors_are_one_line(tmp_path: Path) -> None:
    from test_probe import folder

    runner = CliRunner()
    ar, m = str(folder("llama")), str(folder("llama", "mdm"))
    out = tmp_path / "out"
    res = runner.invoke(app, ["compare-series", "--ar", ar, "--mdm", m, "--out", str(out)])
    assert res.exit_code == 2 and "two or more different MDMs" in res.output and "Traceback" not in res.output
    assert not out.exists()  # refused before claiming the folder
    res = runner.invoke(app, ["compare-series", "--ar", ar, "--mdm", m, "--mdm", m, "--out", str(out)])
    assert res.exit_code == 2 and "is given twice" in res.output
    # the same folder spelt two ways is the same checkpoint (paths are compared resolved)
    spelt = f"{Path(m).parent}/./{Path(m).name}"
    res = runner.invoke(app, ["compare-series", "--ar", ar, "--mdm", m, "--mdm", spelt, "--out", str(out)])
    assert res.exit_code == 2 and "are the same checkpoint" in res.output and not out.exists()
    res = runner.invoke(app, ["compare-series", "--ar", m, "--mdm", m, "--mdm", ar, "--out", str(out)])
    assert res.exit_code == 2 and "autoregressive" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["compare-series", "--ar", ar, "--mdm", m, "--mdm", ar, "--out", str(out), "--tasks", "x"])
    assert res.exit_code == 2 and "unknown" in res.output


def test_cli_compare_series_writes_the_series(tmp_path: Path) -> None:
    """Two MDM folders that differ only in block size: series files, one report per MDM, the
    order by block size (full last) whatever the --mdm order."""
    from dataclasses import replace

    from test_probe import folder

    from conversion.checkpoints import load_ar
    from conversion.mdm import save_mdm

    ar, full = str(folder("llama")), folder("llama", "mdm")
    meta = ModelMeta.load(full)
    loaded = load_ar(ar)
    block = save_mdm(loaded.model, loaded.tokenizer, replace(meta, block_size=4), tmp_path / "mdm-b4")
    out = tmp_path / "series"
    args = ["compare-series", "--ar", ar, "--mdm", str(full), "--mdm", str(block), "--out", str(out)]
    quick = ["--tasks", "ioi", "--pool-size", "8", "--steps", "2", "--n-boot", "20", "--no-null-pair", "--all-examples"]
    res = CliRunner().invoke(app, args + quick)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "series.json").read_text())
    assert data["order"] == [str(block), str(full)] and [data["mdms"][k]["block"] for k in data["order"]] == [
        "4",
        "full",
    ]
    assert data["options"]["neurons"] is False and data["options"]["denoising"] == []
    for name in data["folders"].values():
        assert (out / name / "report.json").exists()
    assert (out / "series.html").exists() and "| task |" in (out / "series.md").read_text()
    res = CliRunner().invoke(app, args + quick)
    assert res.exit_code == 2 and "--overwrite" in res.output


def test_trend_by_hand():
    """Kendall's tau of Jaccard against the series order: a strictly falling task is -1 with the
    exact p 2/4! = 1/12; a flat task has no trend; the sign test over 3 falling tasks is 2/2^3."""
    from analyses.compare.series import trend

    def task(values):
        return {k: {"jaccard": None if v is None else {"estimate": v}} for k, v in zip("abcd", values, strict=True)}

    data = {
        "order": list("abcd"),
        "tasks": {
            "ioi": task([0.8, 0.7, 0.5, 0.4]),
            "sudoku": task([0.9, 0.6, 0.7, 0.5]),  # one swap: tau = (5 - 1) / 6 negative
            "gt": task([0.6, None, 0.5, 0.4]),
            "flat": task([0.5, 0.5, 0.5, 0.5]),
            "short": task([0.5, None, None, 0.4]),
        },
    }
    out = trend(data)
    assert out["tasks"]["ioi"]["kendall_tau"] == pytest.approx(-1.0) and out["tasks"]["ioi"]["p"] == pytest.approx(
        1 / 12
    )
    assert out["tasks"]["sudoku"]["kendall_tau"] == pytest.approx(-4 / 6)
    assert out["tasks"]["gt"]["points"] == 3 and out["tasks"]["gt"]["kendall_tau"] == pytest.approx(-1.0)
    assert out["tasks"]["flat"] is None and out["tasks"]["short"] is None
    assert out["pooled"] == {"negative": 3, "of": 3, "sign_test_p": pytest.approx(0.25)}
