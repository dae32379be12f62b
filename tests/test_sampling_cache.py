"""KV caches and parallel-decoding rules (ar2mdm.sampling.cache, ar2mdm.sampling.threshold), against full
recomputation and hand computations.

Drift (`ar2mdm.sampling.cache.drift`) is the largest |cached - recomputed| logit over the positions a
step may commit, against an uncached call on the same canvas: 0 where a cache is exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion.attention import make_bidirectional
from ar2mdm.sampling import (
    FactorSampler,
    ModelContext,
    ThresholdSampler,
    build_sampler,
    drift,
    factor_commit,
    make_canvas,
    run,
)

MASK = 39
EXACT = 1e-5


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    torch.manual_seed(0)
    return make_bidirectional(AutoModelForCausalLM.from_config(tiny_config(request.param, 40))).eval()


def canvas():
    # two rows of different lengths (right padding), 12 tokens each to generate
    return make_canvas([[1, 5, 6, 7, 8], [1, 9, 10]], 12, mask_id=MASK, pad_id=0)


def bidir(shift=True):
    return ModelContext(kind="mdm", mask_id=MASK, shift=shift)


def block_ctx(shift=True):
    return ModelContext(kind="mdm", mask_id=MASK, shift=shift, block_size=4)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("shift", [True, False])
def test_every_cache_is_exact_on_block_diffusion(model, cache, shift):
    ids, am = canvas()
    d = drift(ThresholdSampler(tau=0.3, cache=cache), model, ids, am, block_ctx(shift))
    assert len(d) >= 3 and max(d) <= EXACT
    cached = run(ThresholdSampler(tau=0.3, cache=cache), model, ids, am, block_ctx(shift))
    plain = run(ThresholdSampler(tau=0.3, cache="none"), model, ids, am, block_ctx(shift))
    assert torch.equal(cached.ids, plain.ids) and cached.nfe == plain.nfe


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_bidirectional_caches_drift_and_refresh_one_is_exact(model, cache):
    ids, am = canvas()
    approx = drift(ThresholdSampler(tau=0.3, cache=cache, block_length=4), model, ids, am, bidir())
    # each block starts with a full call (drift 0); later calls reuse keys computed while the
    # block was masked, which a bidirectional model's other positions attended to
    assert approx[0] <= EXACT and max(approx) > 1e-4
    exact = drift(ThresholdSampler(tau=0.3, cache=cache, block_length=4, refresh=1), model, ids, am, bidir())
    assert max(exact) <= EXACT


def test_dual_cache_runs_fewer_tokens_per_call_than_prefix(model):
    """The dual cache's calls inside a block see the block alone; the prefix cache's the block
    and everything after it. Counted through the input lengths the model receives."""
    ids, am = make_canvas([[1, 5, 6], [1, 9, 10]], 12, mask_id=MASK, pad_id=0)  # rows in step
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        for cache in ("prefix", "dual"):
            seen.clear()
            run(ThresholdSampler(tau=0.99, cache=cache, block_length=4), model, ids, am, bidir())
            short = [n for n in seen if n < ids.shape[1]]
            if cache == "prefix":
                prefix_lengths = short
            else:
                assert short and max(short) <= 4 + 1  # the block (+ the position before it, shift)
                assert sum(short) < sum(prefix_lengths)
    finally:
        hook.remove()


def test_batched_rows_decode_as_alone_with_an_exact_cache(model):
    ids, am = canvas()
    both = run(ThresholdSampler(tau=0.5, cache="dual"), model, ids, am, block_ctx())
    for row in range(2):
        n = int(am[row].sum())
        alone = run(
            ThresholdSampler(tau=0.5, cache="dual"),
            model,
            ids[row : row + 1, :n],
            am[row : row + 1, :n],
            block_ctx(),
            row_ids=[row],
        )
        assert both.ids[row, :n].tolist() == alone.ids[0].tolist()


def test_factor_rule_by_hand():
    conf = torch.tensor([[0.99, 0.95, 0.7, 0.6], [0.5, 0.4, 0.9, 0.1]], dtype=torch.float64)
    active = torch.tensor([[True, True, True, True], [True, True, True, False]])
    # row 0: n=1: 2 * 0.01 = 0.02 < 1; n=2: 3 * 0.05 = 0.15 < 1; n=3: 4 * 0.3 = 1.2 -> two
    # row 1: n=1: 2 * 0.1 = 0.2 < 1; n=2: 3 * 0.5 = 1.5 -> one (position 2)
    out = factor_commit(conf, active, 1.0)
    assert out.tolist() == [[True, True, False, False], [False, False, True, False]]
    # nothing qualifies -> still the single most confident (progress)
    low = factor_commit(torch.tensor([[0.2, 0.3]], dtype=torch.float64), torch.tensor([[True, True]]), 0.5)
    assert low.tolist() == [[False, True]]
    # a larger factor commits more
    assert int(factor_commit(conf, active, 2.0)[0].sum()) == 3


class EOSModel(torch.nn.Module):
    """Position i predicts table[i] with near-certainty, except position `late` (low confidence)."""

    def __init__(self, table, late):
        super().__init__()
        self.table, self.late, self.calls = table, late, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        self.calls += 1
        B, T = input_ids.shape
        logits = torch.full((B, T, 8), -10.0)
        for i in range(T):
            logits[:, i, self.table[i]] = 9.0
        logits[:, self.late, (self.table[self.late] + 1) % 7] = 9.0  # a tie: p = 0.5 there
        return SimpleNamespace(logits=logits)


def test_stop_at_eos_ends_the_row_without_more_calls():
    # canvas: prompt [1], 6 to generate; the model says 3 4 <eos>=2 then (unsure) 5 ...
    ctx = ModelContext(kind="mdm", mask_id=7, shift=False, eos_id=2)
    ids = torch.tensor([[1, 7, 7, 7, 7, 7, 7]])
    model = EOSModel([1, 3, 4, 2, 6, 5, 6], late=5)
    stopped = run(ThresholdSampler(tau=0.9, cache="none", stop_at_eos=True), model, ids, None, ctx)
    assert stopped.ids.tolist() == [[1, 3, 4, 2, 2, 2, 2]] and stopped.nfe == 1
    model.calls = 0
    plain = run(ThresholdSampler(tau=0.9, cache="none"), model, ids, None, ctx)
    assert plain.ids.tolist() == [[1, 3, 4, 2, 6, 5, 6]] and plain.nfe == 2
    # an EOS after a still-undecided position does not end the row
    model2 = EOSModel([1, 3, 4, 2, 6, 5, 6], late=1)
    waits = run(ThresholdSampler(tau=0.9, cache="none", stop_at_eos=True), model2, ids, None, ctx)
    assert waits.nfe == 2 and waits.ids.tolist() == [[1, 3, 4, 2, 2, 2, 2]]


def test_factor_sampler_matches_threshold_where_the_rules_agree(model):
    ids, am = canvas()
    # factor -> 0 commits one token per call, as tau = 1 does (only the top-1)
    a = run(FactorSampler(factor=1e-9, cache="none"), model, ids, am, bidir())
    b = run(ThresholdSampler(tau=1.0, cache="none"), model, ids, am, bidir())
    assert torch.equal(a.ids, b.ids) and a.nfe == b.nfe == 12


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("threshold", {"cache": "suffix"}, "prefix, dual"),
        ("threshold", {"refresh": 0}, "refresh"),
        ("factor", {"factor": 0}, "factor"),
        ("factor", {"tau": 0.5}, "does not take"),
    ],
)
def test_cache_and_rule_options_are_checked(name, options, match):
    with pytest.raises(UserError, match=match):
        build_sampler(name, **options)
