"""Interventions at head, MLP, neuron, residual and position granularity, and edge patching,
checked against hand-edited weights, hand-computed values and each other."""

from __future__ import annotations

import copy

import pytest
import torch
from test_probe import FAMS, batch, hf, o_columns_zeroed, probed

from ar2mdm.common.errors import UserError
from probe import Cache


def down_column_zeroed(model, layer: int, neuron: int):
    model = copy.deepcopy(model)
    with torch.no_grad():
        if hasattr(model, "transformer"):
            model.transformer.h[layer].mlp.c_proj.weight[neuron, :] = 0
        else:
            model.model.layers[layer].mlp.down_proj.weight[:, neuron] = 0
    return model


@pytest.mark.parametrize("family", FAMS)
def test_zero_neuron_equals_zeroed_down_projection_column(family: str) -> None:
    ids, _, mask = batch(family)
    pm = probed(family)
    with torch.no_grad():
        expected = down_column_zeroed(hf(family), 0, 5)(ids, attention_mask=mask).logits
    with pm.intervene() as iv:
        iv.zero("L0.mlp.neuron5")
        got = pm(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    _, cache = pm.run_with_cache(ids, "L0.mlp.neurons", attention_mask=mask)
    assert cache["L0.mlp.neuron5"].shape == ids.shape
    torch.testing.assert_close(cache["L0.mlp.neuron5"], cache["L0.mlp.neurons"][..., 5])


def test_position_granularity_on_a_last_layer_head() -> None:
    """Zeroing L1.H2 at position 3 only: position 3 reads as under full ablation (nothing after
    layer 1 mixes positions), every other position as in the clean run (causal model)."""
    ids, _, mask = batch()
    pm = probed("llama")
    clean = pm(ids, attention_mask=mask)
    with torch.no_grad():
        full = o_columns_zeroed(hf("llama"), 1, 2, pm.config.d_head)(ids, attention_mask=mask).logits
    for pos in (3, [3], torch.tensor([False, False, False, True] + [False] * (ids.shape[1] - 4))):
        with pm.intervene() as iv:
            iv.zero("L1.H2", pos=pos)
            got = pm(ids, attention_mask=mask)
        torch.testing.assert_close(got[:, 3], full[:, 3], atol=1e-5, rtol=0)
        others = [i for i in range(ids.shape[1]) if i != 3]
        torch.testing.assert_close(got[:, others], clean[:, others], atol=1e-6, rtol=0)
    row_mask = torch.zeros_like(ids, dtype=torch.bool)
    row_mask[0, 3] = True  # [B, T] masks select per row
    with pm.intervene() as iv:
        iv.zero("L1.H2", pos=row_mask)
        got = pm(ids, attention_mask=mask)
    torch.testing.assert_close(got[0, 3], full[0, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], clean[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_add_to_embed_equals_shifted_input_embeddings(family: str) -> None:
    ids, _, mask = batch(family)
    pm = probed(family)
    shift = torch.randn(pm.config.d_model, generator=torch.Generator().manual_seed(1)) * 0.1
    with pm.intervene() as iv:
        iv.add("embed", shift)
        got = pm(ids, attention_mask=mask)
    model = hf(family)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids) + shift
        expected = model(inputs_embeds=embeds, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_set_add_and_mean_ablate_by_hand() -> None:
    ids, cids, mask = batch()
    pm = probed("llama")
    _, clean = pm.run_with_cache(ids, attention_mask=mask)
    _, ref = pm.run_with_cache(cids, attention_mask=mask)
    mean = ref["L0.H1"].mean(0, keepdim=True)
    with pm.intervene() as iv:
        iv.mean_ablate("L0.H1", ref)
        _, ablated = pm.run_with_cache(ids, "L0.H1", attention_mask=mask)
        by_mean = pm(ids, attention_mask=mask)
    torch.testing.assert_close(ablated["L0.H1"], mean.expand_as(clean["L0.H1"]), atol=1e-6, rtol=0)
    with pm.intervene() as iv:
        iv.set("L0.H1", mean)
        torch.testing.assert_close(pm(ids, attention_mask=mask), by_mean)
    overall = ref["L0.H1"][mask.bool()].mean(0)
    with pm.intervene() as iv:
        iv.mean_ablate("L0.H1", ref, over="all", mask=mask)
        _, ablated = pm.run_with_cache(ids, "L0.H1", attention_mask=mask)
    torch.testing.assert_close(ablated["L0.H1"][0, 0], overall, atol=1e-6, rtol=0)
    with pm.intervene() as iv:
        iv.add("L1.mlp", clean["L1.mlp"])  # doubling the last MLP's write
        _, doubled = pm.run_with_cache(ids, "L1.mlp", attention_mask=mask)
    torch.testing.assert_close(doubled["L1.mlp"], 2 * clean["L1.mlp"])


def test_contexts_nest_and_clear() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    clean = pm(ids, attention_mask=mask)
    with pm.intervene() as outer:
        outer.zero("L0.H0")
        only_outer = pm(ids, attention_mask=mask)
        with pm.intervene() as inner:
            inner.zero("L1.*")
            both = pm(ids, attention_mask=mask)
        torch.testing.assert_close(pm(ids, attention_mask=mask), only_outer)
    assert (both - only_outer).abs().max() > 1e-4
    torch.testing.assert_close(pm(ids, attention_mask=mask), clean)
    iv = pm.interventions().zero("L0.H0")
    with pm.intervene(iv):
        torch.testing.assert_close(pm(ids, attention_mask=mask), only_outer)


# --- edges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMS)
def test_patching_all_outgoing_edges_equals_patching_the_node(family: str) -> None:
    ids, cids, mask = batch(family)
    pm = probed(family, "mdm")
    _, corrupted = pm.run_with_cache(cids, attention_mask=mask)
    for sender in ("embed", "L0.H1", "L0.mlp"):
        with pm.intervene() as iv:
            iv.patch(sender, corrupted)
            node = pm(ids, attention_mask=mask)
        with pm.intervene() as iv:
            iv.patch_edge(sender, "*", corrupted)
            edges = pm(ids, attention_mask=mask)
        torch.testing.assert_close(edges, node, atol=1e-5, rtol=0)


def test_edge_into_one_receiver_reaches_only_that_receiver() -> None:
    ids, cids, mask = batch()
    pm = probed("llama")  # 4 query heads, 2 KV heads: KV head 0 serves query heads 0 and 1
    _, clean = pm.run_with_cache(ids, attention_mask=mask)
    _, corrupted = pm.run_with_cache(cids, attention_mask=mask)

    def changed(receiver: str) -> list[bool]:
        with pm.intervene() as iv:
            iv.patch_edge("L0.H2", receiver, corrupted)
            _, cache = pm.run_with_cache(ids, ["L1.resid_pre", "L1.H*", "L1.mlp"], attention_mask=mask)
        torch.testing.assert_close(cache["L1.resid_pre"], clean["L1.resid_pre"])  # skip path intact
        return [bool((cache[n] - clean[n]).abs().max() > 1e-7) for n in ("L1.H0", "L1.H1", "L1.H2", "L1.H3", "L1.mlp")]

    assert changed("L1.H3.q") == [False, False, False, True, True]
    assert changed("L1.H0.k") == [True, True, False, False, True]
    assert changed("L1.H1.v") == [False, False, True, True, True]
    assert changed("L1.mlp") == [False, False, False, False, True]


def test_zero_edge_to_logits_removes_the_direct_path() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    _, clean = pm.run_with_cache(ids, attention_mask=mask)
    with pm.intervene() as iv:
        iv.patch_edge("L0.H1", "logits", torch.zeros(()))
        got = pm(ids, attention_mask=mask)
    final = clean["L1.resid_post"] - clean["L0.H1"]
    expected = pm.layout.final_norm(final) @ pm.layout.unembed_weight().T
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_chunked_runs_slice_patch_sources() -> None:
    ids, cids, mask = batch()
    pm = probed("llama")
    _, corrupted = pm.run_with_cache(cids, attention_mask=mask)
    with pm.intervene() as iv:
        iv.patch("L0.*", corrupted, pos=torch.ones_like(ids, dtype=torch.bool))
        iv.patch_edge("L0.mlp", "L1.H0.q", corrupted)
        whole, whole_cache = pm.run_with_cache(ids, attention_mask=mask)
        chunked, chunked_cache = pm.run_with_cache(ids, attention_mask=mask, batch_size=1)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    for name in whole_cache:
        torch.testing.assert_close(chunked_cache[name], whole_cache[name], atol=1e-6, rtol=0)


def test_intervention_errors(unchecked_types) -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    iv = pm.interventions()
    with pytest.raises(UserError, match="layer 7 does not exist"):
        iv.zero("L7.H0")
    with pytest.raises(UserError, match="4 heads"):
        iv.zero("L0.H4")
    with pytest.raises(UserError, match="2 key/value heads"):
        iv.zero("L0.H2.k")
    with pytest.raises(UserError, match="matches no name"):
        iv.zero("L*.attn")
    with pytest.raises(UserError, match="cannot intervene on 'logits'"):
        iv.zero("logits")
    with pytest.raises(UserError, match="not a component name"):
        iv.zero("layer0.head1")
    with pytest.raises(UserError, match="Cache"):
        iv.patch("L0.H0", {"L0.H0": torch.zeros(1)})  # type: ignore[arg-type]
    with pytest.raises(UserError, match="no receiver there reads"):
        iv.patch_edge("L1.H0", "L0.H0.q", torch.zeros(()))
    with pytest.raises(UserError, match="senders are embed"):
        iv.patch_edge("L0.resid_post", "logits", torch.zeros(()))
    with pytest.raises(UserError, match="holds no 'L0.H0'"):
        iv.patch("L0.H0", Cache({}))
    with pm.intervene() as bad:
        bad.set("L0.H0", torch.zeros(3, 5, 32))
        with pytest.raises(UserError, match=rf"shape \[3, 5, 32\]; it must broadcast to \[2, {ids.shape[1]}, 32\]"):
            pm(ids, attention_mask=mask)
    with pm.intervene() as bad:
        bad.zero("L0.H0", pos=40)
        with pytest.raises(UserError, match=f"length-{ids.shape[1]}"):
            pm(ids, attention_mask=mask)
