"""The forward (noising) process of a discrete diffusion LM: schedules, corruption, loss weights.

A masked diffusion model (MDM) is trained on corrupted copies x_t of clean text x_0. A time
t in [0, 1] sets how much is corrupted: every token is kept independently with probability
alpha(t) (the *schedule*, alpha(0) = 1: clean; alpha(1) ~ 0: everything corrupted) and otherwise
replaced.

* Absorbing noise (MDLM, LLaDA, Dream, DiffuLLaMA) replaces a token by a special mask token; an
  unmasked token is therefore always correct, and the model only learns to fill masks.
* Uniform-state noise (SEDD's uniform transition, DUO, BlockGen's USDM) replaces a token by a token
  drawn uniformly from the vocabulary. The model cannot tell which tokens were replaced, so it must
  judge every token, which lets a sampler revise tokens it already chose.

The training loss is a cross-entropy on corrupted tokens, weighted per example:

* "elbo": w(t) = -alpha'(t) / (1 - alpha(t)), the continuous-time ELBO weight of absorbing
  diffusion (1/t for the linear schedule). It makes the loss an upper bound on the NLL.
* "flat": w = 1 (a plain masked-LM loss; no longer a bound, often lower variance).
* "cart": Dream's context-adaptive reweighting. Each masked token n gets
  0.5 * sum over unmasked j of p (1 - p)^(|n - j| - 1) (p = 0.3): a masked token with clean
  neighbours close by is easy to infer from context and weighs more; one far from any clean token
  weighs less. It depends on the mask layout, not on t.

Time is sampled in [eps, 1] (eps = 1e-3 keeps the 1/t weight finite); MDLM samples it
antithetically (stratified across the batch) to lower the variance of the loss.

Everything here is a small pure function on tensors, testable against a hand computation.

>>> s = get_schedule("linear")
>>> float(s.alpha(torch.tensor(0.25))), float(s.dalpha(torch.tensor(0.25)))
(0.75, -1.0)
>>> float(elbo_weight(torch.tensor(0.25), s))
4.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError

LOGLINEAR_EPS = 1e-3
CART_P = 0.3
WEIGHTINGS = ("elbo", "flat", "cart")
NOISES = ("absorbing", "uniform")


@dataclass(frozen=True)
class Schedule:
    """A noise schedule: alpha(t) = probability that a token is still clean at time t.

    `alpha` and `dalpha` (its derivative in t) map a tensor of times to a tensor of the same shape.
    """

    name: str
    alpha: Callable[[Float[Tensor, "*batch"]], Float[Tensor, "*batch"]]
    dalpha: Callable[[Float[Tensor, "*batch"]], Float[Tensor, "*batch"]]
    doc: str


def _linear_alpha(t: Tensor) -> Tensor:
    return 1.0 - t


def _linear_dalpha(t: Tensor) -> Tensor:
    return -torch.ones_like(t)


def _cosine_alpha(t: Tensor) -> Tensor:
    return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))


def _cosine_dalpha(t: Tensor) -> Tensor:
    return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))


def _loglinear_alpha(t: Tensor) -> Tensor:
    # MDLM's log-linear noise: total noise sigma(t) = -log(1 - (1 - eps) t), alpha = exp(-sigma).
    return 1.0 - (1.0 - LOGLINEAR_EPS) * t


def _loglinear_dalpha(t: Tensor) -> Tensor:
    return torch.full_like(t, -(1.0 - LOGLINEAR_EPS))


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule("linear", _linear_alpha, _linear_dalpha, "alpha(t) = 1 - t"),
        Schedule(
            "cosine",
            _cosine_alpha,
            _cosine_dalpha,
            "alpha(t) = 1 - cos(pi/2 (1 - t)): the mask rate cos(pi/2 (1 - t)) rises like pi/2 t "
            "near t = 0 and flattens near t = 1 (more steps at heavy masking)",
        ),
        Schedule(
            "loglinear",
            _loglinear_alpha,
            _loglinear_dalpha,
            f"MDLM log-linear: sigma(t) = -log(1 - (1 - eps) t), alpha(t) = exp(-sigma(t)) = "
            f"1 - (1 - eps) t with eps = {LOGLINEAR_EPS}, so alpha(1) = eps",
        ),
    )
}


def get_schedule(name: str | Schedule) -> Schedule:
    """The schedule called `name` (one of `SCHEDULES`); a `Schedule` passes through."""
    if isinstance(name, Schedule):
        return name
    try:
        return SCHEDULES[name]
    except KeyError:
        raise UserError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}.") from None


def sample_t(
    batch: int,
    *,
    eps: float = 1e-3,
    antithetic: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Float[Tensor, " batch"]:
    """Diffusion times, shape [batch], in [eps, 1].

    With `antithetic` (MDLM's low-discrepancy sampler) one u ~ U(0, 1) is drawn and
    t_i = (u + i / batch) mod 1, so the batch covers [0, 1) evenly; each t_i is still marginally
    uniform. The result is mapped affinely from [0, 1) to [eps, 1).
    """
    if batch < 1:
        raise UserError(f"batch must be >= 1, got {batch}.")
    if antithetic:
        u = torch.rand(1, generator=generator, device=device)
        u = (u + torch.arange(batch, device=device) / batch) % 1.0
    else:
        u = torch.rand(batch, generator=generator, device=device)
    return eps + (1.0 - eps) * u


@dataclass
class Corruption:
    """One corrupted batch.

    t: [B] times; xt: [B, T] corrupted ids; noised: [B, T] bool, True where the token was
    corrupted (for uniform noise: resampled, even if the draw happened to equal the original).
    """

    t: Float[Tensor, " batch"]
    xt: Int[Tensor, "batch pos"]
    noised: Bool[Tensor, "batch pos"]


def draw_noised(
    shape: Sequence[int] | torch.Size,
    t: Float[Tensor, " batch"],
    schedule: str | Schedule,
    *,
    generator: torch.Generator | None = None,
    protect: Shaped[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: each position independently True with probability 1 - alpha(t_b).

    `protect` ([B, T] bool) marks positions that are never noised (SFT prompt, padding).
    """
    sched = get_schedule(schedule)
    keep = sched.alpha(t.to(torch.float32)).clamp(0.0, 1.0)  # [B]
    u = torch.rand(tuple(shape), generator=generator, device=t.device)
    noised = u >= keep[:, None]  # P(u >= alpha) = 1 - alpha
    if protect is not None:
        noised &= ~protect.to(torch.bool)
    return noised


def absorbing(
    x0: Int[Tensor, "batch pos"],
    t: Float[Tensor, " batch"],
    schedule: str | Schedule,
    mask_id: int,
    *,
    generator: torch.Generator | None = None,
    protect: Shaped[Tensor, "batch pos"] | None = None,
) -> Corruption:
    """Absorbing corruption of x0 [B, T] at times t [B]: masked positions become `mask_id`."""
    noised = draw_noised(x0.shape, t, schedule, generator=generator, protect=protect)
    xt = torch.where(noised, torch.full_like(x0, mask_id), x0)
    return Corruption(t=t, xt=xt, noised=noised)


def uniform(
    x0: Int[Tensor, "batch pos"],
    t: Float[Tensor, " batch"],
    schedule: str | Schedule,
    vocab_size: int,
    *,
    generator: torch.Generator | None = None,
    protect: Shaped[Tensor, "batch pos"] | None = None,
    exclude_ids: Sequence[int] = (),
) -> Corruption:
    """Uniform-state corruption of x0 [B, T] at times t [B].

    Each position is resampled with probability 1 - alpha(t) to a token drawn uniformly from
    {0, ..., vocab_size - 1} minus `exclude_ids` (pass the mask id, padding, other specials). The
    draw MAY equal the original token, exactly as in the uniform transition of SEDD / DUO, so the
    marginal is q(x_t | x_0) = alpha x_0 + (1 - alpha) / |V'| (the "noised" flag still says it was
    resampled).
    """
    noised = draw_noised(x0.shape, t, schedule, generator=generator, protect=protect)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=x0.device)
    excluded = [i for i in exclude_ids if 0 <= i < vocab_size]
    if excluded:
        allowed[torch.tensor(excluded, device=x0.device)] = False
    pool = allowed.nonzero().squeeze(1)
    if pool.numel() == 0:
        raise UserError("uniform noise: every vocabulary id is excluded; nothing to draw from.")
    # Draw an index into the allowed pool for every position (cheap; unused draws are discarded),
    # so the random stream does not depend on which positions were noised.
    idx = torch.randint(0, pool.numel(), tuple(x0.shape), generator=generator, device=x0.device)
    xt = torch.where(noised, pool[idx], x0)
    return Corruption(t=t, xt=xt, noised=noised)


def elbo_weight(t: Float[Tensor, "*batch"], schedule: str | Schedule) -> Float[Tensor, "*batch"]:
    """ELBO weight -alpha'(t) / (1 - alpha(t)), same shape as t (1/t for "linear")."""
    sched = get_schedule(schedule)
    return -sched.dalpha(t) / (1.0 - sched.alpha(t))


def cart_weights(
    noised: Bool[Tensor, "batch pos"], *, context: Shaped[Tensor, "batch pos"] | None = None, p: float = CART_P
) -> Float[Tensor, "batch pos"]:
    """Dream's context-adaptive (CART) weights, float [B, T].

    For each position n with noised[b, n] True: 0.5 * sum over clean context positions j of
    p (1 - p)^(|n - j| - 1); zero elsewhere. Clean context = not noised and `context` True
    (`context` [B, T] bool excludes padding; default: every un-noised position).

    Vectorised as a [T, T] geometric kernel (zero diagonal) applied to the clean indicator.
    """
    _, length = noised.shape
    pos = torch.arange(length, device=noised.device)
    dist = (pos[:, None] - pos[None, :]).abs()
    kernel = p * (1.0 - p) ** (dist.to(torch.float32) - 1.0)
    kernel = kernel.masked_fill(dist == 0, 0.0)  # [T, T], symmetric
    clean = ~noised
    if context is not None:
        clean &= context.to(torch.bool)
    w = 0.5 * clean.to(torch.float32) @ kernel  # [B, T]
    return w * noised.to(torch.float32)


def check_weighting(name: str) -> str:
    """`name` if it is a known weighting, else a UserError listing them."""
    if name not in WEIGHTINGS:
        raise UserError(f"unknown loss weighting {name!r}; choose one of {list(WEIGHTINGS)}.")
    return name


def check_noise(name: str) -> str:
    """`name` if it is a known noise kind, else a UserError listing them."""
    if name not in NOISES:
        raise UserError(f"unknown noise {name!r}; choose one of {list(NOISES)}.")
    return name
