"""Samplers, hand-checked: hand-built models whose predictions are known, and the exact rules.

The property-based checks over random tiny models are in test_sampling_properties.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.sampling import (
    AncestralSampler,
    ARPCSampler,
    ARSampler,
    ConfidenceSampler,
    ModelContext,
    RemaskSampler,
    ThresholdSampler,
    UniformSampler,
    build_sampler,
    check_prompts,
    confidence_fill,
    filter_logits,
    make_canvas,
    run,
    threshold_commit,
    unmask_probability,
)

V, MASK = 6, 5


class TableModel(torch.nn.Module):
    """Logits depend only on position: position i predicts token table[i] with logit conf[i]."""

    def __init__(self, table, conf, vocab=V, mask=MASK):
        super().__init__()
        self.table, self.conf, self.vocab, self.mask = torch.tensor(table), torch.tensor(conf), vocab, mask
        self.calls = 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls += 1
        B, T = input_ids.shape
        logits = torch.full((B, T, self.vocab), -10.0)
        for i in range(T):
            logits[:, i, self.table[i]] = self.conf[i]
        logits[..., self.mask] = 100.0  # must never be chosen (SUBS)
        return SimpleNamespace(logits=logits)


def ctx(shift=False, **kw):
    return ModelContext(kind="mdm", noise=kw.pop("noise", "absorbing"), shift=shift, mask_id=MASK, **kw)


# --- confidence-ordered -------------------------------------------------------------------------


def test_commits_most_confident_first_without_shift():
    model = TableModel(table=[0, 1, 2, 3], conf=[1.0, 3.0, 9.0, 5.0])
    ids = torch.tensor([[4, MASK, MASK, MASK]])
    sampler = ConfidenceSampler("low-confidence")
    state = sampler.init_state(model, ids, None, ctx())
    sampler.step(model, state)
    assert state.ids.tolist() == [[4, MASK, 2, MASK]]  # position 2 is the most confident
    state.steps += 1
    sampler.step(model, state)
    assert state.ids.tolist() == [[4, MASK, 2, 3]]
    out, nfe = confidence_fill(model, ids, mask_id=MASK, shift=False)
    assert out.tolist() == [[4, 1, 2, 3]] and nfe == 3


def test_shift_reads_previous_position():
    # with shift on, the token at position i comes from the row of position i - 1
    model = TableModel(table=[1, 2, 3, 0], conf=[5.0, 4.0, 3.0, 2.0])
    out, nfe = confidence_fill(model, torch.tensor([[4, MASK, MASK, 0]]), mask_id=MASK, shift=True)
    assert out.tolist() == [[4, 1, 2, 0]] and nfe == 2


def test_semi_autoregressive_blocks_finish_in_order():
    # position 4 is the most confident overall, but block 0 (positions 1, 2) must finish first
    model = TableModel(table=[0, 1, 2, 3, 4], conf=[0.0, 1.0, 2.0, 3.0, 9.0])
    ids = torch.tensor([[0, MASK, MASK, MASK, MASK]])
    result = run(ConfidenceSampler("low-confidence", block_length=2), model, ids, None, ctx(), trace=True)
    order = [int(s.committed[0].nonzero()[0]) for s in result.trace]
    assert order == [2, 1, 4, 3] and result.ids.tolist() == [[0, 1, 2, 3, 4]]


def test_margin_and_entropy_rank_by_their_own_rule():
    # position 1: two near-equal top tokens (high max prob... low margin); position 2: a clear winner
    logits = torch.tensor([[[0.0] * 4, [5.0, 4.9, -9, -9], [3.0, 0.0, 0.0, 0.0]]])
    from ar2mdm.sampling.base import confidences

    tok = logits.argmax(-1)
    margin = confidences(logits, tok, "margin")[0]
    assert margin[2] > margin[1]
    p = torch.softmax(logits[0, 1].double(), -1)
    assert math.isclose(float(margin[1]), float(p[0] - p[1]), rel_tol=1e-9)
    ent = confidences(logits, tok, "entropy")[0]
    assert math.isclose(float(ent[0]), -math.log(4), rel_tol=1e-9)  # uniform over 4: H = log 4


def test_steps_budget_spreads_commits_evenly():
    model = TableModel(table=[0, 1, 2, 3, 4, 0, 1], conf=[1.0] * 7)
    ids = torch.tensor([[0] + [MASK] * 6])
    result = run(ConfidenceSampler("low-confidence", steps=3), model, ids, None, ctx(), trace=True)
    assert [int(s.committed.sum()) for s in result.trace] == [2, 2, 2] and result.nfe == 3


# --- ancestral ------------------------------------------------------------------------------------


def test_unmask_probability_by_hand():
    assert math.isclose(float(unmask_probability("linear", 1.0, 0.75)), 0.25)
    assert math.isclose(float(unmask_probability("linear", 0.5, 0.25)), 0.5)
    # cosine: alpha(t) = 1 - cos(pi/2 (1 - t)); t = 0.5 -> 1 - cos(pi/4), s = 0 -> 1 (always revealed)
    a_t = 1 - math.cos(math.pi / 4)
    a_s = 1 - math.cos(math.pi / 2 * 0.75)
    assert math.isclose(float(unmask_probability("cosine", 0.5, 0.25)), (a_s - a_t) / (1 - a_t), rel_tol=1e-9)
    assert float(unmask_probability("cosine", 0.3, 0.0)) == 1.0


def test_ancestral_reveals_the_scheduled_fraction():
    # 4 steps, linear: the first step goes t = 1 -> 0.75 and reveals each mask with p = 0.25
    n = 4000
    model = TableModel(table=[1] * (n + 1), conf=[0.0] * (n + 1))
    ids = torch.tensor([[0] + [MASK] * n])
    sampler = AncestralSampler(steps=4, temperature=0.0)
    state = sampler.init_state(model, ids, None, ctx())
    sampler.step(model, state)
    frac = (state.ids[0, 1:] != MASK).double().mean().item()
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    state.steps += 1
    sampler.step(model, state)  # t = 0.75 -> 0.5: p = 1/3 of what is left; half revealed in total
    frac = (state.ids[0, 1:] != MASK).double().mean().item()
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / n)


def test_ancestral_reuses_prediction_when_nothing_changes():
    model = TableModel(table=[1] * 3, conf=[0.0] * 3)
    ids = torch.tensor([[0, MASK, MASK]])
    result = run(AncestralSampler(steps=64, temperature=0.0), model, ids, None, ctx())
    # up to 64 steps, but the model runs only at the start and after a step that revealed something
    assert result.nfe == model.calls <= 2 < result.steps


# --- threshold ------------------------------------------------------------------------------------


def test_threshold_rule_by_hand():
    conf = torch.tensor([[0.95, 0.5, 0.91, 0.2], [0.5, 0.6, 0.2, 0.1]])
    active = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = threshold_commit(conf, active, 0.9)
    assert out.tolist() == [[True, False, True, False], [False, True, False, False]]


def test_threshold_commits_all_confident_tokens_in_one_call():
    # softmax over V=6 with one logit at 9 vs -10: p ~ 1 -> everything above tau at once
    model = TableModel(table=[0, 1, 2, 3], conf=[9.0, 9.0, 9.0, 9.0])
    result = run(ThresholdSampler(tau=0.9), model, torch.tensor([[0, MASK, MASK, MASK]]), None, ctx())
    assert result.nfe == 1 and result.ids.tolist() == [[0, 1, 2, 3]]


# --- AR -------------------------------------------------------------------------------------------


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=None)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_k=None, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = ~torch.isinf(filter_logits(logits, top_k=None, top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ar_greedy_with_cache_equals_hf_generate(family):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, 40)).eval()
    prompts = [[1, 5, 6, 7], [1, 9]]
    ar_ctx = ModelContext(kind="ar", shift=True, pad_id=0)
    canvas, am = make_canvas(prompts, 6, mask_id=ar_ctx.placeholder, pad_id=0)
    cached = run(ARSampler(), model, canvas, am, ar_ctx)
    plain = run(ARSampler(use_cache=False), model, canvas, am, ar_ctx)
    assert torch.equal(cached.ids, plain.ids) and cached.nfe == 6
    for b, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert cached.generated(b) == ref[0, len(p) :].tolist()


# --- remasking and ARPC ---------------------------------------------------------------------------


def test_remask_cap_revises_tokens_and_leaves_no_mask():
    torch.manual_seed(0)
    n = 40
    model = TableModel(table=torch.randint(0, 5, (n + 1,)).tolist(), conf=[0.5] * (n + 1))
    ids = torch.tensor([[0] + [MASK] * n])
    result = run(RemaskSampler(steps=10, strategy="cap", eta=0.5, temperature=0.0), model, ids, None, ctx(), trace=True)
    assert int(sum(s.remasked.sum() for s in result.trace)) > 0
    assert not bool((result.ids == MASK).any())


def test_arpc_remasks_the_tokens_the_ar_scorer_dislikes():
    # MDM proposes token 1 everywhere; the AR scorer gives token 1 low probability after position 2
    mdm = TableModel(table=[1] * 6, conf=[3.0] * 6)

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, **kwargs):
            self.calls += 1
            logits = torch.zeros(input_ids.shape + (V,))
            logits[:, :, 1] = 5.0
            logits[:, 3, 1] = -5.0  # predicts position 4: token 1 is unlikely there
            logits[:, 4, 1] = -4.0  # predicts position 5
            return SimpleNamespace(logits=logits)

    scorer = Scorer()
    ids = torch.tensor([[0, 0, MASK, MASK, MASK, MASK]])
    sampler = ARPCSampler(scorer, steps=2, block_length=None, temperature=0.0)
    state = sampler.init_state(mdm, ids, None, ctx(shift=False))
    sampler.step(mdm, state)  # t = 1 -> 0.5: k = round(0.5 * 4) = 2 worst re-masked
    assert state.ids.tolist() == [[0, 0, 1, 1, MASK, MASK]]
    state.steps += 1
    sampler.step(mdm, state)  # last step: plain ancestral, nothing re-masked
    assert state.ids.tolist() == [[0, 0, 1, 1, 1, 1]]
    assert state.nfe_by == {"mdm": 2, "ar": 1} and scorer.calls == 1


# --- errors ---------------------------------------------------------------------------------------


def test_mask_at_position_zero_with_shift_is_an_error():
    model = TableModel(table=[0, 1], conf=[1.0, 1.0])
    with pytest.raises(UserError, match="position 0"):
        run(ConfidenceSampler(), model, torch.tensor([[MASK, 1]]), None, ctx(shift=True))


@pytest.mark.parametrize(
    "sampler, context, match",
    [
        (UniformSampler(), ctx(), "uniform noise"),
        (AncestralSampler(), ctx(noise="uniform"), "--sampler uniform"),
        (ARPCSampler(None), ctx(), "AR scorer"),
        (ARSampler(), ctx(), "MDM sampler"),
        (ConfidenceSampler(), ModelContext(kind="ar"), "ar2mdm convert"),
        (ConfidenceSampler(), ctx(context_length=3), "context"),
        (ConfidenceSampler(steps=1, block_length=1), ctx(), "fewer than"),
    ],
)
def test_samplers_refuse_what_does_not_fit(sampler, context, match):
    model = TableModel(table=[0] * 5, conf=[1.0] * 5)
    with pytest.raises(UserError, match=match):
        run(sampler, model, torch.tensor([[0, MASK, MASK, MASK, 1]]), None, context)


def test_canvas_lengths_are_checked_against_the_context_before_it_is_built():
    """Rows that fill the context exactly are built; one position more is refused with the number of
    new tokens that fit, and before any row is made (a two-billion-token canvas is never built)."""
    ids, am = make_canvas([[1, 2], [3]], [2, 3], mask_id=MASK, pad_id=0, suffixes=[[4], []], context_length=5)
    assert ids.tolist() == [[1, 2, MASK, MASK, 4], [3, MASK, MASK, MASK, 0]] and am.sum().item() == 9
    with pytest.raises(
        UserError, match=r"prompt 1 of 2 \(2 tokens\) \+ 3 tokens to generate \+ a suffix of 1 = 6.*at most 2"
    ):
        make_canvas([[1, 2], [3]], 3, mask_id=MASK, pad_id=0, suffixes=[[4], []], context_length=5)
    # checked before the rows are made: otherwise this would allocate a 2e9-entry list (16 GB) first
    with pytest.raises(UserError, match="context of 128; at most 126 new tokens fit after the prompt"):
        make_canvas([[1, 2]], 2_000_000_000, mask_id=MASK, pad_id=0, context_length=128)
    with pytest.raises(UserError, match="the prompt alone fills the context"):
        make_canvas([[1] * 128], 1, mask_id=MASK, pad_id=0, context_length=128)


def test_check_prompts_names_the_empty_one():
    check_prompts(["When Mary", " went"])
    with pytest.raises(UserError, match=r"--prompt number 2 \(of 3\) is empty"):
        check_prompts(["When Mary", "  ", "Tom"])
    with pytest.raises(UserError, match="--prompt is empty"):
        check_prompts([""])
    with pytest.raises(UserError, match="no prompts given"):
        check_prompts([], "prompts")


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("nope", {}, "unknown sampler"),
        ("threshold", {"tau": 1.5}, "tau"),
        ("remask", {"strategy": "x"}, "strategy"),
        ("low-confidence", {"steps": 0}, "steps"),
        ("ancestral", {"tau": 0.9}, "does not take"),
    ],
)
def test_build_sampler_errors(name, options, match):
    with pytest.raises(UserError, match=match):
        build_sampler(name, **options)
