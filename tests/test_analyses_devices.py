"""The analyses' GPU path (a model in bf16 on a device), run at tiny scale on every device this
machine has: the CPU always (CI), CUDA too where torch sees a GPU (`scripts/gpu_check.sh`).

`compare` drives every analysis (EAP-IG attribution, faithfulness, ablations, logit lens, neuron
profiles and their causal check, the denoising trajectory, the null pair) through one code path;
run in bf16 its graphs must agree with the fp32 run on the CPU (the independent reference) to
bf16 precision, and every reported number must be finite.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_tokenizer
from test_compare import task_examples
from test_depth import MASK_ID, hf_model

from analyses.compare import CompareOptions, compare, write_report
from analyses.graph import Graph
from ar2mdm.common.metadata import ModelMeta
from probe import ProbedModel

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TASKS = ("ioi", "countdown")


def _pair(device: str, dtype: torch.dtype) -> tuple[ProbedModel, ProbedModel]:
    meta = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID)
    ar, mdm = (hf_model().to(device=device, dtype=dtype) for _ in range(2))
    return (
        ProbedModel(ar, tiny_tokenizer(), None, backend="torch"),
        ProbedModel(mdm, tiny_tokenizer(), meta, backend="torch"),
    )


def _run(device: str, dtype: torch.dtype, out: Path) -> dict:
    opts = CompareOptions(
        tasks=TASKS,
        pool_size=8,
        steps=2,
        n_boot=20,
        n_random=2,
        k_edges=20,
        k_nodes=3,
        denoising=(1.0, 0.0),
        batch_size=8,
        common_correct=False,  # random weights: keep every aligned example, the same in both runs
    )
    ar, mdm = _pair(device, dtype)
    result = compare(ar, mdm, opts, examples=task_examples(16), log=lambda _: None)
    write_report(result, out)
    assert all(p.dtype == dtype and p.device.type == device for p in ar.model.parameters())
    return json.loads((out / "report.json").read_text())


def _numbers(tree: object) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, float) else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp32")
    _run("cpu", torch.float32, out)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.e2e
def test_compare_in_bf16_agrees_with_fp32(device: str, reference: Path, tmp_path: Path) -> None:
    data = _run(device, torch.bfloat16, tmp_path)
    ref = json.loads((reference / "report.json").read_text())
    assert list(data["tasks"]) == list(ref["tasks"]) == list(TASKS)
    for task in TASKS:
        assert data["tasks"][task]["n"] == ref["tasks"][task]["n"]
        assert all(math.isfinite(x) for x in _numbers(data["tasks"][task]) if x == x), task
        for model in ("ar", "mdm"):
            ours = Graph.load(tmp_path / "graphs" / f"{task}-{model}.json").scores
            theirs = Graph.load(reference / "graphs" / f"{task}-{model}.json").scores
            corr = torch.corrcoef(torch.stack([ours.double(), theirs.double()]))[0, 1]
            assert corr > 0.995, (task, model, float(corr))  # measured 0.9998-0.9999 on the CPU
