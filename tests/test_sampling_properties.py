"""Property-based checks of every sampler over random tiny models, canvases and settings.

For every draw: prompt (and suffix) tokens never change; no mask remains; absorbing samplers
without remasking never change a committed token; NFE equals the number of model calls (counted
by forward hooks on the models themselves); the same seed gives the same output; a batch gives
the same tokens as its rows run one by one.
"""

from __future__ import annotations

from functools import cache

import torch
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from ar2mdm.diffusion.attention import make_bidirectional
from ar2mdm.sampling import ModelContext, build_sampler, make_canvas, run

VOCAB, MASK = 40, 39
SPECIALS = (0, 1, 2)
MDM_SAMPLERS = ("ancestral", "low-confidence", "margin", "entropy", "threshold", "remask", "arpc", "uniform")
NO_REMASK = ("ancestral", "low-confidence", "margin", "entropy", "threshold")

PROPS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@cache
def tiny(family: str, seed: int, bidirectional: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, VOCAB)).eval()
    return make_bidirectional(model) if bidirectional else model


class Counter:
    """Counts forward calls of a module through a hook (independent of the sampler's own count)."""

    def __init__(self, *models):
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self._hook) for m in models]

    def _hook(self, module, args):
        self.calls += 1

    def close(self):
        for h in self.handles:
            h.remove()


@st.composite
def settings_(draw, names=MDM_SAMPLERS):
    name = draw(st.sampled_from(names))
    family = draw(st.sampled_from(["llama", "gpt2", "qwen2", "gemma3_text"]))
    shift = draw(st.booleans())
    batch = draw(st.integers(1, 3))
    prompts = [[1] + draw(st.lists(st.integers(3, MASK - 1), min_size=0, max_size=4)) for _ in range(batch)]
    gen = draw(st.lists(st.integers(1, 6), min_size=batch, max_size=batch))
    suffix = draw(st.booleans()) and name != "ar"
    suffixes = [
        draw(st.lists(st.integers(3, MASK - 1), min_size=1, max_size=2)) if suffix else [] for _ in range(batch)
    ]
    block_size = draw(st.sampled_from([None, None, 2, 3])) if name not in ("uniform",) else None
    opts: dict = {"temperature": draw(st.sampled_from([0.0, 1.0]))}
    if name in ("ancestral", "low-confidence", "margin", "entropy", "remask", "arpc"):
        opts["steps"] = draw(st.sampled_from([None, 4, 8]))
        opts["block_length"] = draw(st.sampled_from([None, 2])) if block_size is None else None
    if name == "uniform":
        opts["steps"] = draw(st.sampled_from([None, 3]))
    if name == "threshold":
        opts["tau"] = draw(st.sampled_from([0.05, 0.5, 0.9]))
        opts["block_length"] = draw(st.sampled_from([None, 2])) if block_size is None else None
        # the approximate prefix cache depends on the batch (see threshold.py); exact otherwise
        opts["cache"] = "prefix" if block_size is not None else "none"
    if name == "remask":
        opts["strategy"] = draw(st.sampled_from(["cap", "rescale", "conf"]))
        opts["eta"] = draw(st.sampled_from([0.1, 0.5]))
    if name == "arpc":
        opts["score"] = draw(st.sampled_from(["nll", "divergence"]))
    seed = draw(st.integers(0, 3))
    return name, family, shift, prompts, gen, suffixes, block_size, opts, seed


def _setup(name, family, shift, prompts, gen, suffixes, block_size, opts):
    model = tiny(family, 0, bidirectional=True)
    extra = {}
    models = [model]
    if name == "arpc":
        scorer = tiny(family, 1, bidirectional=False)
        extra["scorer"] = scorer
        models.append(scorer)
    ctx = ModelContext(
        kind="mdm",
        noise="uniform" if name == "uniform" else "absorbing",
        shift=shift,
        mask_id=MASK,
        block_size=block_size,
        pad_id=0,
        exclude_ids=SPECIALS,
    )
    canvas, am = make_canvas(prompts, gen, mask_id=MASK, pad_id=0, suffixes=suffixes)
    return model, models, build_sampler(name, **opts, **extra), ctx, canvas, am


@PROPS
@given(settings_())
def test_invariants(case):
    name, family, shift, prompts, gen, suffixes, block_size, opts, seed = case
    model, models, sampler, ctx, canvas, am = _setup(name, family, shift, prompts, gen, suffixes, block_size, opts)
    counter = Counter(*models)
    try:
        state = sampler.init_state(model, canvas, am, ctx, seed=seed)
        with torch.no_grad():
            while not sampler.done(state):
                before_ids, before_done = state.ids.clone(), state.gen & ~state.masked
                sampler.step(model, state)
                state.steps += 1
                if name in NO_REMASK:  # committed tokens never change
                    assert torch.equal(state.ids[before_done], before_ids[before_done])
                assert state.steps < 200
    finally:
        counter.close()
    fixed = ~state.gen
    assert torch.equal(state.ids[fixed], canvas[fixed]), "a prompt, suffix or pad token changed"
    assert not bool((state.ids[state.gen] == MASK).any()), "a mask remains"
    assert state.nfe == counter.calls
    if name == "uniform":
        assert not any(bool((state.ids[state.gen] == s).any()) for s in SPECIALS)


@PROPS
@given(settings_())
def test_same_seed_same_output_and_batched_equals_one_by_one(case):
    name, family, shift, prompts, gen, suffixes, block_size, opts, seed = case
    model, _, sampler, ctx, canvas, am = _setup(name, family, shift, prompts, gen, suffixes, block_size, opts)
    first = run(sampler, model, canvas, am, ctx, seed=seed)
    again = run(sampler, model, canvas, am, ctx, seed=seed)
    assert torch.equal(first.ids, again.ids) and first.nfe == again.nfe
    for b in range(len(prompts)):
        one_canvas, one_am = make_canvas([prompts[b]], [gen[b]], mask_id=MASK, pad_id=0, suffixes=[suffixes[b]])
        alone = run(sampler, model, one_canvas, one_am, ctx, seed=seed, row_ids=[b])
        assert alone.generated(0) == first.generated(b), f"row {b} differs when run alone"
        assert int(alone.row_nfe[0]) <= int(first.row_nfe[b]) + (1 if name == "ancestral" else 0)


@PROPS
@given(
    family=st.sampled_from(["llama", "gpt2"]),
    batch=st.integers(1, 3),
    lengths=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    gen=st.integers(1, 5),
    temperature=st.sampled_from([0.0, 1.0]),
    top_k=st.sampled_from([None, 5]),
    top_p=st.sampled_from([None, 0.9]),
    seed=st.integers(0, 3),
)
def test_ar_sampler_properties(family, batch, lengths, gen, temperature, top_k, top_p, seed):
    model = tiny(family, 2, bidirectional=False)
    prompts = [[1] + list(range(3, 3 + n)) for n in lengths[:batch]]
    ctx = ModelContext(kind="ar", shift=True, pad_id=0)
    canvas, am = make_canvas(prompts, gen, mask_id=ctx.placeholder, pad_id=0)
    sampler = build_sampler("ar", temperature=temperature, top_k=top_k, top_p=top_p)
    counter = Counter(model)
    try:
        out = run(sampler, model, canvas, am, ctx, seed=seed)
    finally:
        counter.close()
    assert out.nfe == counter.calls == gen
    assert torch.equal(out.ids[~out.gen], canvas[~out.gen])
    assert not bool((out.ids[out.gen] == ctx.placeholder).any())
    assert torch.equal(run(sampler, model, canvas, am, ctx, seed=seed).ids, out.ids)
    for b, p in enumerate(prompts):
        one, one_am = make_canvas([p], gen, mask_id=ctx.placeholder, pad_id=0)
        assert run(sampler, model, one, one_am, ctx, seed=seed, row_ids=[b]).generated(0) == out.generated(b)
