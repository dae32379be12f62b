"""Cache name filters, storage dtype, derived names, and streaming to safetensors shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_probe import batch, probed

from ar2mdm.common.errors import UserError
from probe import Cache, DiskCache
from probe.cache import CacheKeyError, LazyHead, head_differences
from probe.names import Shape, parse, select


def test_name_filters_select_what_they_say() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    _, everything = pm.run_with_cache(ids, attention_mask=mask)
    assert len(everything) == 1 + 2 * 8 + 1 and not any(k.endswith(".pattern") for k in everything)
    _, heads = pm.run_with_cache(ids, "L1.H*", attention_mask=mask)
    assert list(heads) == ["L1.H0", "L1.H1", "L1.H2", "L1.H3"]
    _, mixed = pm.run_with_cache(ids, ["embed", "L0.mlp", "L*.resid_post", "L0.H2.pattern"], attention_mask=mask)
    assert list(mixed) == ["embed", "L0.H2.pattern", "L0.mlp", "L0.resid_post", "L1.resid_post"]
    _, by_predicate = pm.run_with_cache(ids, lambda n: n.endswith(".mlp"), attention_mask=mask)
    assert list(by_predicate) == ["L0.mlp", "L1.mlp"]
    for name in heads:
        torch.testing.assert_close(heads[name], everything[name])
    torch.testing.assert_close(mixed["L0.H2.pattern"].sum(-1), torch.ones(ids.shape), atol=1e-6, rtol=0)


def test_unknown_names_are_errors_not_empty_results() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    with pytest.raises(UserError, match="matches no name"):
        pm.run_with_cache(ids, "L*.attn_out", attention_mask=mask)
    with pytest.raises(UserError, match="layer 2 does not exist"):
        pm.run_with_cache(ids, ["L0.H0", "L2.H0"], attention_mask=mask)
    with pytest.raises(UserError, match="not available here"):
        pm.run_with_cache(ids, "L0.H0.q", attention_mask=mask)  # receivers are not cached
    _, cache = pm.run_with_cache(ids, "L0.H0", attention_mask=mask)
    with pytest.raises(CacheKeyError, match="holds no 'L1.H0'.*names=") as err:
        cache["L1.H0"]
    assert isinstance(err.value, KeyError) and "L1.H0" not in cache and "L0.H0" in cache


def test_storage_dtype_device_and_derived_names() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    _, full = pm.run_with_cache(ids, ["L0.resid_pre", "L0.mlp.neurons"], attention_mask=mask)
    _, half = pm.run_with_cache(
        ids, ["L0.resid_pre", "L0.mlp.neurons"], attention_mask=mask, dtype=torch.bfloat16, device="cpu"
    )
    assert all(v.dtype == torch.bfloat16 for v in half.values())
    torch.testing.assert_close(half["L0.mlp.neurons"].float(), full["L0.mlp.neurons"], atol=1e-2, rtol=1e-2)
    assert half.nbytes * 2 == full.nbytes
    torch.testing.assert_close(full["L0.mlp.neuron7"], full["L0.mlp.neurons"][..., 7])
    torch.testing.assert_close(full["L0.H3.q"], full["L0.resid_pre"])  # a receiver reads resid_pre


def test_heads_stack_and_views_share_memory() -> None:
    ids, _, mask = batch()
    pm = probed("llama")
    _, cache = pm.run_with_cache(ids, "L0.H*", attention_mask=mask)
    stacked = cache.heads(0)
    assert stacked.shape == (*ids.shape, 4, 32)
    torch.testing.assert_close(stacked[:, :, 2], cache["L0.H2"])
    assert cache.nbytes == stacked.numel() * 4  # four views of one tensor, counted once


def test_chunked_in_memory_equals_one_pass() -> None:
    ids, _, mask = batch()
    pm = probed("llama", "mdm")
    logits, cache = pm.run_with_cache(ids, attention_mask=mask)
    logits1, cache1 = pm.run_with_cache(ids, attention_mask=mask, batch_size=1)
    torch.testing.assert_close(logits1, logits, atol=1e-6, rtol=0)
    assert list(cache1) == list(cache)
    for name in cache:
        torch.testing.assert_close(cache1[name], cache[name], atol=1e-6, rtol=0)


def test_cache_to_disk_streams_shards_that_read_back(tmp_path: Path) -> None:
    ids, _, mask = batch()
    pm = probed("qwen2")
    _, expected = pm.run_with_cache(ids, attention_mask=mask)
    disk = pm.cache_to_disk(ids, tmp_path / "cache", attention_mask=mask, batch_size=1)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "index.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["shards"][1]["rows"] == 1
    assert len(disk) == 2 and set(disk.names) == set(expected)
    for name in expected:
        torch.testing.assert_close(disk[name], expected[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(disk["L1.mlp.neuron9"], expected["L1.mlp.neuron9"], atol=1e-6, rtol=0)
    assert "L1.mlp.neuron9" in disk and "L1.H0.k" in disk and "L5.mlp" not in disk
    shards = list(DiskCache(tmp_path / "cache").shards())
    assert [s["L0.H1"].shape[0] for s in shards] == [1, 1]
    with pytest.raises(UserError, match="already holds a cache"):
        pm.cache_to_disk(ids, tmp_path / "cache", attention_mask=mask)
    with pytest.raises(UserError, match="not a probe disk cache"):
        DiskCache(tmp_path)
    small = pm.cache_to_disk(ids, tmp_path / "half", "L*.H*", attention_mask=mask, dtype=torch.float16)
    assert small["L1.H2"].dtype == torch.float16 and "L0.mlp" not in small


def test_cache_save_load_round_trip(tmp_path: Path) -> None:
    ids, _, mask = batch()
    _, cache = probed("gpt2").run_with_cache(ids, ["L0.H*", "L1.H1.pattern"], attention_mask=mask)
    back = Cache.load(cache.save(tmp_path / "c.safetensors"))
    assert set(back) == set(cache)
    for name in cache:
        torch.testing.assert_close(back[name], cache[name])
    assert len(Cache.cat([cache, cache])["L0.H0"]) == 4


def test_names_parse_and_select() -> None:
    assert str(parse("L12.mlp.neuron300")) == "L12.mlp.neuron300"
    assert parse("L1.H2.k").port == "k" and parse("L1.H2.pattern").kind == "pattern"
    for bad in ("L1.H", "l1.h2", "L1.mlp.neuronX", "embeds", "L1.H2.z"):
        with pytest.raises(UserError, match="not a component name"):
            parse(bad)
    shape = Shape(n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=8)
    with pytest.raises(UserError, match="8 neurons"):
        shape.check("L0.mlp.neuron8")
    universe = shape.cacheable()
    assert select("L?.H3", universe, shape, "x") == ["L0.H3", "L1.H3"]
    assert select(None, ["a", "b"], shape, "x") == ["a", "b"]
    assert len(shape.components()) == 1 + 2 * (1 + 8 + 4 + 1 + 8 + 1) + 1
    assert shape.all_receivers()[-1] == "logits" and "L1.H1.v" in shape.all_receivers()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lazy_heads_equal_the_computed_heads_and_sum_to_the_attention_output(family: str) -> None:
    """Recorded heads are kept as z and computed when read (`LazyHead`); they equal the heads the
    pass computes when the layer is edited (an edit that adds 0), and with the projection's bias
    they sum to the output projection's output, read by a plain forward hook on the HF module."""
    ids, _, mask = batch(family)
    pm = probed(family)
    seen = {}
    o_proj = pm.layout.blocks[1].o
    handle = o_proj.register_forward_hook(lambda _m, _a, out: seen.update(out=out.detach()))
    try:
        _, lazy = pm.run_with_cache(ids, "L1.H*", attention_mask=mask)
    finally:
        handle.remove()
    # nothing computed yet (the run-time type checker of the test suite may read one head)
    assert isinstance(lazy._t["L1.H3"], LazyHead) and isinstance(lazy._t["L1.H2"], LazyHead)
    z_bytes = lazy.nbytes
    with pm.intervene() as iv:
        iv.add("L1.H0", 0.0)  # the layer's heads are now computed in the pass
        _, eager = pm.run_with_cache(ids, "L1.H*", attention_mask=mask)
    assert not any(isinstance(eager._t[n], LazyHead) for n in eager)
    for name in eager:
        torch.testing.assert_close(lazy[name], eager[name], atol=1e-6, rtol=1e-5)
    assert not any(isinstance(lazy._t[n], LazyHead) for n in lazy)  # ... and kept once read
    bias = pm.layout.o_bias(1)
    total = lazy.heads(1).sum(2) + (0 if bias is None else bias)
    torch.testing.assert_close(total, seen["out"], atol=1e-5, rtol=1e-5)
    assert z_bytes <= eager.nbytes / 2  # z (+ at most one read head) against every head's [B, T, d_model]


def test_head_differences_from_z_equal_the_difference_of_the_heads() -> None:
    ids, cids, mask = batch()
    pm = probed("llama")
    names = ["L1.H0", "L1.H2", "L1.H3"]
    _, a = pm.run_with_cache(cids, names, attention_mask=mask)
    _, b = pm.run_with_cache(ids, names, attention_mask=mask)
    a["L1.H3"]  # a head read from one cache is left to the caller
    diffs = head_differences(a, b, names)
    assert list(diffs) == ["L1.H0", "L1.H2"] or list(diffs) == ["L1.H2"]  # (the suite's type checker may read H0)
    _, a2 = pm.run_with_cache(cids, names, attention_mask=mask)  # fresh caches, heads read one by one
    _, b2 = pm.run_with_cache(ids, names, attention_mask=mask)
    direct = {name: a2[name] - b2[name] for name in names}
    for name in diffs:
        torch.testing.assert_close(diffs[name], direct[name], atol=1e-6, rtol=1e-5)
    assert float(diffs["L1.H2"].abs().max()) > 1e-3
    assert head_differences(a2, b2, names) == {}  # materialised heads: not from z any more
