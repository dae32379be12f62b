"""A block-diffusion MDM (`ModelMeta.block_size`, from `convert --attention block:B`) is probed
under the block-causal mask it was trained and is sampled with, by every backend and every entry
point, against independent truth:

- logits equal the HF model's own logits with `ar2mdm.diffusion.attention.block_inference_mask` passed as
  a 4D mask (right-padded batch; a left-padded row equals the row alone, blocks counting from its
  first token), and differ from the fully bidirectional logits;
- a position never sees a token of a later block, and sees every token of its own block;
- caches equal HF's hidden states and attentions under that mask (no weight on later blocks);
  gradients equal autograd through HF under that mask; node and edge patches at a later block
  change nothing earlier; exact patching, EAP and EAP-IG find no edge from a corrupted later block
  into an earlier read position (the bidirectional MDM with the same weights does);
- a block at least as long as the input is the bidirectional MDM; an ARM ignores `block_size`.

Tiny random Llama weights (tests/conftest.py), block size 4.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from test_probe import MASK_ID, _root, folder
from transformers import AutoModelForCausalLM, AutoTokenizer

from analyses.circuits import attribute
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.modeling import position_ids
from ar2mdm.diffusion.attention import block_inference_mask
from ar2mdm.tasks import Example, render
from conversion.checkpoints import load_ar
from conversion.mdm import save_mdm
from probe import ProbedModel
from probe.model import block_causal_mask

BLOCK = 4
BACKENDS = ("torch", "nnsight", "tl")
TEXTS = (
    "When Mary and John went to the store , John gave a drink to",  # 14 tokens: blocks 0-3
    "Then Alice and Bob went",
    "the war lasted from year 17 to",
)


@cache
def block_folder(block_size: int | None = BLOCK) -> Path:
    """The tiny Llama's weights saved as an MDM read with blocks of `block_size` (None: plain)."""
    ar = folder("llama")
    loaded = load_ar(ar)
    meta = ModelMeta(kind="mdm", source=str(ar), family="llama", shift=True, mask_id=MASK_ID, block_size=block_size)
    return save_mdm(loaded.model, loaded.tokenizer, meta, _root() / f"llama-mdm-block{block_size}")


@cache
def probed_block(backend: str, block_size: int | None = BLOCK) -> ProbedModel:
    return ProbedModel.from_checkpoint(block_folder(block_size), backend=backend)


@cache
def reference():
    """The same weights as plain transformers loads them, eager attention: every mask is passed
    explicitly, so the reference does not depend on how the folder is flagged."""
    model = AutoModelForCausalLM.from_pretrained(folder("llama"), attn_implementation="eager").eval()
    return model.requires_grad_(False)


def hf_block(ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """HF's output with the samplers' block-causal mask (blocks counted from position 0)."""
    m4 = block_inference_mask(mask, BLOCK)
    with torch.no_grad():
        return reference()(ids, attention_mask=m4, position_ids=position_ids(mask), **kwargs)


def hf_bidirectional(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference()(ids, attention_mask=mask, position_ids=position_ids(mask), is_causal=False).logits


def padded(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(folder("llama"))
    tok.padding_side = side
    enc = tok(list(TEXTS), return_tensors="pt", padding=True)
    assert bool((enc.attention_mask == 0).any())
    return enc.input_ids, enc.attention_mask


def long_row() -> torch.Tensor:
    ids, mask = padded("right")
    assert bool(mask[0].all()) and ids.shape[1] == 14
    return ids[:1]


# --- logits ---------------------------------------------------------------------------------------


def test_the_probes_mask_is_the_samplers_on_right_padded_rows() -> None:
    lengths = torch.tensor([11, 7, 1, 4])
    mask = (torch.arange(11)[None, :] < lengths[:, None]).long()
    for block in (1, 3, 4, 11, 20):
        torch.testing.assert_close(block_causal_mask(mask, block), block_inference_mask(mask, block), atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_equal_hf_under_the_block_mask_and_differ_from_bidirectional(backend: str) -> None:
    pm = probed_block(backend)
    assert pm.config.block_size == BLOCK and pm.config.kind == "mdm" and pm.backend_name == backend
    ids, mask = padded("right")
    real = mask.bool()
    logits = pm(ids, attention_mask=mask)
    torch.testing.assert_close(logits[real], hf_block(ids, mask).logits[real], atol=1e-5, rtol=0)
    assert (logits - hf_bidirectional(ids, mask))[real].abs().max() > 1e-2

    # Left padding: blocks count from each row's first token, so a row's logits are its own.
    left_ids, left_mask = padded("left")
    left = pm(left_ids, attention_mask=left_mask)
    left_real = left_mask.bool()
    for row in range(len(TEXTS)):
        alone = left_ids[row, left_real[row]][None]
        expected = hf_block(alone, torch.ones_like(alone)).logits[0]
        torch.testing.assert_close(left[row, left_real[row]], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(left[row, left_real[row]], logits[row, real[row]], atol=1e-5, rtol=0)
    assert (left - hf_bidirectional(left_ids, left_mask))[left_real].abs().max() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_position_sees_its_own_block_and_never_a_later_one(backend: str) -> None:
    pm = probed_block(backend)
    ids = long_row()
    base = pm(ids)
    other = int(ids[0, 1])  # "Mary": differs from every token changed below
    for k in range(3):
        start, end = BLOCK * k, BLOCK * (k + 1)
        later = ids.clone()
        later[0, end + 1] = other  # a token of block k + 1
        moved = (pm(later) - base).abs().amax(-1)[0]
        assert moved[:end].max() < 1e-6, f"block {k} saw a token of block {k + 1}"
        assert moved[end:].min() > 1e-4
        own = ids.clone()
        own[0, start + 2] = other  # a token of block k
        moved = (pm(own) - base).abs().amax(-1)[0]
        if start:
            assert moved[:start].max() < 1e-6
        assert moved[start:end].min() > 1e-4, f"a position of block {k} did not see its own block"


def test_a_block_as_long_as_the_input_is_the_bidirectional_mdm_and_an_arm_ignores_block_size() -> None:
    tok = AutoTokenizer.from_pretrained(folder("llama"))
    ids, mask = padded("right")
    real = mask.bool()
    whole = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID, block_size=ids.shape[1])
    pm = ProbedModel(AutoModelForCausalLM.from_pretrained(folder("llama")), tok, whole, backend="torch")
    torch.testing.assert_close(pm(ids, attention_mask=mask)[real], hf_bidirectional(ids, mask)[real], atol=1e-5, rtol=0)
    arm = ModelMeta(kind="ar", shift=True, block_size=BLOCK)
    pm = ProbedModel(AutoModelForCausalLM.from_pretrained(folder("llama")), tok, arm, backend="torch")
    assert pm.config.block_size is None
    with torch.no_grad():
        causal = reference()(ids, attention_mask=mask, position_ids=position_ids(mask)).logits
    torch.testing.assert_close(pm(ids, attention_mask=mask)[real], causal[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [0, -2])
def test_a_bad_block_size_is_a_user_error(size: int) -> None:
    meta = ModelMeta(kind="mdm", shift=True, mask_id=MASK_ID, block_size=size)
    with pytest.raises(UserError, match="block_size must be a positive integer"):
        ProbedModel(AutoModelForCausalLM.from_pretrained(folder("llama")), None, meta, backend="torch")


# --- caches, gradients, patches -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_matches_hf_hidden_states_and_attentions_under_the_block_mask(backend: str) -> None:
    pm = probed_block(backend)
    ids, mask = padded("right")
    out = hf_block(ids, mask, output_hidden_states=True, output_attentions=True)
    _, cache = pm.run_with_cache(ids, ["L*.resid_pre", "L*.resid_post", "L*.H*.pattern"], attention_mask=mask)
    real = mask.bool()
    n = pm.config.n_layers
    blocks = torch.arange(ids.shape[1]) // BLOCK
    later = blocks[None, :] > blocks[:, None]  # [query, key]: key in a later block
    for layer in range(n):
        torch.testing.assert_close(
            cache[f"L{layer}.resid_pre"][real], out.hidden_states[layer][real], atol=1e-5, rtol=0
        )
        for h in range(pm.config.n_heads):
            pattern = cache[f"L{layer}.H{h}.pattern"]
            torch.testing.assert_close(pattern[real], out.attentions[layer][:, h][real], atol=1e-6, rtol=0)
            assert pattern[:, later].abs().max() == 0
            assert pattern[0, ~later].min() > 0  # the full row: every key of its own and earlier blocks
    final = pm.layout.final_norm(cache[f"L{n - 1}.resid_post"])
    torch.testing.assert_close(final[real], out.hidden_states[n][real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_equal_autograd_through_hf_under_the_block_mask(backend: str) -> None:
    pm = probed_block(backend)
    ids, mask = padded("right")
    read = 5  # block 1

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, read, :7].sum()

    grads = pm.run_with_grads(ids, metric, attention_mask=mask, outputs=["embed", "L0.H*"])
    model = reference()
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    m4 = block_inference_mask(mask, BLOCK)
    out = model(inputs_embeds=embeds, attention_mask=m4, position_ids=position_ids(mask))
    metric(out.logits).backward()
    torch.testing.assert_close(grads.outputs["embed"], embeds.grad, atol=1e-5, rtol=0)
    for name in ["embed", "L0.H0", "L0.H3"]:
        assert grads.outputs[name][:, 2 * BLOCK :].abs().max() == 0, f"{name}: gradient from a later block"
        assert grads.outputs[name][0, :BLOCK].abs().amax(-1).min() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_patching_a_later_block_changes_nothing_earlier(backend: str) -> None:
    pm = probed_block(backend)
    ids = long_row()
    corrupt = ids.clone()
    corrupt[0, 9] = int(ids[0, 1])  # "John" -> "Mary" in block 2
    clean, clean_cache = pm.run_with_cache(ids)
    corrupted, corrupted_cache = pm.run_with_cache(corrupt)
    torch.testing.assert_close(corrupted[:, : 2 * BLOCK], clean[:, : 2 * BLOCK], atol=1e-6, rtol=0)
    with pm.intervene() as iv:
        iv.patch(pm.senders(), corrupted_cache)  # every node at every position
        torch.testing.assert_close(pm(ids), corrupted, atol=1e-5, rtol=0)
    with pm.intervene() as iv:  # a node edit at a later-block position
        iv.add("L0.H1", 3.0, pos=9)
        iv.add("L0.mlp", 3.0, pos=[8, 11])
        moved = (pm(ids) - clean).abs().amax(-1)[0]
    assert moved[: 2 * BLOCK].max() < 1e-6 and moved[2 * BLOCK :].min() > 1e-4
    with pm.intervene() as iv:  # edges from every sender into every receiver
        iv.patch_edge("embed", "L1.H*.k", corrupted_cache)
        iv.patch_edge("L0.H*", "logits", corrupted_cache)
        iv.patch_edge("L0.mlp", "L1.H*.v", corrupted_cache)
        edged, edged_cache = pm.run_with_cache(ids, "L1.H*")
    moved = (edged - clean).abs().amax(-1)[0]
    assert moved[: 2 * BLOCK].max() < 1e-6 and moved[2 * BLOCK :].max() > 1e-4
    early = edged_cache["L1.H0"][:, : 2 * BLOCK]
    torch.testing.assert_close(early, clean_cache["L1.H0"][:, : 2 * BLOCK], atol=1e-6, rtol=0)
    with pm.intervene() as iv:  # a node edit in block 1: visible from block 1 on
        iv.set("L0.H2", 0.0, pos=5)
        moved = (pm(ids) - clean).abs().amax(-1)[0]
    assert moved[:BLOCK].max() < 1e-6 and moved[BLOCK:].min() > 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_on_a_block_mdm(backend: str) -> None:
    ids, mask = padded("right")
    runs = {}
    for name in ("torch", backend):
        pm = probed_block(name)
        _, corrupted = pm.run_with_cache(ids.flip(0), attention_mask=mask.flip(0))
        with pm.intervene() as iv:
            iv.patch_edge("L0.H*", "L1.H*.q", corrupted)
            logits, cache = pm.run_with_cache(ids, attention_mask=mask, names="L1.*")
            grads = pm.run_with_grads(ids, lambda lg: lg[:, 6, :7].sum(), attention_mask=mask, receivers="*")
        runs[name] = (logits, cache, grads)
    (ref_logits, ref_cache, ref_grads), (logits, cache, grads) = runs["torch"], runs[backend]
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for name in ref_cache:
        torch.testing.assert_close(cache[name], ref_cache[name], atol=1e-5, rtol=0)
    for name in ref_grads.inputs:
        torch.testing.assert_close(grads.inputs[name], ref_grads.inputs[name], atol=1e-5, rtol=0)


# --- circuits -------------------------------------------------------------------------------------


def suffix_examples() -> list[Example]:
    """Corrupted in the suffix only (block 2 on): the answer is read at position 6 (block 1)."""
    out = []
    for a, b, c in (("Mary", "John", "Tom"), ("Alice", "Bob", "Sarah")):
        prompt = f"When {a} and {b} went to the"  # 7 tokens; the answer's mask is at position 7
        out.append(
            Example(
                task="toy",
                prompt=prompt,
                answer=" store",
                corrupted_prompt=prompt,
                suffix=f" , {b} gave a drink to",
                corrupted_suffix=f" , {c} gave a drink to",
                correct=(" store",),
                counterfactual=(" drink",),
            )
        )
    return out


@pytest.mark.parametrize("method", ["exact", "eap", "eap-ig-inputs"])
def test_attribution_finds_no_edge_from_a_later_block(method: str) -> None:
    scores = {}
    for block_size in (BLOCK, None):
        pm = probed_block("torch", block_size)
        items = [render(ex, pm.tokenizer, "mdm", shift=True, mask_id=MASK_ID) for ex in suffix_examples()]
        assert all(int(r.read_positions[0]) == 6 for r in items)
        graph = attribute(pm, items, method=method, steps=2, batch_size=None)
        top = max(graph.scores.abs().max().item(), max(abs(v) for v in graph.node_scores.values()))
        scores[block_size] = (top, graph.meta)
    top, meta = scores[BLOCK]
    assert top < 1e-6 and meta["clean_metric"] == pytest.approx(meta["corrupt_metric"], abs=1e-6)
    assert scores[None][0] > 1e-4  # the bidirectional MDM reads the suffix: the test can fail
