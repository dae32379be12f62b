"""benchmarks.run_all: the whole table on a tiny random model, its JSON, and skipped rows.

Speeds are never asserted (the machine is shared and noisy); only that every benchmark ran and
produced finite positive ratios, and that missing models give reasons instead of exceptions.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.run_all import BENCHMARKS, format_table, main, run_all


@pytest.mark.e2e
def test_tiny_quick_table_has_a_finite_ratio_for_every_benchmark(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["benchmark"] for r in rows} == set(BENCHMARKS)
    for r in rows:
        assert r["status"] == "ok", r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert r["wall_s"] > 0 and math.isfinite(r["peak_mib"])
    assert set(report["results"]) == set(BENCHMARKS) and all(report["results"].values())
    printed = capsys.readouterr().out
    assert format_table(rows) in printed  # the JSON holds exactly the printed rows
    # one row per probe backend, and the target rows say whether they were met
    assert [r["compared"] for r in rows if r["benchmark"] == "probe"] == [
        f"run_with_cache / forward [{b}]" for b in report["settings"]["probe"]["backends"]
    ]
    assert all(isinstance(r["met"], bool) for r in rows if r["target"])


def test_missing_mdm_is_a_skipped_row_with_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "no-mdm"
    report = run_all(mdm=str(missing), only=["samplers"], quick=True, progress=False)
    (row,) = report["rows"]
    assert row["status"].startswith("skipped: ") and str(missing) in row["status"]
    assert "ar2mdm convert" in row["status"] and row["ratio"] is None
    assert report["results"] == {"samplers": None}
    assert "skipped: " in format_table(report["rows"])


def test_missing_organism_is_a_skipped_row(tmp_path, monkeypatch):
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "empty-cache"))
    report = run_all("organism", only=["train_step"], quick=True, progress=False)
    (row,) = report["rows"]
    assert row["status"].startswith("skipped: ") and "ar2mdm organism train" in row["status"]


def test_unknown_benchmark_and_conflicting_options_are_user_errors(tmp_path, capsys):
    assert main(["--only", "nope", "--json", str(tmp_path / "x.json")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tiny", "--mdm", str(tmp_path)])


def test_faithfulness_benchmark_runs_on_a_tiny_model(make_tiny_model, tmp_path):
    """benchmarks.bench_faithfulness end to end on a tiny random Llama: the curve ends at 1 (the
    whole graph is the model) and the JSON holds what was printed."""
    from benchmarks.bench_faithfulness import main as bench

    folder = make_tiny_model("llama")
    out = tmp_path / "faith.json"
    result = bench(["--model", str(folder), "--n", "8", "--batch-size", "4", "--steps", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["values"][-1] == pytest.approx(1.0, abs=1e-4) and len(result["sizes"]) >= 5
    assert result["curve_seconds"] > 0 and result["plain_forwards"] == 2 * (len(result["sizes"]) + 2)


def test_parallel_decoding_benchmark_on_a_tiny_mdm(tmp_path):
    """benchmarks.bench_parallel end to end on a tiny random MDM and a copy task of 6 words: the
    baseline decodes one token per call, no parallel setting needs more calls, drift is measured
    for both caches, and the figure has one trace per (rule, cache) and panel plus the baseline."""
    from ar2mdm.tasks.sequences import sequence_examples, write_jsonl
    from benchmarks import bench_parallel
    from benchmarks.run_all import build_tiny
    from conversion.checkpoints import load_any

    _, mdm = build_tiny(tmp_path)
    tok = load_any(mdm).tokenizer
    task = write_jsonl(sequence_examples("copy", 3, length=6, seed=0, tokenizer=tok), tmp_path / "copy.jsonl")
    res = bench_parallel.measure(mdm, str(task), n=3, rounds=1, block_length=3)
    base, *rest = res["rows"]
    assert res["answer_tokens"] == 6 and base["nfe"] == 6 and base["ratio"] == 1.0
    assert len(rest) == len(bench_parallel.specs(3)) - 1
    assert all(1 <= r["nfe"] <= 6 and 0 <= r["accuracy"] <= 1 and r["ratio"] > 0 for r in rest)
    for cache in ("prefix", "dual"):
        d = res["drift"][cache]
        assert d["steps"] >= 6 and 0 <= d["mean"] <= d["max"] and math.isfinite(d["max"])
    fig = bench_parallel.figure(res)
    assert len(fig.data) == 2 * 6 + 2  # (threshold, factor) x 3 caches, two panels, + baseline


def test_parallel_benchmark_picks_the_fastest_setting_within_the_loss():
    from benchmarks.bench_parallel import best_within, fastest_at_equal_ppl

    rows = [
        {"setting": "base", "ratio": 1.0, "accuracy": 0.90, "gen_ppl": 10.0},
        {"setting": "fast but worse", "ratio": 9.0, "accuracy": 0.85, "gen_ppl": 11.0},
        {"setting": "within", "ratio": 6.0, "accuracy": 0.895, "gen_ppl": 10.4},
        {"setting": "slower", "ratio": 2.0, "accuracy": 0.95, "gen_ppl": 9.0},
    ]
    assert best_within(rows, 0.01)["setting"] == "within"
    assert best_within(rows, 0.10)["setting"] == "fast but worse"
    assert fastest_at_equal_ppl(rows, 0.05)["setting"] == "within"
    assert best_within(rows[:1])["setting"] == "base"  # nothing else: the baseline
