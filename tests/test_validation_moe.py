"""The mixture-of-experts ground truth (analyses.validation.groundtruth_moe): the model computes
its algorithm (checked against the rule and a forward written here from its weights), exactly the
true edges carry the answer under exact patching, and the methods meet their targets (exact AUC
1.0, EAP-IG >= 0.95) while plain EAP scores the saturated router edge ~e^-R of its effect.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from analyses.circuits import attribute
from analyses.validation.groundtruth import GAIN, VOCAB, GroundTruth
from analyses.validation.groundtruth_moe import A_WORDS, moe_routing
from analyses.validation.scoring import MEASURED, TARGETS, graph_rows, target_of
from ar2mdm.tasks import collate


@cache
def truth() -> GroundTruth:
    return moe_routing()


@cache
def graph(method: str):
    gt = truth()
    return attribute(gt.model, gt.items, method=method, steps=5, batch_size=16, nodes=True)


def hand_logits(gt: GroundTruth, ids: torch.Tensor) -> torch.Tensor:
    """The read position's logits from the weights: at the last token the stream is its embedding
    (every distractor writes JUNK, which nothing in the circuit reads), layer 1's router takes the
    top-2 of a softmax over its experts, each expert down(silu(gate x) * up x); [V]."""
    m = gt.model.model
    x = m.model.embed_tokens.weight[ids[-1]].double()
    moe = m.model.layers[1].mlp
    probs = (moe.gate.weight.double() @ x).softmax(-1)
    w, chosen = probs.topk(2)
    out = torch.zeros_like(x)
    for weight, e in zip(w, chosen.tolist(), strict=True):
        gate, up = (moe.experts.gate_up_proj[e].double() @ x).chunk(2)
        out += weight * (moe.experts.down_proj[e].double() @ (torch.nn.functional.silu(gate) * up))
    return m.lm_head.weight.double() @ (x + out)


def test_the_model_computes_its_algorithm() -> None:
    gt = truth()
    batch = collate(gt.items, 0)
    for ids_all in (batch.input_ids, batch.corrupted_ids):
        logits, cache_ = gt.model.run_with_cache(ids_all, names="L1.routing")
        for b, item in enumerate(gt.items):
            read = int(item.read_positions[0])
            last = VOCAB[int(ids_all[b, read])]
            expected = torch.zeros(logits.shape[-1])
            answer = item.correct_ids[0] if ids_all is batch.input_ids else item.counterfactual_ids[0]
            expected[int(answer)] = GAIN
            torch.testing.assert_close(logits[b, read], expected, atol=1e-3, rtol=0)
            torch.testing.assert_close(
                logits[b, read].double(), hand_logits(gt, ids_all[b, : read + 1]), atol=1e-3, rtol=0
            )
            routing = cache_["L1.routing"][b, read]
            own = 0 if last in A_WORDS else 1
            assert float(routing[own]) > 1 - 1e-4 and set(routing.nonzero().flatten().tolist()) == {0, 1}


def test_exactly_the_true_edges_carry_the_answer() -> None:
    gt = truth()
    g = graph("exact")
    assert g.meta["clean_metric"] == pytest.approx(GAIN, abs=1e-3)
    assert g.meta["corrupt_metric"] == pytest.approx(-GAIN, abs=1e-3)
    for edge, score in g.as_dict().items():
        if edge in gt.true_edges:  # each alone undoes the answer: -GAIN (the logit difference falls to ~0)
            assert score == pytest.approx(-GAIN, abs=1e-3), edge
        else:
            assert abs(score) < 1e-3, edge


@pytest.mark.parametrize("method", sorted(set(TARGETS) | set(MEASURED)))
def test_methods_meet_their_targets(method: str) -> None:
    for row in graph_rows(truth(), graph(method), method):
        target = target_of(method, truth().name, row["level"])
        assert target is not None and row["auc"] >= target, f"{method} {row['level']}: AUC {row['auc']:.4f}"
        if method == "exact":
            assert row["precision_at_k"] == 1.0


def test_eap_scores_the_saturated_router_edge_near_zero_and_eap_ig_crosses_the_switch() -> None:
    """At the clean input the router's top weight is 1 - e^-R: its gradient is ~e^-R, so EAP gives
    the router edge a thousandth of its effect; EAP-IG's path crosses the switch."""
    eap, ig = graph("eap"), graph("eap-ig-inputs")
    assert abs(eap.score("embed->L1.router")) < 0.01 * GAIN
    assert abs(ig.score("embed->L1.router")) > 0.3 * GAIN
    assert eap.score("L1.expert0->logits") == pytest.approx(-GAIN, abs=1e-3)  # linear in the expert's output
