"""scripts/results_table.py: docs/RESULTS.md is what the results files say, row by row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
results_table = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = results_table  # dataclasses look their module up there
_spec.loader.exec_module(results_table)


def _row(source: str):
    return next(row for row in results_table.ROWS if row.sources == (source,))


def _write(root: Path, source: str, data: dict) -> None:
    path = root / source
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))


def test_results_md_is_what_the_generator_writes():
    assert (ROOT / "docs" / "RESULTS.md").read_text() == results_table.render(), (
        "docs/RESULTS.md differs from the results files: run `python scripts/results_table.py`"
    )
    assert results_table.main(["--check"]) == 0


def test_load_memory_row_reads_its_json(tmp_path):
    source = "docs/results/formats/load_memory.json"
    _write(
        tmp_path,
        source,
        {
            "replicas": [{"replica": "10M", "ratio": 0.5}, {"replica": "30M", "ratio": 0.75}],
            "published": [
                {"model": "Qwen2.5-7B / Dream-v0-Base-7B", "load_gib": 14.26},
                {"model": "LLaDA-8B-Base", "load_gib": 15.04},
            ],
        },
    )
    assert results_table.result_cell(_row(source), tmp_path) == (
        "measured / predicted memory 0.50 / 0.75 at 10 M / 30 M parameters; "
        "predicted 14.3 GiB per 7B model (Qwen2.5-7B, Dream-7B), 15.0 GiB LLaDA-8B"
    )


def test_threshold_row_says_whether_the_target_is_met(tmp_path):
    source = "docs/results/sampling/bench_samplers.json"
    _write(
        tmp_path,
        source,
        {
            "rows": [
                {"sampler": "low-confidence", "ratio": 1.0, "accuracy": 0.40},
                {"sampler": "threshold tau=0.7", "ratio": 2.35, "accuracy": 0.39},
                {"sampler": "threshold tau=0.5", "ratio": 3.0, "accuracy": 0.30},
            ]
        },
    )
    assert results_table.result_cell(_row(source), tmp_path) == (
        "2.35x within 2 points (tau 0.7); 3.00x at -10 points (tau 0.5): 2x target met"
    )


def test_a_missing_results_file_names_the_command_to_run(tmp_path):
    row = _row("docs/results/formats/load_memory.json")
    assert results_table.result_cell(row, tmp_path) == (
        "(not measured yet: run `python scripts/results.py --run formats-memory`)"
    )
    for row in results_table.ROWS:  # every read row has a command for its files
        if row.sources:
            assert results_table.result_cell(row, tmp_path).startswith("(not measured yet: run `")
