"""The harder ground-truth models (`analyses.validation.groundtruth_hard`): they compute their
algorithm, exactly their true edges carry the answer under exact patching (the self-repair
model's backup showing as it was built to), and every method keeps its measured AUC."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from analyses.circuits import attribute
from analyses.metrics import Targets, metric_values
from analyses.validation.groundtruth import GAIN
from analyses.validation.groundtruth_hard import HARD_BUILDERS
from analyses.validation.scoring import METHODS, graph_rows, target_of
from ar2mdm.tasks import collate

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@cache
def truth(name: str):
    return HARD_BUILDERS[name]()


@cache
def graph(name: str, method: str):
    gt = truth(name)
    return attribute(gt.model, gt.items, method=method, steps=5, batch_size=16, nodes=True)


@pytest.mark.parametrize("name", sorted(HARD_BUILDERS))
def test_the_model_answers_and_the_corruption_flips_it(name: str) -> None:
    gt = truth(name)
    batch = collate(gt.items, gt.model.tokenizer.pad_token_id)
    targets = Targets.of(gt.items)
    clean = metric_values("logit_diff", gt.model(batch), targets)
    corrupt = metric_values("logit_diff", gt.model(batch.corrupted_ids, attention_mask=batch.attention_mask), targets)
    torch.testing.assert_close(clean, torch.full_like(clean, GAIN), atol=1e-3, rtol=0)
    torch.testing.assert_close(corrupt, torch.full_like(corrupt, -GAIN), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", sorted(HARD_BUILDERS))
def test_exactly_the_true_edges_carry_the_answer(name: str) -> None:
    gt = truth(name)
    for edge, score in graph(name, "exact").as_dict().items():
        if edge in gt.true_edges:
            assert abs(score) > GAIN / 2, edge
        else:
            assert abs(score) < 1e-3, edge


def test_the_backup_repairs_half_of_the_primary_head() -> None:
    """Self-repair: patching the primary head L0.H2 into the MLP costs 2 GAIN; patching the whole
    head costs GAIN (the backup, seeing L0.H2 disagree with position 1, writes the answer back);
    each edge into the backup alone adds GAIN (it fires while the MLP still answers)."""
    g = graph("self-repair", "exact")
    assert g.score("L0.H2->L1.mlp") == pytest.approx(-2 * GAIN, abs=1e-2)
    assert g.node_scores["L0.H2"] == pytest.approx(-GAIN, abs=1e-2)
    assert g.score("L0.H2->L1.H0.q") == pytest.approx(GAIN, abs=1e-2)
    assert g.score("embed->L1.H0.k") == pytest.approx(GAIN, abs=1e-2)
    assert abs(g.score("L1.H0->logits")) < 1e-3  # silent on the consistent corrupted input


def test_the_bidirectional_circuit_reads_both_sides_of_the_mask() -> None:
    """Every link carries a third of the corruptions (query, key, value): -2/3 of 2 GAIN."""
    g = graph("mdm-bidirectional", "exact")
    for edge in ("L0.H3->L1.H1.q", "L0.H1->L1.H1.v", "embed->L1.H1.k"):
        assert g.score(edge) == pytest.approx(-2 * GAIN / 3, abs=1e-2), edge


@pytest.mark.parametrize("method", [m for m in METHODS if m != "exact"])
@pytest.mark.parametrize("name", sorted(HARD_BUILDERS))
def test_methods_keep_their_measured_auc(method: str, name: str) -> None:
    for row in graph_rows(truth(name), graph(name, method), method):
        target = target_of(method, name, row["level"])
        assert target is not None and row["auc"] >= target, f"{name} {method} {row['level']}: {row['auc']:.4f}"
