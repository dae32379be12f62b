"""Per-query-head k/v receivers (probe.ungroup) against the grouped model they come from.

Independent truths: the ungrouped model computes the grouped model's logits; gradients add over
the r copies of a key/value input, so each per-KV-head edge score is the sum of its r
per-query-head scores (EAP-IG); patching all r copies of an edge at once is patching the grouped
edge (exact patching, compared on the logits).
"""

from __future__ import annotations

import pytest
import torch
from conftest import N_HEADS, N_KV_HEADS
from test_circuits import rendered, toy_examples
from test_probe import folder

from analyses.circuits import attribute
from analyses.graph import Graph
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import collate
from probe import ProbedModel
from probe.ungroup import ungroup_kv_heads

R = N_HEADS // N_KV_HEADS
FAMILIES = [("llama", "mdm"), ("qwen2", "ar"), ("qwen3", "mdm"), ("gemma3_text", "mdm"), ("mistral", "ar")]


def pair(family: str, kind: str) -> tuple[ProbedModel, ProbedModel]:
    path = folder(family, kind)
    return (
        ProbedModel.from_checkpoint(path, backend="torch"),
        ProbedModel.from_checkpoint(path, backend="torch", ungroup_kv=True),
    )


def test_tiny_models_are_grouped() -> None:
    assert R > 1  # otherwise nothing below would test anything


@pytest.mark.parametrize(("family", "kind"), FAMILIES)
def test_ungrouped_model_computes_the_same_logits(family: str, kind: str) -> None:
    grouped, ungrouped = pair(family, kind)
    assert ungrouped.shape.n_kv_heads == N_HEADS and grouped.shape.n_kv_heads == N_KV_HEADS
    assert (grouped.config.kv_receivers, ungrouped.config.kv_receivers) == ("grouped", "per-query")
    receivers = [r for r in ungrouped.receivers() if r.startswith("L0.") and r.endswith(".k")]
    assert receivers == [f"L0.H{h}.k" for h in range(N_HEADS)]
    batch = collate(rendered(grouped, toy_examples(4)), 0)
    torch.testing.assert_close(ungrouped(batch), grouped(batch), atol=1e-5, rtol=1e-5)


def _summed_over_copies(ungrouped: Graph, grouped: Graph) -> torch.Tensor:
    """The ungrouped scores mapped onto the grouped edges: L.Hh.k|v -> L.H(h // r).k|v, summed."""
    index = {e: i for i, e in enumerate(grouped.edges)}
    out = torch.zeros_like(grouped.scores)
    for edge, score in zip(ungrouped.edges, ungrouped.scores, strict=True):
        sender, receiver = edge.split("->")
        layer, head, port = (receiver.split(".") + ["", ""])[:3]
        if port in ("k", "v"):
            receiver = f"{layer}.H{int(head[1:]) // R}.{port}"
        out[index[f"{sender}->{receiver}"]] += score
    return out


@pytest.mark.parametrize(("family", "kind"), FAMILIES[:4])
def test_grouped_scores_are_sums_of_per_query_head_scores(family: str, kind: str) -> None:
    grouped, ungrouped = pair(family, kind)
    items = rendered(grouped, toy_examples(5))
    g = attribute(grouped, items, method="eap-ig-inputs", steps=3, batch_size=5)
    u = attribute(ungrouped, items, method="eap-ig-inputs", steps=3, batch_size=5)
    assert len(u.edges) > len(g.edges) and u.meta["kv_receivers"] == "per-query"
    torch.testing.assert_close(_summed_over_copies(u, g), g.scores, atol=1e-6, rtol=1e-5)
    # the copies differ: query heads of one group read their keys differently
    k_scores = torch.tensor([s for e, s in zip(u.edges, u.scores, strict=True) if e.startswith("embed->L1.H")])
    assert float(k_scores.std()) > 1e-6


def test_patching_every_copy_is_patching_the_grouped_edge() -> None:
    grouped, ungrouped = pair("llama", "mdm")
    items = rendered(grouped, toy_examples(4))
    clean = collate(items, 0)
    _, cache = grouped.run_with_cache(clean, ["L0.H1"])
    value = 5 * torch.randn_like(cache["L0.H1"], generator=torch.Generator().manual_seed(0))
    base = grouped(clean)
    with grouped.intervene() as iv:
        iv.patch_edge("L0.H1", "L1.H1.k", value)  # key head 1 serves query heads 2 and 3
        want = grouped(clean)
    with ungrouped.intervene() as iv:
        iv.patch_edges([f"L0.H1->L1.H{h}.k" for h in range(R, 2 * R)], value)
        got = ungrouped(clean)
    with ungrouped.intervene() as iv:
        iv.patch_edges([f"L0.H1->L1.H{R}.k"], value)  # one copy only: another intervention
        partial = ungrouped(clean)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    effect = float((want - base).abs().max())
    assert effect > 1e-3 and float((partial - want).abs().max()) > 0.05 * effect


def test_models_without_grouped_attention_are_unchanged() -> None:
    pm = ProbedModel.from_checkpoint(folder("gpt2"), backend="torch", ungroup_kv=True)
    assert pm.config.kv_receivers == "grouped" and pm.shape.n_kv_heads == pm.shape.n_heads


def test_attention_that_does_not_repeat_kv_heads_is_refused() -> None:
    model = ProbedModel.from_checkpoint(folder("llama"), backend="torch").model
    model.model.layers[1].self_attn.num_key_value_groups = 1
    before = model.model.layers[0].self_attn.k_proj.out_features
    with pytest.raises(UserError, match="block 1 has no separate k/v projections repeated"):
        ungroup_kv_heads(model)
    assert model.model.layers[0].self_attn.k_proj.out_features == before  # nothing widened


@pytest.mark.parametrize("backend", ["nnsight", "tl"])
def test_other_backends_read_the_ungrouped_model(backend: str) -> None:
    grouped = ProbedModel.from_checkpoint(folder("llama"), backend="torch")
    other = ProbedModel.from_checkpoint(folder("llama"), backend=backend, ungroup_kv=True)
    batch = collate(rendered(grouped, toy_examples(3)), 0)
    names = ["L1.H3.pattern", "L1.H2"]
    logits, cache = other.run_with_cache(batch, names)
    want_logits, want = ProbedModel.from_checkpoint(folder("llama"), backend="torch", ungroup_kv=True).run_with_cache(
        batch, names
    )
    torch.testing.assert_close(logits, grouped(batch), atol=1e-4, rtol=1e-4)
    for name in names:
        torch.testing.assert_close(cache[name], want[name], atol=1e-5, rtol=1e-5)


# --- the reference EAP-IG code's names ------------------------------------------------------


def test_reference_names_by_hand_and_round_trip() -> None:
    from analyses.reference_names import from_reference, to_reference

    cases = {
        "embed->L0.H1.q": "input->a0.h1<q>",
        "L0.H1->L2.H3.k": "a0.h1->a2.h3<k>",
        "L0.mlp->L1.H0.v": "m0->a1.h0<v>",
        "L0.H2->L0.mlp": "a0.h2->m0",
        "L1.mlp->logits": "m1->logits",
    }
    for ours, theirs in cases.items():
        assert to_reference(ours) == theirs and from_reference(theirs) == ours
    with pytest.raises(UserError, match="not a reference edge name"):
        from_reference("a0.h1->a2.h3<z>")


def test_graph_from_reference_json_reads_a_per_query_graph(tmp_path) -> None:
    import json

    from analyses.reference_names import graph_from_reference, reference_scores, to_reference

    _, ungrouped = pair("llama", "mdm")
    items = rendered(ungrouped, toy_examples(4))
    g = attribute(ungrouped, items, method="eap", batch_size=4)
    saved = {
        "cfg": {},
        "nodes": {},
        "edges": {
            to_reference(e): {"score": float(s), "in_graph": False} for e, s in zip(g.edges, g.scores, strict=True)
        },
    }
    path = tmp_path / "eapig.json"
    path.write_text(json.dumps(saved))
    back = graph_from_reference(ungrouped.shape, path)
    torch.testing.assert_close(back.scores, g.scores)
    assert reference_scores(back) == {k: v["score"] for k, v in saved["edges"].items()}
    grouped = pair("llama", "mdm")[0]
    with pytest.raises(UserError, match="per query head"):
        graph_from_reference(grouped.shape, path)
    del saved["edges"][to_reference(g.edges[0])]
    with pytest.raises(UserError, match="1 edges of the graph missing"):
        graph_from_reference(ungrouped.shape, saved)
