"""Logit lens, direct logit attribution and the answer metric, at shift-aware read positions."""

from __future__ import annotations

import pytest
import torch
from test_probe import FAMS, MASK_ID, folder, probed
from transformers import AutoModelForCausalLM, AutoTokenizer

from ar2mdm.common.metadata import ModelMeta
from ar2mdm.tasks import collate, get_task, render
from ar2mdm.tasks.evaluate import logit_metrics
from probe import ProbedModel, answer_logit_diff, direct_logit_attribution, logit_lens
from probe.lens import read_targets


def ioi_batch(family: str, mode: str, shift: bool = True):
    tok = AutoTokenizer.from_pretrained(folder(family))
    examples = get_task("ioi", tok).generate_aligned(4, tok, seed=0)
    rendered = [render(ex, tok, mode, shift=shift, mask_id=MASK_ID) for ex in examples]
    return tok, rendered, collate(rendered, tok.pad_token_id)


@pytest.mark.parametrize(("kind", "shift"), [("ar", True), ("mdm", True), ("mdm", False)])
def test_answer_logit_diff_matches_task_metrics(kind: str, shift: bool) -> None:
    if shift:
        pm = probed("llama", kind)
    else:  # an MDM read in place (LLaDA-style): the prediction for i sits at i
        model = AutoModelForCausalLM.from_pretrained(folder("llama", "mdm"))
        pm = ProbedModel.from_checkpoint(model, meta=ModelMeta(kind="mdm", shift=False, mask_id=MASK_ID))
    tok, rendered, batch = ioi_batch("llama", kind, shift)
    answer = rendered[0].answer_positions
    assert torch.equal(pm.read_positions(answer), answer - 1 if shift else answer)
    assert torch.equal(rendered[0].read_positions, pm.read_positions(answer))
    ours = answer_logit_diff(pm(batch), batch)
    theirs = logit_metrics(pm.model, tok, rendered, mode=kind, meta=pm.meta)["logit_diff"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMS)
def test_dla_sums_to_the_logit_difference(family: str) -> None:
    pm = probed(family)
    _, rendered, batch = ioi_batch(family, "ar")
    logits, cache = pm.run_with_cache(batch)
    pos, correct, counter = read_targets(batch)
    dla = direct_logit_attribution(pm, cache, pos, correct, counter)
    torch.testing.assert_close(dla.total(), answer_logit_diff(logits, batch), atol=1e-5, rtol=0)
    assert dla.heads(pm.config.n_layers, pm.config.n_heads).shape == (2, 4, 4)
    single = direct_logit_attribution(pm, cache, pos, correct)
    rows = torch.arange(len(pos))
    torch.testing.assert_close(single.total(), logits[rows, pos, correct], atol=1e-5, rtol=0)
    if not pm.config.post_norms:  # a head's share by hand: final norm with its scale frozen, then W_U
        x = cache["L1.resid_post"][rows, pos]
        head = cache["L1.H2"][rows, pos]
        norm = pm.layout.final_norm
        if family == "gpt2":  # LayerNorm
            share = (head - head.mean(-1, keepdim=True)) / torch.sqrt(
                x.var(-1, unbiased=False, keepdim=True) + norm.eps
            )
        else:  # RMSNorm
            share = head / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        w_u = pm.layout.unembed_weight()
        by_hand = (share * norm.weight * (w_u[correct] - w_u[counter])).sum(-1)
        torch.testing.assert_close(dla.parts["L1.H2"], by_hand, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_logit_lens_ends_at_the_model_prediction(kind: str) -> None:
    pm = probed("qwen2", kind)
    _, rendered, batch = ioi_batch("qwen2", kind)
    logits, cache = pm.run_with_cache(batch, ["L*.resid_pre", "L*.resid_post"])
    pos, correct, _ = read_targets(batch)
    curve = logit_lens(pm, cache, pos, correct)
    assert curve.points == ["L0.resid_pre", "L0.resid_post", "L1.resid_post"]
    assert curve.ranks.shape == curve.logprobs.shape == (3, 4)
    rows = torch.arange(4)
    final = logits[rows, pos].float()
    expected_rank = (final > final[rows, correct][:, None]).sum(1)
    assert torch.equal(curve.ranks[-1], expected_rank)
    torch.testing.assert_close(curve.logprobs[-1], torch.log_softmax(final, -1)[rows, correct], atol=1e-5, rtol=0)
    embed_logits = pm.layout.final_norm(cache["L0.resid_pre"][rows, pos]) @ pm.layout.unembed_weight().T
    assert torch.equal(curve.ranks[0], (embed_logits > embed_logits[rows, correct][:, None]).sum(1))
    assert curve.mean_rank().shape == (3,)
