"""Routing in ARM vs MDM (analyses.compare.routing): the statistics by hand on small tensors, the
reads against the probe's own cache, and `compare` on a mixture-of-experts pair (RND1's layout:
a Qwen3-MoE ARM and its published-layout MDM) with the routing section, its controls and claim.
"""

from __future__ import annotations

import math

import pytest
import replicas
import replicas_moe
import torch

from analyses.compare import CompareOptions, compare
from analyses.compare.routing import (
    align_experts,
    expert_overlap,
    relabelled,
    routing_at_reads,
    routing_claim,
    routing_stats,
    selective_experts,
    split_half_overlap,
    top_experts,
)
from analyses.statistics import Interval
from analyses.verdicts import KINDS, is_unfloored, verdict_kind
from ar2mdm.tasks import get_task, render
from probe import ProbedModel


def test_routing_statistics_by_hand() -> None:
    # 2 examples, 1 MoE layer (layer 3), 4 experts: weights on two experts per token
    reads = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.9, 0.0, 0.1, 0.0]]], dtype=torch.float64)
    load = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
    stats = routing_stats(reads, load, [3], k=2)
    h2 = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert stats["entropy_bits"] == pytest.approx((1.0 + h2) / 2)
    assert stats["load_balance"] == pytest.approx(1.5 / 2)  # H(.5, .25, .25) = 1.5 bits of log2(4) = 2
    assert stats["top_experts"] == ["L3.expert0", "L3.expert1"]  # mean weights .7, .25, .05, 0
    assert top_experts(reads, [3], 3) == ["L3.expert0", "L3.expert1", "L3.expert2"]


def test_overlaps_and_selectivity_by_hand() -> None:
    a = torch.tensor([[[0.6, 0.4, 0.0, 0.0]]] * 6, dtype=torch.float64)
    b = torch.tensor([[[0.0, 0.4, 0.6, 0.0]]] * 6, dtype=torch.float64)
    same, reps = expert_overlap(a, a, [0], 2, n_boot=50, seed=0)
    assert (same.estimate, same.low, same.high) == (1.0, 1.0, 1.0) and bool((reps == 1).all())
    other, _ = expert_overlap(a, b, [0], 2, n_boot=50, seed=0)
    assert other.estimate == pytest.approx(1 / 3)  # {0, 1} vs {2, 1}: 1 shared of 3
    assert split_half_overlap(a, [0], 2, n_boot=20, seed=0)[0].estimate == 1.0
    means = {"ioi": torch.tensor([[0.8, 0.1, 0.1, 0.0]]), "countdown": torch.tensor([[0.1, 0.1, 0.8, 0.0]])}
    found = selective_experts(means, [2])
    assert [x["expert"] for x in found["ioi"]] == ["L2.expert0"] and found["ioi"][0]["si"] == pytest.approx(0.7 / 0.9)
    assert [x["expert"] for x in found["countdown"]] == ["L2.expert2"]
    # the claim: 1 - mean Jaccard; a seed floor of the same size leaves it within the floor
    j = Interval(0.25, 0.2, 0.3)
    main = {"t": (j, torch.full((20,), 0.25, dtype=torch.float64))}
    claim = routing_claim({"main": main})
    assert claim["effect"].estimate == pytest.approx(0.75)
    assert claim["verdict"] == "holds (no seed floor: not tested against training-seed noise)"  # says so itself
    assert claim["seed_floor_missing"]
    floored = routing_claim({"main": main, "floor_ar": main})
    assert floored["verdict"] == "within the seed floor" and floored["seed_floor"] == pytest.approx(0.75)
    # a null pair (split halves) bounds the effect too: sampling alone moves 1 - Jaccard above 0
    noisy = {"t": (Interval(0.5, 0.4, 0.6), torch.full((20,), 0.5, dtype=torch.float64))}
    bounded = routing_claim({"main": main, "null_ar": noisy})
    assert bounded["bound_from"] == "null_ar" and bounded["bound"] == pytest.approx(0.5)
    assert verdict_kind(bounded["verdict"]) == "holds" and is_unfloored(bounded["verdict"])  # 0.75 clears 0.5
    assert routing_claim({"main": noisy, "null_ar": main})["verdict"] == "within the null pairs' noise"
    assert routing_claim({"main": main, "floor_ar": noisy})["verdict"] == "holds"  # a seed floor: plain words


def test_experts_are_matched_up_to_relabelling() -> None:
    """A twin whose experts are the reference's under another labelling is matched back exactly;
    after the match the overlap is the reference's own."""
    gen = torch.Generator().manual_seed(0)
    ref = {t: torch.rand(8, 2, 4, generator=gen, dtype=torch.float64) for t in ("ioi", "countdown", "sudoku")}
    perm = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])  # the twin's expert perm[l, e] is the reference's e
    twin = {t: torch.zeros_like(x) for t, x in ref.items()}
    for t, x in ref.items():
        for layer in range(2):
            twin[t][:, layer, perm[layer]] = x[:, layer]
    found = align_experts(ref, twin)
    assert torch.equal(found, perm)
    for t in ref:
        torch.testing.assert_close(relabelled(twin[t], found), ref[t])
        same, _ = expert_overlap(ref[t], relabelled(twin[t], found), [0, 1], 4, n_boot=10, seed=0)
        assert same.estimate == 1.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-pair")
    r = replicas_moe.rnd1(root / "mdm")
    twin = replicas_moe.rnd1(root / "mdm-twin", seed=5)
    ar = ProbedModel.from_checkpoint(str(replicas.ar_partner(r, root)), expect="ar", backend="torch")
    ar_twin = ProbedModel.from_checkpoint(
        str(replicas.ar_partner(r, root / "twin", seed=2)), expect="ar", backend="torch"
    )
    mdm = ProbedModel.from_checkpoint(str(r.path), expect="mdm", backend="torch")
    mdm_twin = ProbedModel.from_checkpoint(str(twin.path), expect="mdm", backend="torch")
    return ar, mdm, ar_twin, mdm_twin


def test_reads_are_the_probes_routing_at_the_read_positions(pair) -> None:
    ar, mdm, _, _ = pair
    task = get_task("ioi", mdm.tokenizer)
    examples = task.generate_aligned(5, mdm.tokenizer, seed=0, modes=("mdm",), mask_id=mdm.config.mask_id)
    items = [render(e, mdm.tokenizer, "mdm", shift=mdm.config.shift, mask_id=mdm.config.mask_id) for e in examples]
    reads, load = routing_at_reads(mdm, items, batch_size=2)
    assert reads.shape == (5, len(mdm.shape.moe_layers), mdm.shape.n_experts)
    total = torch.zeros_like(load)
    for b, item in enumerate(items):
        _, cache = mdm.run_with_cache(item.input_ids[None], names="L*.routing")
        pos = int(item.read_positions[0])
        for i, layer in enumerate(mdm.shape.moe_layers):
            # batched (padded) and single passes: the same weights to float32 rounding
            torch.testing.assert_close(reads[b, i], cache[f"L{layer}.routing"][0, pos].double(), atol=1e-6, rtol=1e-5)
            total[i] += (cache[f"L{layer}.routing"][0] > 0).double().sum(0)
    torch.testing.assert_close(load, total / total.sum(-1, keepdim=True))


@pytest.mark.e2e
def test_compare_reports_routing_with_its_controls(pair) -> None:
    ar, mdm, ar_twin, mdm_twin = pair
    opts = CompareOptions(
        tasks=("ioi", "greater_than"), pool_size=8, steps=2, n_boot=20, n_random=1, k_edges=10, k_nodes=2, batch_size=8,
        faithfulness=False, ablations=False, neurons=True, causal=False, denoising=(1.0, 0.0), common_correct=False,
    )  # fmt: skip
    result = compare(ar, mdm, opts, twins={"ar": ar_twin, "mdm": mdm_twin}, log=lambda _: None)
    routing = result.data["routing"]
    assert routing["moe_layers"] == [0, 1] and routing["n_experts"] == 4 and routing["k_experts"] == 4
    assert set(routing["tasks"]) == {"ioi", "greater_than"}, result.data["pools"]
    for entry in routing["tasks"].values():
        for role in ("ar", "mdm", "ar_twin", "mdm_twin"):
            stats = entry[role]
            assert 0 <= stats["entropy_bits"] <= 1.0 + 1e-9  # top-2: at most one bit
            assert 0 < stats["load_balance"] <= 1.0 + 1e-9 and len(stats["top_experts"]) == 4
        assert set(entry["overlap"]) == {"main", "null_ar", "null_mdm", "floor_ar", "floor_mdm"}
        assert [p["t"] for p in entry["denoising"]] == [1.0, 0.0] and entry["denoising"][0]["jaccard_with_t1"] == 1.0
    claim = routing["claim"]
    assert claim["verdict"] in KINDS  # seed floors measured: the plain words
    assert not claim["seed_floor_missing"] and set(claim["controls"]) == {
        "null_ar",
        "null_mdm",
        "floor_ar",
        "floor_mdm",
    }
    assert result.data["units"]["neurons_skipped"].startswith("every MLP is a mixture of experts")
    assert "heads" in result.data["units"]
    # the report shows it: summary.md lines and an HTML section with its figure
    from analyses.compare.report import markdown_summary, report_html

    text = markdown_summary(result.data)
    assert "Routing (4 experts, top-2" in text and "Jaccard ARM-MDM" in text and "along denoising" in text
    page = report_html(result.data, plotlyjs="cdn")
    assert "<h2>Routing (mixture of experts)</h2>" in page and "Routing: entropy and expert overlap" in page


def test_importance_heatmap_sums_an_moe_layers_experts() -> None:
    from analyses.circuit_plots import importance_heatmap
    from analyses.graph import Graph, node_importance
    from probe.names import Shape

    shape = Shape(2, 2, 2, 0, n_experts=3, moe_layers=(0, 1), shared_expert=True)
    graph = Graph(shape, {"L0.expert1->logits": 2.0, "L0.shared_expert->L1.router": -1.0, "L1.H0->logits": 0.5})
    s = node_importance(graph)
    z = importance_heatmap(graph).data[0].z
    assert z[0][2] == pytest.approx(sum(s[n] for n in shape.experts(0))) == pytest.approx(3.0)
    assert z[1][0] == pytest.approx(0.5)
