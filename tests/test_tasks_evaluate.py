"""ar2mdm.tasks.evaluate against hand computations on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from _tasks_helpers import tiny_llama, word_tokenizer

from ar2mdm.common.errors import TaskError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.tasks import get_task, render
from ar2mdm.tasks.evaluate import greedy_accuracy, greedy_generate, logit_metrics, set_scores


@pytest.fixture(scope="module")
def setup():
    tok = word_tokenizer()
    return tok, tiny_llama(len(tok))


def _by_hand(model, ids, pos, correct, counter):
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, pos]
    diff = torch.logsumexp(logits[correct], 0) - torch.logsumexp(logits[counter], 0)
    probs = logits.softmax(-1)
    return float(diff), float(probs[correct].sum() - probs[counter].sum())


@pytest.mark.parametrize("name", ["ioi", "greater_than", "infilling"])
def test_ar_metrics_match_a_hand_computation(setup, name):
    tok, model = setup
    examples = get_task(name, tok).generate_aligned(6, seed=0)
    m = logit_metrics(model, tok, examples, batch_size=4, corrupted=True)
    for i, ex in enumerate(examples):
        r = render(ex, tok, "ar")
        pos = len(r.input_ids) - 1
        d, p = _by_hand(model, r.input_ids, pos, r.correct_ids, r.counterfactual_ids)
        assert m["logit_diff"][i] == pytest.approx(d, abs=1e-5)
        assert m["prob_diff"][i] == pytest.approx(p, abs=1e-6)
        cd, _ = _by_hand(model, r.corrupted_ids, pos, r.correct_ids, r.counterfactual_ids)
        assert m["corrupted_logit_diff"][i] == pytest.approx(cd, abs=1e-5)
    assert m["accuracy"] == pytest.approx(float((m["logit_diff"] > 0).float().mean()))
    assert m["mean_logit_diff"] == pytest.approx(float(m["logit_diff"].mean()))
    assert m["n"] == 6


@pytest.mark.parametrize("shift", [True, False])
def test_mdm_metrics_read_where_the_shift_says(setup, shift):
    tok, model = setup
    meta = ModelMeta(kind="mdm", shift=shift, mask_id=tok.mask_token_id)
    examples = get_task("infilling", tok).generate_aligned(5, seed=1)
    m = logit_metrics(model, tok, examples, mode="mdm", meta=meta, batch_size=2)
    for i, ex in enumerate(examples):
        r = render(ex, tok, "mdm", shift=shift, mask_id=tok.mask_token_id)
        first_mask = int((r.input_ids == tok.mask_token_id).nonzero()[0])
        pos = first_mask - 1 if shift else first_mask
        d, _ = _by_hand(model, r.input_ids, pos, r.correct_ids, r.counterfactual_ids)
        assert m["logit_diff"][i] == pytest.approx(d, abs=1e-5)


def test_batched_equals_unbatched_and_rendered_equals_examples(setup):
    tok, model = setup
    examples = get_task("countdown", tok).generate_aligned(7, seed=0)
    one = logit_metrics(model, tok, examples, batch_size=1)
    many = logit_metrics(model, tok, examples, batch_size=4)
    pre = logit_metrics(model, tok, [render(e, tok, "ar") for e in examples], batch_size=3)
    assert torch.allclose(one["logit_diff"], many["logit_diff"], atol=1e-5)
    assert torch.allclose(one["logit_diff"], pre["logit_diff"], atol=1e-5)


def test_set_scores_for_singletons_is_the_plain_difference():
    logits = torch.tensor([1.0, 3.0, -2.0, 0.5])
    d, p = set_scores(logits, torch.tensor([1]), torch.tensor([3]))
    assert d == pytest.approx(2.5)
    probs = logits.softmax(-1)
    assert p == pytest.approx(float(probs[1] - probs[3]))
    d, _ = set_scores(logits, torch.tensor([0, 1]), torch.tensor([2]))
    assert d == pytest.approx(float(torch.logsumexp(logits[:2], 0) - logits[2]))


def test_metric_errors(setup):
    tok, model = setup
    examples = get_task("ioi", tok).generate(2)
    with pytest.raises(TaskError, match="ModelMeta"):
        logit_metrics(model, tok, examples, mode="mdm")
    with pytest.raises(TaskError, match="no examples"):
        logit_metrics(model, tok, [])


def test_greedy_generation_batched_equals_one_by_one(setup):
    tok, model = setup
    examples = get_task("induction", tok, length=5).generate(5, seed=0) + get_task("ioi", tok).generate(3)
    prompts = [e.prompt for e in examples]
    limits = [3, 1, 4, 2, 3, 5, 1, 2]
    batched = greedy_generate(model, tok, prompts, limits, batch_size=8)
    single = [greedy_generate(model, tok, [p], n)[0] for p, n in zip(prompts, limits, strict=True)]
    assert batched == single
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= n for t, n in zip(batched, limits, strict=True))


def test_greedy_accuracy_applies_the_checker(setup):
    tok, model = setup
    task = get_task("ioi", tok)
    examples = task.generate(6, seed=2)
    texts = greedy_generate(model, tok, [e.prompt for e in examples], 5)
    expected = sum(task.check(e, t) for e, t in zip(examples, texts, strict=True)) / 6
    assert greedy_accuracy(model, tok, task, examples, batch_size=4) == expected
