"""Schedules, time sampling, corruption and loss weights against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion import noise

NAMES = sorted(noise.SCHEDULES)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_endpoints_and_monotone(name: str) -> None:
    s = noise.get_schedule(name)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a = s.alpha(t)
    assert a[0].item() == pytest.approx(1.0)
    assert a[-1].item() <= 1e-3 + 1e-12
    assert bool((a[1:] <= a[:-1]).all())


@pytest.mark.parametrize("name", NAMES)
def test_schedule_derivative_matches_finite_differences(name: str) -> None:
    s = noise.get_schedule(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    h = 1e-6
    numeric = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    torch.testing.assert_close(s.dalpha(t), numeric, rtol=1e-6, atol=1e-8)


def test_elbo_weight_closed_forms() -> None:
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(noise.elbo_weight(t, "linear"), 1 / t)
    torch.testing.assert_close(noise.elbo_weight(t, "loglinear"), 1 / t)
    cosine = torch.tensor([0.5 * math.pi * math.tan(0.5 * math.pi * (1 - v)) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(noise.elbo_weight(t, "cosine"), cosine)


def test_unknown_schedule_is_a_user_error() -> None:
    with pytest.raises(UserError, match="linear"):
        noise.get_schedule("sqrt")


@pytest.mark.parametrize("antithetic", [True, False])
def test_sample_t_range_and_determinism(antithetic: bool) -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = noise.sample_t(64, eps=0.01, antithetic=antithetic, generator=g1)
    b = noise.sample_t(64, eps=0.01, antithetic=antithetic, generator=g2)
    assert torch.equal(a, b)
    assert a.shape == (64,)
    assert bool(((a >= 0.01) & (a < 1.0)).all())


@given(batch=st.integers(1, 40), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_antithetic_t_is_stratified(batch: int, seed: int) -> None:
    eps = 1e-3
    t = noise.sample_t(batch, eps=eps, antithetic=True, generator=torch.Generator().manual_seed(seed))
    u = ((t - eps) / (1 - eps)).double()
    # exactly one sample per stratum [k/B, (k+1)/B)
    strata = torch.floor(u * batch + 1e-9).long().sort().values
    assert strata.tolist() == list(range(batch))


def test_absorbing_masks_at_rate_and_respects_protect() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 50, (4, 5000), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    protect = torch.zeros_like(x0, dtype=torch.bool)
    protect[:, :100] = True
    c = noise.absorbing(x0, t, "linear", mask_id=99, generator=g, protect=protect)
    assert not bool(c.noised[:, :100].any())
    assert torch.equal(c.xt, torch.where(c.noised, torch.full_like(x0, 99), x0))
    rate = c.noised[:, 100:].float().mean(1)
    torch.testing.assert_close(rate, t, atol=0.025, rtol=0)


def test_uniform_draws_from_allowed_pool_only() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((2, 4000), 7)
    t = torch.tensor([0.5, 0.99])
    c = noise.uniform(x0, t, "cosine", vocab_size=10, generator=g, exclude_ids=(3, 9))
    drawn = c.xt[c.noised]
    assert set(drawn.unique().tolist()) <= set(range(10)) - {3, 9}
    assert not bool((c.xt[~c.noised] != 7).any())
    # the draw may equal the original: id 7 is in the pool, hit ~1/8 of the time
    same = (drawn == 7).float().mean().item()
    assert same == pytest.approx(1 / 8, abs=0.03)
    rate = c.noised.float().mean(1)
    expected = 1 - noise.get_schedule("cosine").alpha(t)
    torch.testing.assert_close(rate, expected, atol=0.03, rtol=0)


def _cart_brute(noised: list[list[bool]], context: list[list[bool]], p: float) -> list[list[float]]:
    out = []
    for row, ctx in zip(noised, context, strict=True):
        weights = []
        for n, masked in enumerate(row):
            if not masked:
                weights.append(0.0)
                continue
            total = 0.0
            for j, other in enumerate(row):
                if not other and ctx[j]:
                    total += p * (1 - p) ** (abs(n - j) - 1)
            weights.append(0.5 * total)
        out.append(weights)
    return out


def test_cart_hand_value() -> None:
    # one masked token between two clean ones: 0.5 * (p + p) = p
    w = noise.cart_weights(torch.tensor([[False, True, False]]), p=0.3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.3, 0.0]]))


@given(
    bits=st.lists(st.lists(st.booleans(), min_size=7, max_size=7), min_size=1, max_size=4), ctx_seed=st.integers(0, 100)
)
@settings(max_examples=40, deadline=None)
def test_cart_matches_brute_force(bits: list[list[bool]], ctx_seed: int) -> None:
    noised = torch.tensor(bits)
    context = torch.rand(noised.shape, generator=torch.Generator().manual_seed(ctx_seed)) > 0.2
    got = noise.cart_weights(noised, context=context, p=0.3)
    want = torch.tensor(_cart_brute(bits, context.tolist(), 0.3))
    torch.testing.assert_close(got, want)


def test_bad_names() -> None:
    with pytest.raises(UserError, match="elbo"):
        noise.check_weighting("1/t")
    with pytest.raises(UserError, match="absorbing"):
        noise.check_noise("gaussian")
