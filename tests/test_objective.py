"""The diffusion loss against an independent hand computation (python loops, float64)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion import attention as attn
from ar2mdm.diffusion import noise
from conversion.objective import DiffusionOptions, NoiseDraw, ar_loss, diffusion_loss, draw_noise, heldout_loss

V = 48
MASK = V - 1
P = 0.3


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def hand_weight(
    weighting: str, schedule: str, t: float, noised_row: list[bool], valid_row: list[bool], n: int
) -> float:
    if weighting == "flat":
        return 1.0
    if weighting == "cart":
        total = 0.0
        for j, (masked, real) in enumerate(zip(noised_row, valid_row, strict=True)):
            if real and not masked:
                total += P * (1 - P) ** (abs(n - j) - 1)
        return 0.5 * total
    if schedule in ("linear", "loglinear"):
        return 1.0 / t
    half_pi = math.pi / 2
    return half_pi * math.sin(half_pi * (1 - t)) / math.cos(half_pi * (1 - t))


def hand_ce(row_logits: torch.Tensor, target: int, subs: bool) -> float:
    values = row_logits.double().tolist()
    keep = [v for i, v in enumerate(values) if not (subs and i == MASK)]
    top = max(keep)
    log_z = top + math.log(sum(math.exp(v - top) for v in keep))
    return log_z - values[target]


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x0 = torch.randint(0, V - 1, (2, 8), generator=torch.Generator().manual_seed(0))
    am = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])
    noised = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1], [0, 0, 1, 1, 0, 1, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.3, 0.7])
    return x0, am, noised, t


@pytest.mark.parametrize("schedule", ["linear", "cosine", "loglinear"])
@pytest.mark.parametrize("weighting", ["elbo", "flat", "cart"])
@pytest.mark.parametrize("shift", [True, False])
def test_absorbing_loss_equals_hand_computation(schedule: str, weighting: str, shift: bool) -> None:
    model = tiny()
    x0, am, noised, t = fixed_batch()
    xt = torch.where(noised, torch.full_like(x0, MASK), x0)
    opts = DiffusionOptions(noise="absorbing", schedule=schedule, weighting=weighting, shift=shift)
    out = diffusion_loss(
        model, x0, opts, mask_id=MASK, attention_mask=am, draw=NoiseDraw(noise.Corruption(t=t, xt=xt, noised=noised))
    )
    with torch.no_grad():
        logits = model(input_ids=xt, attention_mask=am, is_causal=False).logits
    total, count, n_correct = 0.0, 0, 0
    for b in range(2):
        for i in range(8):
            real = bool(am[b, i])
            readable = (not shift) or (i > 0 and bool(am[b, i - 1]))
            if not (real and readable):
                continue
            count += 1
            if noised[b, i]:
                row = logits[b, i - 1 if shift else i]
                w = hand_weight(weighting, schedule, float(t[b]), noised[b].tolist(), am[b].bool().tolist(), i)
                total += w * hand_ce(row, int(x0[b, i]), subs=True)
                masked_row = row.clone()
                masked_row[MASK] = -float("inf")
                n_correct += int(int(masked_row.argmax()) == int(x0[b, i]))
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert int(out.n_tokens) == count
    assert int(out.n_masked) == int(noised.sum())
    assert int(out.n_correct) == n_correct


def test_sampled_corruption_follows_documented_generator_order() -> None:
    model = tiny()
    x0 = torch.randint(0, V - 1, (4, 8), generator=torch.Generator().manual_seed(1))
    opts = DiffusionOptions(schedule="cosine", weighting="elbo", shift=True)
    out = diffusion_loss(model, x0, opts, mask_id=MASK, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = noise.sample_t(4, eps=opts.eps, antithetic=True, generator=g)
    protect = torch.zeros_like(x0, dtype=torch.bool)
    protect[:, 0] = True
    c = noise.absorbing(x0, t, "cosine", MASK, generator=g, protect=protect)
    again = diffusion_loss(model, x0, opts, mask_id=MASK, draw=NoiseDraw(c))
    assert out.loss.item() == pytest.approx(again.loss.item(), rel=1e-6)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_block_loss_equals_hand_computation(shift: bool, b: int) -> None:
    model = tiny()
    x0, am, noised, t = fixed_batch()
    am = torch.ones_like(am)  # block data is packed
    if shift:
        noised[:, 0] = False
    xt = torch.where(noised, torch.full_like(x0, MASK), x0)
    opts = DiffusionOptions(weighting="flat", shift=shift, attention=f"block:{b}")
    out = diffusion_loss(
        model, x0, opts, mask_id=MASK, attention_mask=am, draw=NoiseDraw(noise.Corruption(t=t, xt=xt, noised=noised))
    )
    length = 8
    mask4 = torch.zeros(2, 1, 2 * length, 2 * length)
    for q in range(2 * length):  # brute-force BD3-LM layout, independent of ar2mdm.diffusion.attention
        for k in range(2 * length):
            qb, kb = (q % length) // b, (k % length) // b
            ok = (qb == kb) if (q < length and k < length) else (kb < qb) if q < length else (k >= length and kb <= qb)
            if not ok:
                mask4[:, :, q, k] = -float("inf")
    pos = torch.arange(length).repeat(2)[None].expand(2, -1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([xt, x0], 1), attention_mask=mask4, position_ids=pos).logits
    total, count = 0.0, 0
    for r in range(2):
        for i in range(length):
            if shift and i == 0:
                continue
            count += 1
            if noised[r, i]:
                if not shift:
                    src = i
                elif i % b == 0:
                    src = length + i - 1  # clean copy of the previous token
                else:
                    src = i - 1
                total += hand_ce(logits[r, src], int(x0[r, i]), subs=True)
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


def test_uniform_loss_covers_every_eligible_position() -> None:
    model = tiny()
    x0, am, noised, t = fixed_batch()
    xt = torch.where(noised, (x0 + 5) % (V - 1), x0)
    opts = DiffusionOptions(noise="uniform", weighting="elbo", shift=True)
    out = diffusion_loss(
        model, x0, opts, mask_id=None, attention_mask=am, draw=NoiseDraw(noise.Corruption(t=t, xt=xt, noised=noised))
    )
    with torch.no_grad():
        logits = model(input_ids=xt, attention_mask=am, is_causal=False).logits
    total, count = 0.0, 0
    for r in range(2):
        for i in range(1, 8):
            if am[r, i] and am[r, i - 1]:
                count += 1
                total += hand_ce(logits[r, i - 1], int(x0[r, i]), subs=False) / float(t[r])
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


def test_uniform_sampling_excludes_mask_and_given_ids() -> None:
    model = tiny()
    x0 = torch.zeros(2, 6, dtype=torch.long)
    opts = DiffusionOptions(noise="uniform", shift=False)
    # pool {0, 1} minus the given id 0 minus the mask id 1 is empty: both were excluded
    with pytest.raises(UserError, match="excluded"):
        diffusion_loss(model, x0, opts, mask_id=1, vocab_size=2, exclude_ids=(0,))
    out = diffusion_loss(
        model,
        x0,
        opts,
        mask_id=1,
        vocab_size=3,
        exclude_ids=(0,),
        t=torch.full((2,), 0.99),
        generator=torch.Generator().manual_seed(0),
    )
    assert int(out.n_correct) == 0  # every resampled token became 2, never the original 0


def test_prompt_padding_and_position_zero_are_never_noised() -> None:
    model = tiny()
    x0 = torch.randint(0, V - 1, (3, 10), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(x0)
    am[2, 7:] = 0
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :4] = True
    opts = DiffusionOptions(shift=True, weighting="flat")
    out = diffusion_loss(
        model,
        x0,
        opts,
        mask_id=MASK,
        attention_mask=am,
        prompt_mask=prompt,
        t=torch.full((3,), 1.0),
        generator=torch.Generator().manual_seed(0),
    )
    # at t = 1 every eligible token is masked: answer tokens only, padding excluded
    assert int(out.n_tokens) == 6 + 6 + 3
    assert int(out.n_masked) == int(out.n_tokens)
    shift_only = diffusion_loss(
        model, x0, opts, mask_id=MASK, t=torch.full((3,), 1.0), generator=torch.Generator().manual_seed(0)
    )
    assert int(shift_only.n_masked) == 3 * 9  # position 0 kept clean


def test_corruption_on_ineligible_positions_is_rejected() -> None:
    model = tiny()
    x0, am, noised, t = fixed_batch()
    noised[0, 0] = True
    xt = torch.where(noised, torch.full_like(x0, MASK), x0)
    with pytest.raises(UserError, match="eligible"):
        diffusion_loss(
            model,
            x0,
            DiffusionOptions(shift=True),
            mask_id=MASK,
            attention_mask=am,
            draw=NoiseDraw(noise.Corruption(t=t, xt=xt, noised=noised)),
        )


def test_mask_logit_never_predicted_and_gradients_flow() -> None:
    model = tiny()
    model.train()
    # bias the mask logit up: SUBS must make it irrelevant
    with torch.no_grad():
        model.lm_head.weight[MASK] *= 50
    x0 = torch.randint(0, V - 1, (2, 12), generator=torch.Generator().manual_seed(3))
    out = diffusion_loss(model, x0, DiffusionOptions(), mask_id=MASK, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    assert float(model.lm_head.weight.grad[MASK].abs().max()) == 0.0


def test_anneal_and_mixture_run_and_are_deterministic() -> None:
    model = tiny()
    x0 = torch.randint(0, V - 1, (4, 16), generator=torch.Generator().manual_seed(4))
    for spec in ("anneal:10", "block:1@0.5,4@0.5"):
        opts = DiffusionOptions(attention=spec, weighting="cart")
        a = diffusion_loss(model, x0, opts, mask_id=MASK, step=3, generator=torch.Generator().manual_seed(5))
        b = diffusion_loss(model, x0, opts, mask_id=MASK, step=3, generator=torch.Generator().manual_seed(5))
        assert a.loss.item() == b.loss.item()
        assert torch.isfinite(a.loss)


def test_ar_loss_matches_transformers_label_loss() -> None:
    model = tiny()
    x0 = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(6))
    am = torch.ones_like(x0)
    am[1, 6:] = 0
    labels = x0.masked_fill(am == 0, -100)
    attn.make_bidirectional(model)  # ar_loss must force causal attention regardless
    with torch.no_grad():
        ref = model(input_ids=x0, attention_mask=am, labels=labels, is_causal=True).loss
        out = ar_loss(model, x0, am)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert int(out.n_tokens) == 8 + 5


def test_heldout_loss_is_deterministic() -> None:
    model = tiny()
    x0 = torch.randint(0, V - 1, (5, 12), generator=torch.Generator().manual_seed(7))
    opts = DiffusionOptions(schedule="loglinear")
    a = heldout_loss(model, x0, opts, mask_id=MASK, batch_size=2)
    b = heldout_loss(model, x0, opts, mask_id=MASK, batch_size=2)
    assert a == b
    grid = ("0.1", "0.3", "0.5", "0.7", "0.9")
    assert set(a) == {f"{k}@{t}" for k in ("ce", "acc") for t in grid} | {"loss", "acc"}
    assert all(math.isfinite(v) for v in a.values())


class ConstantPredictor(torch.nn.Module):
    """Predicts token `token` everywhere, whatever it reads."""

    def __init__(self, token: int, vocab: int) -> None:
        super().__init__()
        self.token, self.vocab = token, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Cfg", (), {"vocab_size": vocab})()

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.anchor
        logits[..., self.token] = 5.0
        return type("Out", (), {"logits": logits})()


def test_heldout_accuracy_against_known_predictions() -> None:
    opts = DiffusionOptions()
    always3 = ConstantPredictor(3, V)
    right = heldout_loss(always3, torch.full((4, 10), 3), opts, mask_id=MASK, batch_size=2)
    wrong = heldout_loss(always3, torch.full((4, 10), 2), opts, mask_id=MASK, batch_size=2)
    assert right["acc"] == 1.0 and wrong["acc"] == 0.0
    half = torch.tensor([[3, 2] * 5] * 4)  # every other clean token is the predicted one
    mixed = heldout_loss(always3, half, opts, mask_id=MASK, batch_size=2)
    assert 0.2 < mixed["acc"] < 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": "gauss"}, "absorbing"),
        ({"schedule": "sqrt"}, "linear"),
        ({"weighting": "x"}, "elbo"),
        ({"noise": "uniform", "weighting": "cart"}, "cart"),
        ({"attention": "causal"}, "causal"),
        ({"attention": "block"}, "Accepted"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        DiffusionOptions(**kwargs).checked()  # type: ignore[arg-type]


def test_absorbing_needs_mask_id() -> None:
    with pytest.raises(UserError, match="mask"):
        diffusion_loss(tiny(), torch.zeros(1, 4, dtype=torch.long), DiffusionOptions(), mask_id=None)


@pytest.mark.parametrize("spec", ["bidirectional", "anneal:10", "block:2@0.5,4@0.5"])
def test_global_draw_split_into_rows_matches_whole_batch(spec: str) -> None:
    """Drawing once for a global batch and evaluating row shards equals the whole-batch loss."""
    model = tiny()
    x0 = torch.randint(0, V - 1, (4, 12), generator=torch.Generator().manual_seed(8))
    opts = DiffusionOptions(attention=spec)
    draw = draw_noise(x0, opts, mask_id=MASK, vocab_size=V, step=4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = diffusion_loss(model, x0, opts, mask_id=MASK, step=4, draw=draw)
        parts = [
            diffusion_loss(model, x0[i : i + 2], opts, mask_id=MASK, step=4, draw=draw.rows(slice(i, i + 2)))
            for i in (0, 2)
        ]
    total = sum(p.loss * p.n_tokens for p in parts) / sum(p.n_tokens for p in parts)
    assert whole.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert int(whole.n_correct) == sum(int(p.n_correct) for p in parts)


def test_per_document_loss_never_reads_across_documents() -> None:
    """With per-document attention and shift on, the first token of a document is never a loss
    position (its read position lies in the previous document), and the loss of a packed row
    equals the sum of its documents' losses, each computed alone with the same corruption."""
    from conversion.objective import eligible_positions

    sep = 2
    x0 = torch.tensor([[11, 12, 13, sep, 21, 22, 23, 24, sep, 31, 32]])
    docs = attn.document_ids(x0, sep)
    eligible = eligible_positions(x0.shape, shift=True, document_ids=docs)
    assert eligible.tolist() == [[False, True, True, True, False, True, True, True, True, False, True]]
    model = tiny()
    opts = DiffusionOptions(weighting="flat")
    t = torch.tensor([0.7])
    draw = draw_noise(
        x0, opts, mask_id=MASK, vocab_size=V, t=t, generator=torch.Generator().manual_seed(1), document_ids=docs
    )
    whole = diffusion_loss(model, x0, opts, mask_id=MASK, draw=draw, document_ids=docs)
    assert int(whole.n_masked) >= 3
    total, count = 0.0, 0
    for d in range(3):
        cols = (docs[0] == d).nonzero().squeeze(1)
        c = draw.corruption
        part = NoiseDraw(noise.Corruption(t=t, xt=c.xt[:, cols], noised=c.noised[:, cols]))
        out = diffusion_loss(model, x0[:, cols], opts, mask_id=MASK, draw=part)
        total += float(out.loss) * int(out.n_tokens)
        count += int(out.n_tokens)
    assert count == int(whole.n_tokens) == int(eligible.sum())
    assert total == pytest.approx(float(whole.loss) * int(whole.n_tokens), rel=1e-5)


def test_trimming_sft_padding_changes_no_loss() -> None:
    """Cutting right padding off SFT rows (`conversion.sft.trim_padding`) leaves the loss of a
    fixed corruption unchanged: padded keys are masked and padded positions carry no loss."""
    from conversion.sft import trim_padding

    model = tiny()
    x0 = torch.randint(0, V - 1, (3, 12), generator=torch.Generator().manual_seed(4))
    am = torch.zeros_like(x0)
    am[0, :7], am[1, :5], am[2, :8] = 1, 1, 1
    x0 = x0.masked_fill(am == 0, 0)
    prompt = torch.zeros_like(x0, dtype=torch.bool)
    prompt[:, :3] = True
    ids, tam, tpm = trim_padding(x0, am, prompt)
    assert ids.shape == (3, 8) and torch.equal(ids, x0[:, :8]) and int(tam.sum()) == int(am.sum())
    opts = DiffusionOptions(shift=True, weighting="flat")
    short = draw_noise(ids, opts, mask_id=MASK, vocab_size=V, step=0, generator=torch.Generator().manual_seed(1),
                       attention_mask=tam, prompt_mask=tpm)  # fmt: skip
    c = short.corruption
    pad = lambda x, v: torch.cat([x, torch.full((3, 4), v, dtype=x.dtype)], 1)  # noqa: E731
    full = NoiseDraw(noise.Corruption(t=c.t, xt=pad(c.xt, 0), noised=pad(c.noised, False)))
    a = diffusion_loss(model, ids, opts, mask_id=MASK, draw=short, attention_mask=tam, prompt_mask=tpm)
    b = diffusion_loss(model, x0, opts, mask_id=MASK, draw=full, attention_mask=am, prompt_mask=prompt)
    assert int(a.n_masked) > 0 and int(a.n_tokens) == int(b.n_tokens)
    assert float(a.loss) == pytest.approx(float(b.loss), abs=1e-5)
    assert trim_padding(x0, None, None)[0] is x0
