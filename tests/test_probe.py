"""ProbedModel against independent truth: HF logits, HF hidden states and attentions, hand-edited
weights, and across backends. Tiny random Llama / Qwen2 / Gemma3 / GPT-2 models, saved as AR
folders and as MDM folders (ar2mdm.json, is_causal false), are built once per session.

The other tests/test_probe_*.py files import `probed` and friends from here.
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTJConfig, GPTJForCausalLM, LlamaForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.modeling import position_ids
from conversion.checkpoints import load_ar
from conversion.mdm import save_mdm
from probe import ProbedModel

FAMS = ("llama", "qwen2", "gemma3_text", "gpt2")
BACKENDS = ("torch", "nnsight", "tl")
KINDS = ("ar", "mdm")
MASK_ID = 4  # "<mask>" in conftest's tokenizer


@cache
def _root() -> Path:
    """One temporary folder per test session for the tiny checkpoints (removed at exit)."""
    root = Path(tempfile.mkdtemp(prefix="ar2mdm-probe-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@cache
def folder(family: str, kind: str = "ar") -> Path:
    """A saved tiny checkpoint: an AR HF folder, or the same weights saved as an MDM."""
    ar = build_tiny_model(family, _root() / family)
    if kind == "ar":
        return ar
    loaded = load_ar(ar)
    meta = ModelMeta(kind="mdm", source=str(ar), family=family, shift=True, mask_id=MASK_ID)
    return save_mdm(loaded.model, loaded.tokenizer, meta, _root() / f"{family}-mdm")


@cache
def probed(family: str, kind: str = "ar", backend: str = "torch") -> ProbedModel:
    return ProbedModel.from_checkpoint(folder(family, kind), backend=backend)


@cache
def hf(family: str, kind: str = "ar"):
    """The checkpoint as plain transformers loads it (default attention): the reference."""
    return AutoModelForCausalLM.from_pretrained(folder(family, kind)).eval()


def batch(family: str = "llama") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, corrupted ids, mask): two rows, the second right-padded by two."""
    tok = AutoTokenizer.from_pretrained(folder(family))
    texts = [
        "When Mary and John went to the store , John gave a drink to",
        "Then Alice and Bob went to the store , Bob gave",
    ]
    corrupt = [
        "When Tom and Sarah went to the store , Alice gave a drink to",
        "Then Mary and John went to the store , Tom gave",
    ]
    enc = tok(texts, return_tensors="pt", padding=True)
    cor = tok(corrupt, return_tensors="pt", padding=True)
    assert enc.input_ids.shape == cor.input_ids.shape and enc.attention_mask[1, -1] == 0
    return enc.input_ids, cor.input_ids, enc.attention_mask


def o_columns_zeroed(model, layer: int, head: int, d_head: int):
    """A copy of `model` whose output projection ignores head `head` of `layer` (by hand)."""
    model = copy.deepcopy(model)
    cols = slice(head * d_head, (head + 1) * d_head)
    with torch.no_grad():
        if hasattr(model, "transformer"):  # GPT-2 Conv1D stores [in, out]
            model.transformer.h[layer].attn.c_proj.weight[cols, :] = 0
        else:
            model.model.layers[layer].self_attn.o_proj.weight[:, cols] = 0
    return model


# --- logits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMS)
def test_logits_equal_hf(family: str, kind: str, backend: str) -> None:
    ids, _, mask = batch(family)
    with torch.no_grad():
        expected = hf(family, kind)(ids, attention_mask=mask).logits
    pm = probed(family, kind, backend)
    assert pm.backend_name == backend and pm.config.kind == kind
    logits, cache = pm.run_with_cache(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["logits"], logits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMS)
def test_mdm_attends_bidirectionally_ar_causally(family: str, backend: str) -> None:
    ids, _, _ = batch(family)
    late = ids.clone()
    late[:, -1] = ids[0, 1]  # change the last token only
    for kind in KINDS:
        pm = probed(family, kind, backend)
        moved = (pm(ids) - pm(late))[:, :3].abs().max()
        if kind == "mdm":
            assert moved > 1e-3, f"{kind}: early logits did not react to a late token"
        else:
            assert moved < 1e-6, f"{kind}: early logits saw a later token"


@pytest.mark.parametrize("family", FAMS)
def test_padding_does_not_leak_into_bidirectional_attention(family: str) -> None:
    ids, _, mask = batch(family)
    pm = probed(family, "mdm")
    other_pad = ids.clone()
    other_pad[1, mask[1] == 0] = ids[0, 3]
    a, b = pm(ids, attention_mask=mask), pm(other_pad, attention_mask=mask)
    torch.testing.assert_close(a[1, mask[1].bool()], b[1, mask[1].bool()], atol=1e-6, rtol=0)


# --- caches against HF's own outputs ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMS)
def test_cache_matches_hf_hidden_states_and_attentions(family: str, kind: str) -> None:
    ids, _, mask = batch(family)
    ref = hf(family, kind)
    eager = copy.deepcopy(ref)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    pm = probed(family, kind)
    _, cache = pm.run_with_cache(ids, ["L*.resid_pre", "L*.resid_post", "L*.H*.pattern"], attention_mask=mask)
    n = pm.config.n_layers
    # Real query positions only: the probe gives padded positions the last real position id
    # (`ar2mdm.diffusion.attention.position_ids`), HF counts on; nothing real reads a padded query.
    real = mask.bool()
    for layer in range(n):
        torch.testing.assert_close(
            cache[f"L{layer}.resid_pre"][real], out.hidden_states[layer][real], atol=1e-6, rtol=0
        )
        for h in range(pm.config.n_heads):
            torch.testing.assert_close(
                cache[f"L{layer}.H{h}.pattern"][real], out.attentions[layer][:, h][real], atol=1e-6, rtol=0
            )
    final = pm.layout.final_norm(cache[f"L{n - 1}.resid_post"])
    torch.testing.assert_close(final[real], out.hidden_states[n][real], atol=1e-5, rtol=0)
    upper = torch.triu(cache["L0.H0.pattern"][0], diagonal=1).abs().sum()
    assert (upper == 0) if kind == "ar" else (upper > 0)


@pytest.mark.parametrize("family", FAMS)
def test_decomposition_sums_to_final_residual(family: str) -> None:
    """embed (+ position embedding) + every head + every MLP + output biases = final residual."""
    ids, _, mask = batch(family)
    pm = probed(family)
    _, cache = pm.run_with_cache(ids, attention_mask=mask)
    final = cache[f"L{pm.config.n_layers - 1}.resid_post"]
    raw = cache["embed"].clone()
    for layer in range(pm.config.n_layers):
        raw += sum(cache[f"L{layer}.H{h}"] for h in range(pm.config.n_heads)) + cache[f"L{layer}.mlp"]
        bias = pm.layout.o_bias(layer)
        raw += 0 if bias is None else bias
    dec = pm.decompose(cache)
    torch.testing.assert_close(dec.total(), final, atol=1e-5, rtol=0)
    if family == "gpt2":  # the embed node carries the learned position embedding
        # positions skip padding (ar2mdm.diffusion.attention.position_ids)
        wte = pm.model.transformer.wte(ids) + pm.model.transformer.wpe(position_ids(mask))
        torch.testing.assert_close(cache["embed"], wte)
    if pm.config.post_norms:
        # Gemma normalises each sublayer's output: the plain sum is NOT the residual stream.
        assert (raw - final).abs().max() > 1e-2
    else:
        torch.testing.assert_close(raw, final, atol=1e-5, rtol=0)
        for name, part in dec.parts.items():
            torch.testing.assert_close(part, cache[name])


def test_heads_sum_to_output_projection_on_post_norm_model() -> None:
    """Gemma: per layer, heads + bias equal the output projection's output (hand-computed from z)."""
    ids, _, mask = batch("gemma3_text")
    pm = probed("gemma3_text")
    _, cache = pm.run_with_cache(ids, attention_mask=mask)
    z = {}
    hook = pm.model.model.layers[1].self_attn.o_proj.register_forward_hook(lambda m, i, o: z.update(out=o))
    try:
        pm.model(ids, attention_mask=mask)
    finally:
        hook.remove()
    real = mask.bool()  # the probe passes position ids that skip padding; HF alone counts on
    torch.testing.assert_close(cache.heads(1).sum(2)[real], z["out"][real], atol=1e-6, rtol=0)


# --- interventions against hand-edited weights -----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMS)
def test_zero_head_equals_zeroed_output_weights(family: str, kind: str, backend: str) -> None:
    ids, _, mask = batch(family)
    pm = probed(family, kind, backend)
    with torch.no_grad():
        expected = o_columns_zeroed(hf(family, kind), 1, 2, pm.config.d_head)(ids, attention_mask=mask).logits
    with pm.intervene() as iv:
        iv.zero("L1.H2")
        got = pm(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    assert (got - pm(ids, attention_mask=mask))[real].abs().max() > 1e-4  # the edit did something


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMS)
def test_patching_every_node_gives_corrupted_logits(family: str, kind: str, backend: str) -> None:
    ids, cids, mask = batch(family)
    pm = probed(family, kind, backend)
    clean, _ = pm.run_with_cache(ids, attention_mask=mask)
    corrupted, corrupted_cache = pm.run_with_cache(cids, attention_mask=mask)
    assert (clean - corrupted).abs().max() > 1e-3
    with pm.intervene() as iv:
        iv.patch(pm.senders(), corrupted_cache)
        assert len(iv.edits) == 1 + pm.config.n_layers * (pm.config.n_heads + 1)
        patched = pm(ids, attention_mask=mask)
    torch.testing.assert_close(patched, corrupted, atol=1e-5, rtol=0)
    with pm.intervene():
        untouched = pm(ids, attention_mask=mask)
    torch.testing.assert_close(untouched, clean, atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMS)
def test_backends_agree_on_caches_edges_and_gradients(family: str) -> None:
    ids, cids, mask = batch(family)
    results = {}
    for backend in BACKENDS:
        pm = probed(family, "mdm", backend)
        _, corrupted = pm.run_with_cache(cids, attention_mask=mask)
        with pm.intervene() as iv:
            iv.patch_edge("L0.H*", "L1.H*.k", corrupted)
            iv.patch_edge("embed", "logits", corrupted)
            iv.add("L0.mlp.neuron3", 0.5, pos=2)
            logits, cache = pm.run_with_cache(ids, attention_mask=mask, names="L1.*")
            grads = pm.run_with_grads(
                ids, lambda lg: lg[:, 4, :7].sum(), attention_mask=mask, outputs=pm.senders(), receivers="*"
            )
        results[backend] = (logits, cache, grads)
    ref_logits, ref_cache, ref_grads = results["torch"]
    # torch and nnsight run passes that read no pattern with SDPA, tl with eager attention: the
    # same numbers to float32 rounding (a few 1e-5 on gradients of size ~1-40)
    tol = {"atol": 5e-5, "rtol": 1e-5}
    for backend in BACKENDS[1:]:
        logits, cache, grads = results[backend]
        torch.testing.assert_close(logits, ref_logits, **tol)
        assert set(cache) == set(ref_cache)
        for name in cache:
            torch.testing.assert_close(cache[name], ref_cache[name], **tol)
        for name in ref_grads.outputs:
            torch.testing.assert_close(grads.outputs[name], ref_grads.outputs[name], **tol)
        for name in ref_grads.inputs:
            torch.testing.assert_close(grads.inputs[name], ref_grads.inputs[name], **tol)


# --- construction -------------------------------------------------------------------------------------


def test_config_and_components() -> None:
    pm = probed("llama")
    c = pm.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_head, c.d_mlp) == (2, 4, 2, 32, 8, 64)
    assert (c.kind, c.shift, c.mask_id, c.family, c.post_norms) == ("ar", True, None, "llama", False)
    names = pm.components()
    assert names[:2] == ["embed", "L0.resid_pre"] and names[-1] == "logits"
    assert "L1.H3" in names and "L1.H3.q" in names and "L1.H1.k" in names and "L1.H2.k" not in names
    assert "L0.mlp.neuron63" in names and len([n for n in names if ".neuron" in n]) == 2 * 64
    assert pm.senders() == ["embed"] + [f"L{i}.{x}" for i in range(2) for x in ("H0", "H1", "H2", "H3", "mlp")]
    mdm = probed("gemma3_text", "mdm")
    assert (mdm.config.kind, mdm.config.mask_id, mdm.config.post_norms) == ("mdm", MASK_ID, True)


def test_from_checkpoint_sources() -> None:
    ids, _, mask = batch()
    expected = probed("llama")(ids, attention_mask=mask)
    loaded = load_ar(folder("llama"))
    from_loaded = ProbedModel.from_checkpoint(loaded)
    assert from_loaded.meta is loaded.meta
    torch.testing.assert_close(from_loaded(ids, attention_mask=mask), expected)
    model = AutoModelForCausalLM.from_pretrained(folder("llama"))
    in_memory = ProbedModel.from_checkpoint(model, tokenizer=loaded.tokenizer)
    assert in_memory.config.kind == "ar"
    torch.testing.assert_close(in_memory(ids, attention_mask=mask), expected)
    text = in_memory("When Mary and John")
    assert text.shape[:2] == (1, len(loaded.tokenizer("When Mary and John").input_ids))

    bidirectional = AutoModelForCausalLM.from_pretrained(folder("llama", "mdm"))
    with pytest.raises(UserError, match="ModelMeta"):
        ProbedModel.from_checkpoint(bidirectional)
    meta = ModelMeta(kind="mdm", mask_id=MASK_ID)
    mdm = ProbedModel.from_checkpoint(bidirectional, meta=meta, backend="nnsight")
    torch.testing.assert_close(mdm(ids, attention_mask=mask), probed("llama", "mdm")(ids, attention_mask=mask))


def test_bad_inputs_give_user_errors(tmp_path: Path, unchecked_types) -> None:
    with pytest.raises(UserError, match="backend"):
        ProbedModel.from_checkpoint(folder("llama"), backend="jax")
    with pytest.raises(UserError, match="does not exist"):
        ProbedModel.from_checkpoint(tmp_path / "nothing")
    with pytest.raises(UserError, match="takes a name"):
        ProbedModel.from_checkpoint(42)  # type: ignore[arg-type]
    pm = probed("llama")
    with pytest.raises(UserError, match="integer tensor"):
        pm(torch.zeros(2, 3))
    with pytest.raises(UserError, match="attention_mask"):
        pm(torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(UserError, match="inputs must be"):
        pm(3.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "mistral"])
def test_other_families_match_hf_and_patch_exactly(family: str) -> None:
    ids, cids, mask = batch()
    pm = probed(family)
    with torch.no_grad():
        expected = hf(family)(ids, attention_mask=mask).logits
    logits, _ = pm.run_with_cache(ids, attention_mask=mask)
    torch.testing.assert_close(logits[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)
    corrupted, corrupted_cache = pm.run_with_cache(cids, attention_mask=mask)
    with pm.intervene() as iv:
        iv.patch(pm.senders(), corrupted_cache)
        torch.testing.assert_close(pm(ids, attention_mask=mask), corrupted, atol=1e-5, rtol=0)


def test_tl_backend_refuses_what_it_cannot_bridge_and_names_the_alternative() -> None:
    class TinyCustomForCausalLM(LlamaForCausalLM):
        """An architecture name TransformerLens has no adapter for."""

    model = TinyCustomForCausalLM(hf("llama").config)
    tokenizer = AutoTokenizer.from_pretrained(folder("llama"))
    with pytest.raises(UserError, match="no bridge adapter for TinyCustomForCausalLM; use backend='torch'"):
        ProbedModel.from_checkpoint(model, tokenizer=tokenizer, backend="tl")
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        ProbedModel.from_checkpoint(AutoModelForCausalLM.from_pretrained(folder("llama")), backend="tl")
    ours = ProbedModel.from_checkpoint(model, tokenizer=tokenizer, backend="nnsight")
    assert ours.config.n_layers == 2
    # "auto": the bridge where TransformerLens has an adapter, nnsight for any other decoder
    assert ProbedModel.from_checkpoint(model, tokenizer=tokenizer).backend_name == "nnsight"
    assert ProbedModel.from_checkpoint(folder("llama")).backend_name == "tl"
    assert ProbedModel.from_checkpoint(AutoModelForCausalLM.from_pretrained(folder("llama"))).backend_name == "nnsight"


def test_layouts_the_probe_cannot_read_are_refused() -> None:
    parallel = GPTJForCausalLM(GPTJConfig(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=32, rotary_dim=4))
    with pytest.raises(UserError, match="parallel attention and MLP"):
        ProbedModel.from_checkpoint(parallel)
