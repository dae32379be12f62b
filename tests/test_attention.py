"""Attention layouts: mask matrices against brute-force definitions, and real model behaviour.

Behaviour is tested by perturbation: change the token at key position k and see which query
positions' logits move. With 2 layers the influence set is the 2-step reachability of the layout;
every layout here is transitively closed, so it must equal the mask's column k exactly.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion import attention as attn

V = 64


def tiny(family: str, impl: str = "sdpa", **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, **extra))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, **extra))
    elif family == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, **extra))
    elif family == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0, **extra
            )
        )
    else:
        raise ValueError(family)
    model.config._attn_implementation = impl
    return model.eval()


def influence(model: torch.nn.Module, ids: torch.Tensor, key: int, **kwargs: object) -> torch.Tensor:
    """Bool [T]: which positions' logits change when the token at `key` changes (batch of 1)."""
    other = ids.clone()
    other[0, key] = (other[0, key] + 1) % V
    with torch.no_grad():
        a = model(input_ids=ids, **kwargs).logits[0]
        b = model(input_ids=other, **kwargs).logits[0]
    return (a - b).abs().amax(-1) > 1e-6


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "sizes"),
    [
        ("causal", "causal", ()),
        ("Bidirectional", "bidirectional", ()),
        ("anneal:100", "anneal", ()),
        ("block:4", "block", (4,)),
        ("block:1@0.05,16@0.95", "block", (1, 16)),
    ],
)
def test_parse_accepts(text: str, kind: str, sizes: tuple[int, ...]) -> None:
    spec = attn.parse_attention(text)
    assert spec.kind == kind
    assert spec.block_sizes == sizes
    assert attn.parse_attention(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "full",
        "anneal",
        "anneal:0",
        "anneal:x",
        "block:",
        "block:0",
        "block:4@0.5",
        "block:4@0.5,8@0.6",
        "block:4@-1,8@2",
        "block:4@0.5,4@0.5",
        "block:a@1",
        "sliding:4",
    ],
)
def test_parse_rejects_with_accepted_forms(text: str) -> None:
    with pytest.raises(UserError, match="Accepted forms"):
        attn.parse_attention(text)


def test_anneal_ratio() -> None:
    spec = attn.parse_attention("anneal:10")
    assert [attn.anneal_ratio(spec, s) for s in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]


def test_block_size_mixture_frequencies() -> None:
    spec = attn.parse_attention("block:1@0.25,16@0.75")
    sizes = attn.sample_block_sizes(spec, 4000, generator=torch.Generator().manual_seed(0))
    assert set(sizes.unique().tolist()) == {1, 16}
    assert (sizes == 1).float().mean().item() == pytest.approx(0.25, abs=0.03)


# --- mask matrices vs brute force ----------------------------------------------------------------


def brute_block(length: int, b: int) -> torch.Tensor:
    n = 2 * length
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            qn, kn = q < length, k < length
            qb, kb = (q % length) // b, (k % length) // b
            if qn and kn:
                out[q, k] = qb == kb
            elif qn and not kn:
                out[q, k] = kb < qb
            elif not qn and not kn:
                out[q, k] = kb <= qb
    return out


@pytest.mark.parametrize("length", [1, 5, 8])
@pytest.mark.parametrize("b", [1, 2, 3, 8])
def test_block_layout_matches_brute_force(length: int, b: int) -> None:
    got = attn.block_allowed(torch.tensor([b]), length)[0]
    assert torch.equal(got, brute_block(length, b))


def test_block_layout_per_sequence_sizes() -> None:
    got = attn.block_allowed(torch.tensor([1, 4, 8]), 8)
    for i, b in enumerate([1, 4, 8]):
        assert torch.equal(got[i], brute_block(8, b))


def test_block_extremes() -> None:
    # b = L: the noisy half is fully bidirectional and sees no clean token
    full = attn.block_allowed(torch.tensor([6]), 6)[0]
    assert bool(full[:6, :6].all()) and not bool(full[:6, 6:].any())
    # b = 1: noisy token i sees itself and clean tokens < i (an ARM with the input shifted)
    ar = attn.block_allowed(torch.tensor([1]), 6)[0]
    assert torch.equal(ar[:6, :6], torch.eye(6, dtype=torch.bool))
    assert torch.equal(ar[:6, 6:], torch.ones(6, 6, dtype=torch.bool).tril(-1))


def test_padding_columns_are_blocked_and_rows_stay_finite() -> None:
    for spec in ("bidirectional", "causal", "anneal:4", "block:2"):
        # block rows are right-padded only (blocks count from position 0)
        am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0] if spec.startswith("block") else [0, 0, 1, 1, 1]])
        m = attn.build_mask(spec, am, step=2, generator=torch.Generator().manual_seed(0))
        key_valid = torch.cat([am, am], 1) if spec.startswith("block") else am
        assert m.shape[-1] == key_valid.shape[1] and m.shape[1] == 1
        real_q_pad_k = (key_valid[:, :, None] == 1) & (key_valid[:, None, :] == 0)
        assert bool(torch.isinf(m[:, 0][real_q_pad_k]).all())  # real queries never see padding
        pad_q = key_valid == 0
        assert bool((m[:, 0].diagonal(dim1=-2, dim2=-1)[pad_q] == 0).all())  # pad rows see themselves
        assert bool(torch.isfinite(m).any(-1).all()), spec  # no row entirely -inf
        assert set(m.unique().tolist()) <= {0.0, float("-inf")}


def test_anneal_layout_progresses_from_causal_to_full() -> None:
    am = torch.ones(2, 96, dtype=torch.long)
    causal = attn.causal_allowed(2, 96)
    gen = torch.Generator().manual_seed(0)
    fractions = []
    for step in (0, 25, 50, 75, 100, 150):
        m = attn.build_mask("anneal:100", am, step=step, generator=gen)[:, 0] == 0
        assert bool(m[causal].all())  # never less than causal
        assert torch.equal(m[0], m[1])  # one pattern per step, shared by the batch
        future = ~causal
        fractions.append(m[future].float().mean().item())
    assert fractions[0] == 0.0
    assert fractions[-2] == fractions[-1] == 1.0
    for got, want in zip(fractions[1:4], (0.25, 0.5, 0.75), strict=True):
        assert got == pytest.approx(want, abs=0.03)


# --- model behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("spec", ["causal", "bidirectional", "anneal:8"])
def test_single_pass_modes_influence_matches_layout(family: str, spec: str) -> None:
    model = tiny(family)
    length = 7
    ids = torch.randint(0, V, (1, length), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)
    for step in (0, 8):
        gen_seed = 5
        mask = attn.build_mask(spec, am, step=step, generator=torch.Generator().manual_seed(gen_seed))[0, 0] == 0
        # 2 layers: influence = 2-step reachability of the layout
        reach = (mask.float() @ mask.float() + mask.float()) > 0
        for key in range(length):
            kwargs = attn.model_inputs(spec, am, step=step, generator=torch.Generator().manual_seed(gen_seed))
            got = influence(model, ids, key, **kwargs)
            assert torch.equal(got, reach[:, key]), (spec, step, key)
    if spec != "causal":
        # the last token reaches position 0 once attention is (or has become) bidirectional
        kwargs = attn.model_inputs(spec, am, step=8)
        assert bool(influence(model, ids, length - 1, **kwargs)[0])


def test_anneal_early_is_causal_in_the_model() -> None:
    model = tiny("llama")
    ids = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(2))
    kwargs = attn.model_inputs("anneal:1000", torch.ones_like(ids), step=0)
    for key in range(9):
        got = influence(model, ids, key, **kwargs)
        assert not bool(got[:key].any())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("b", [1, 3, 4])
def test_block_mode_influence_matches_layout(family: str, b: int) -> None:
    model = tiny(family)
    length = 8
    x = torch.randint(0, V, (1, 2 * length), generator=torch.Generator().manual_seed(3))
    am = torch.ones(1, length, dtype=torch.long)
    mask4 = attn.build_mask(f"block:{b}", am)
    pos = attn.position_ids(am)
    kwargs = {"attention_mask": mask4, "position_ids": torch.cat([pos, pos], 1)}
    layout = brute_block(length, b)
    for key in range(2 * length):
        got = influence(model, x, key, **kwargs)
        assert torch.equal(got, layout[:, key]), (b, key)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("spec", ["bidirectional", "anneal:4", "block:3"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_never_leaks(family: str, spec: str, side: str) -> None:
    """Logits at real positions are identical with and without extra padding of any content."""
    model = tiny(family)
    length, pad = 6, 3
    ids = torch.randint(1, V, (1, length), generator=torch.Generator().manual_seed(4))
    junk = torch.randint(1, V, (1, pad), generator=torch.Generator().manual_seed(5))
    if side == "right":
        padded, am = torch.cat([ids, junk], 1), torch.cat([torch.ones(1, length), torch.zeros(1, pad)], 1)
        real = slice(0, length)
    else:
        padded, am = torch.cat([junk, ids], 1), torch.cat([torch.zeros(1, pad), torch.ones(1, length)], 1)
        real = slice(pad, pad + length)
    am = am.long()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        if spec.startswith("block"):
            if side == "left":  # blocks count from position 0: left padding is refused, clearly
                with pytest.raises(UserError, match="right-padded"):
                    attn.build_mask(spec, am)
                return
            outs = []
            for x, mask in ((ids, torch.ones(1, length, dtype=torch.long)), (padded, am)):
                m4 = attn.build_mask(spec, mask)
                pos = attn.position_ids(mask)
                outs.append(
                    model(
                        input_ids=torch.cat([x, x], 1), attention_mask=m4, position_ids=torch.cat([pos, pos], 1)
                    ).logits[0]
                )
            plain, with_pad = outs
            total = length + pad
            torch.testing.assert_close(with_pad[:length], plain[:length], rtol=0, atol=1e-5)
            torch.testing.assert_close(with_pad[total : total + length], plain[length:], rtol=0, atol=1e-5)
            return
        # anneal at its final step is bidirectional: compare like with like
        plain = model(input_ids=ids, **attn.model_inputs(spec, torch.ones_like(ids), step=4, generator=gen())).logits[0]
        with_pad = model(input_ids=padded, **attn.model_inputs(spec, am, step=4, generator=gen())).logits[0]
        four_d = model(
            input_ids=padded, attention_mask=attn.build_mask(spec, am, step=4), position_ids=attn.position_ids(am)
        ).logits[0]
    torch.testing.assert_close(with_pad[real], plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(four_d[real], plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_make_bidirectional(family: str, impl: str) -> None:
    model = tiny(family, impl)
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(6))
    am = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    assert not bool(influence(model, ids[:1], 5)[0])  # causal before
    attn.make_bidirectional(model)
    assert model.config.is_causal is False
    assert bool(influence(model, ids[:1], 5)[0])
    with torch.no_grad():
        native = model(input_ids=ids, attention_mask=am).logits
        four_d = model(input_ids=ids, attention_mask=attn.build_mask("bidirectional", am)).logits
    # equal to the explicit 4D mask at real positions (Gemma3's tiny default window covers 6 tokens)
    torch.testing.assert_close(native[am.bool()], four_d[am.bool()], rtol=0, atol=1e-5)


def test_gemma3_sliding_window_kept_by_flag_dropped_by_4d_mask() -> None:
    model = tiny("gemma3", "sdpa", sliding_window=2, layer_types=["sliding_attention"] * 2)
    attn.make_bidirectional(model)
    ids = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(7))
    am = torch.ones_like(ids)
    # two window-2 layers reach at most 4 positions: the last token cannot move position 0
    assert not bool(influence(model, ids, 9, attention_mask=am)[0])
    assert bool(influence(model, ids, 9, attention_mask=attn.build_mask("bidirectional", am))[0])


# --- per-document attention ------------------------------------------------------------------------

SEP = 2  # the separator (EOS) of these packed rows


def packed_row() -> torch.Tensor:
    """Three documents packed into one row: [doc 0: 5 tokens + EOS][doc 1: 4 + EOS][doc 2: 3]."""
    return torch.tensor([[11, 12, 13, 14, 15, SEP, 21, 22, 23, 24, SEP, 31, 32, 33]])


def test_document_ids_and_positions_by_hand() -> None:
    ids = packed_row()
    docs = attn.document_ids(ids, SEP)
    assert docs.tolist() == [[0] * 6 + [1] * 5 + [2] * 3]
    pos = attn.position_ids(torch.ones_like(ids), docs)
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2]]


@pytest.mark.parametrize("spec", ["bidirectional", "anneal:4", "causal"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_token_never_depends_on_another_document(family: str, spec: str) -> None:
    """Change any token of a row: only its own document's logits may move, and each document's
    logits equal those of the document run alone (positions restart at 0)."""
    model = tiny(family)
    ids = packed_row()
    mask = torch.ones_like(ids)
    docs = attn.document_ids(ids, SEP)
    layout = attn.anneal_allowed(ids.shape[1], 0.5, generator=torch.Generator().manual_seed(0))
    kwargs = attn.model_inputs(spec, mask, step=2, layout=layout, document_ids=docs)
    for key in range(ids.shape[1]):
        moved = influence(model, ids, key, **kwargs)
        assert not (moved & (docs[0] != docs[0, key])).any(), f"key {key} reached another document"
        if spec == "bidirectional":
            assert moved[docs[0] == docs[0, key]].any()
    if spec == "bidirectional":
        with torch.no_grad():
            whole = model(input_ids=ids, **kwargs).logits[0]
            for d in range(3):
                part = ids[:, docs[0] == d]
                alone = model(input_ids=part, **attn.model_inputs(spec, torch.ones_like(part))).logits[0]
                torch.testing.assert_close(whole[docs[0] == d], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("b", [2, 4])
def test_block_mode_keeps_documents_apart(b: int) -> None:
    model = tiny("llama")
    ids = packed_row()
    length = ids.shape[1]
    docs = attn.document_ids(ids, SEP)
    mask = attn.build_mask(f"block:{b}", torch.ones_like(ids), document_ids=docs)
    doubled = torch.cat([ids, ids], dim=1)
    pos = attn.position_ids(torch.ones_like(ids), docs)
    docs2 = torch.cat([docs, docs], dim=1)[0]
    for key in range(2 * length):
        moved = influence(model, doubled, key, attention_mask=mask, position_ids=torch.cat([pos, pos], dim=1))
        assert not (moved & (docs2 != docs2[key])).any(), f"key {key} reached another document"
