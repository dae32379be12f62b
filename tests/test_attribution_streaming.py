"""Streaming attribution and its memory model.

- The streamed computation (small batches, one EAP-IG point per pass, sender deltas offloaded to
  CPU memory or disk, receiver gradients streamed into their sum) gives the scores of the
  unchunked one (the whole data in one batch, every point of EAP-IG in one pass).
- `run_with_grads(receiver_sink=)` hands over exactly the gradients `GradResult.inputs` holds.
- The memory model: its terms equal sizes computed by hand from the graph; the autograd state it
  counts on the meta device equals the bytes autograd saves in a real CPU pass; it scales with
  the batch; offloading removes the deltas; a GPU without room is refused with a clear error.
"""

from __future__ import annotations

import pytest
import torch
from test_circuits import rendered, toy_examples
from test_probe import folder, probed
from transformers import AutoModelForCausalLM

from analyses.attribution_memory import _saved_bytes, check_free_memory, predict_for, predict_memory, shape_of
from analyses.circuits import attribute
from analyses.graph import Graph
from analyses.metrics import Targets, metric_values
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import collate


@pytest.mark.parametrize(("family", "kind"), [("llama", "mdm"), ("gemma3_text", "mdm"), ("gpt2", "ar")])
@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations"])
def test_streamed_scores_equal_the_unchunked_computation(family: str, kind: str, method: str) -> None:
    pm = probed(family, kind)
    items = rendered(pm, toy_examples(5))
    whole = attribute(pm, items, method=method, steps=3, batch_size=None, steps_per_pass=3, per_example=True)
    for offload in ("cpu", "disk"):
        streamed = attribute(
            pm, items, method=method, steps=3, batch_size=2, steps_per_pass=1, offload=offload, per_example=True
        )
        torch.testing.assert_close(streamed.scores, whole.scores, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(streamed.examples, whole.examples, atol=1e-6, rtol=1e-5)
        assert streamed.node_scores == pytest.approx(whole.node_scores, rel=1e-5, abs=1e-6)
    assert float(whole.scores.abs().max()) > 1e-4  # not a vacuous equality
    # two points per pass of three: a last pass with one point
    two = attribute(pm, items, method=method, steps=3, batch_size=3, steps_per_pass=2)
    torch.testing.assert_close(two.scores, whole.scores, atol=1e-6, rtol=1e-5)


def test_receiver_sink_gets_the_gradients_the_result_holds() -> None:
    pm = probed("llama", "mdm")
    items = rendered(pm, toy_examples(3))
    batch = collate(items, 0)
    targets = Targets.of(items)

    def metric(lg):
        return metric_values("logit_diff", lg, targets).sum()

    kept = pm.run_with_grads(batch, metric, receivers=pm.receivers())
    got: dict[str, torch.Tensor] = {}
    streamed = pm.run_with_grads(batch, metric, receivers=pm.receivers(), receiver_sink=got.__setitem__)
    assert len(streamed.inputs) == 0
    assert sorted(got) == sorted(pm.receivers())
    for name in pm.receivers():
        torch.testing.assert_close(got[name], kept.inputs[name], msg=name)


def test_memory_terms_by_hand() -> None:
    pm = probed("llama", "ar")
    cfg = pm.model.config
    shape, d_model, _, vocab = shape_of(cfg)
    graph = Graph(shape)
    S, R = len(graph.senders), len(graph.receivers)
    # senders: embed + n_layers x (heads + MLP); receivers: q per head, k/v per KV head, MLPs, logits
    assert S == 1 + shape.n_layers * (shape.n_heads + 1)
    assert R == shape.n_layers * (shape.n_heads + 2 * shape.n_kv_heads + 1) + 1
    B, T = 3, 7
    est = predict_for(pm, batch=B, seq_len=T, method="eap-ig-inputs")
    assert est.terms["sender values"] == S * B * T * d_model * 4
    assert est.terms["deltas"] == S * B * T * d_model * 4
    assert est.terms["receiver gradients"] == R * B * T * d_model * 4
    assert est.terms["scores"] == S * R * 8
    assert est.weights == sum(p.numel() * 4 for p in pm.model.parameters())
    assert est.peak == est.weights + max(est.phases.values())
    assert est.phases["caches"] == 2 * S * B * T * d_model * 4 + 2 * B * T * vocab * 4
    # twice the batch: every batch-proportional term doubles
    est2 = predict_for(pm, batch=2 * B, seq_len=T, method="eap-ig-inputs")
    for term in ("sender values", "deltas", "receiver gradients"):
        assert est2.terms[term] == 2 * est.terms[term]
    assert est2.analysis > 1.8 * est.analysis
    # deltas leave memory when offloaded to disk (CPU) or to the CPU (GPU)
    assert predict_for(pm, batch=B, seq_len=T, method="eap-ig-inputs", offload="disk").terms["deltas"] == 0
    gpu = predict_memory(cfg, batch=B, seq_len=T, offload="cpu", device="cuda")
    assert gpu.terms["deltas"] == 0
    assert predict_memory(cfg, batch=B, seq_len=T, offload="cpu", device="cpu").terms["deltas"] > 0
    bf16 = predict_memory(cfg, batch=B, seq_len=T, dtype=torch.bfloat16)
    assert bf16.terms["sender values"] == est.terms["sender values"] // 2
    assert bf16.terms["receiver gradients"] == est.terms["receiver gradients"]  # summed in float32
    with pytest.raises(UserError, match="offload"):
        predict_memory(cfg, batch=B, seq_len=T, offload="tape")
    with pytest.raises(UserError, match="no memory model"):
        predict_memory(cfg, batch=B, seq_len=T, method="lrp")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_meta_count_equals_the_bytes_a_real_pass_saves(family: str) -> None:
    """The autograd state counted on the meta device (no memory) equals what autograd saves when
    the same model runs for real on the CPU (storages counted once, weights excluded)."""
    model = AutoModelForCausalLM.from_pretrained(folder(family), attn_implementation="eager").eval()
    model.requires_grad_(False)
    rows, T = 3, 9
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (rows, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embeds = model.get_input_embeddings()(ids).requires_grad_(True)
        model(inputs_embeds=embeds, attention_mask=torch.ones(rows, T, dtype=torch.long), use_cache=False)
    import json

    key = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    assert _saved_bytes(key, "float32", rows, T) == sum(seen.values()) > 0


def test_attribute_logs_the_prediction_and_refuses_a_full_gpu() -> None:
    pm = probed("llama", "mdm")
    items = rendered(pm, toy_examples(4))
    lines: list[str] = []
    graph = attribute(pm, items, method="eap-ig-inputs", steps=2, batch_size=2, log=lines.append)
    assert len(lines) == 1 and "predicted peak" in lines[0] and "GiB" in lines[0]
    B, T = 2, collate(items[:2], 0).input_ids.shape[1]
    assert graph.meta["memory_predicted"] == predict_for(pm, batch=B, seq_len=T, method="eap-ig-inputs").peak
    est = predict_for(pm, batch=B, seq_len=T, method="eap-ig-inputs")
    check_free_memory(est, free=est.analysis + 1, where="cuda:0")  # fits: no error
    with pytest.raises(UserError, match="lower batch_size"):
        check_free_memory(est, free=est.analysis - 1, where="cuda:0")


def test_a_config_the_meta_device_cannot_build() -> None:
    """A config transformers cannot build (here: no model type) gets the analytic pass estimate
    when the weights' bytes are given, and a UserError asking for them when not."""
    from transformers import PretrainedConfig

    cfg = PretrainedConfig(
        num_attention_heads=2, hidden_size=8, num_hidden_layers=1, vocab_size=10, intermediate_size=16
    )
    est = predict_memory(cfg, batch=2, seq_len=3, weights=1000)
    assert est.counted == "analytic" and est.weights == 1000
    # the analytic pass: 1 layer x 6 tokens x (10 x 8 + 4 x 16) + 3 x 2 rows x 2 heads x 3 x 3, logits
    saved = (1 * 6 * (10 * 8 + 4 * 16) + 3 * 2 * 2 * 3 * 3 + 6 * (10 + 8)) * 4
    probe_points = 1 * 6 * (2 * 8 + 2 * (2 + 4) * 4) * 4
    assert est.terms["one pass"] == saved + 2 * 6 * 10 * 4 + probe_points
    with pytest.raises(UserError, match="pass weights="):
        predict_memory(cfg, batch=2, seq_len=3)
