"""Ancestral samplers: the reverse process of the diffusion the checkpoint was trained with.

Absorbing noise (MDLM). Time runs from t = 1 (all masked) to 0 over n steps per block,
t_j = 1 - j / n. Going from t to s < t, each still-masked position is revealed with probability

    (alpha(s) - alpha(t)) / (1 - alpha(t))                                    (`unmask_probability`)

and, when revealed, takes a token drawn from the model's prediction (temperature 1 is the true
reverse process; 0 takes the argmax). Revealed tokens are final. At the last step alpha(0) = 1, so
every remaining mask is revealed. When a step reveals nothing the canvas is unchanged, so the
next step reuses the previous prediction instead of calling the model again (MDLM's caching):
NFE is then below the number of steps.

Uniform-state noise (UDLM-style). There is no mask: every generated position starts as a token
drawn uniformly from the noise pool (the vocabulary minus special tokens, as in training) and is
resampled at every step from the posterior

    q(x_s = j | x_t, x_0 ~ p_theta) ∝ (a_ts [j = x_t] + (1 - a_ts) / N) (alpha_s p_theta(j) + (1 - alpha_s) / N),

a_ts = alpha(t) / alpha(s), N = pool size. The last step draws x_0 from p_theta itself.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import output_size
from ar2mdm.diffusion.noise import get_schedule
from ar2mdm.sampling.base import (
    BlockClock,
    BudgetSampler,
    Sampler,
    State,
    aligned_logits,
    check_options,
    propose,
    provisional,
    steps_per_block,
)


def unmask_probability(
    schedule: str, t: Float[Tensor, "*batch"] | float, s: Float[Tensor, "*batch"] | float
) -> Float[Tensor, "*batch"]:
    """P(a masked position is revealed going from time t to s < t) = (a_s - a_t) / (1 - a_t).

    >>> round(float(unmask_probability("linear", 1.0, 0.75)), 6)  # (0.25 - 0) / 1
    0.25
    >>> round(float(unmask_probability("linear", 0.5, 0.25)), 6)  # (0.75 - 0.5) / 0.5
    0.5
    """
    sched = get_schedule(schedule)
    t = torch.as_tensor(t, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    a_t, a_s = sched.alpha(t), sched.alpha(s)
    p = (a_s - a_t) / (1.0 - a_t).clamp(min=1e-12)
    return torch.where(s <= 0, torch.ones_like(p), p.clamp(0.0, 1.0))


def time_grid(
    state: State, clock: BlockClock, budget: Int[Tensor, " batch"]
) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """(t, s) [B] for each row's current step inside its block: t = 1 - j/n, s = 1 - (j+1)/n."""
    n = budget.double()
    j = clock.count.double().clamp(max=n - 1)
    return 1.0 - j / n, (1.0 - (j + 1) / n).clamp(min=0.0)


class AncestralSampler(BudgetSampler):
    name = "ancestral"
    needs = "absorbing"

    def __init__(
        self,
        *,
        steps: int | None = None,
        block_length: int | None = None,
        temperature: float = 1.0,
        schedule: str | None = None,
    ):
        check_options(steps, block_length, temperature, schedule)
        self.steps, self.block_length, self.temperature, self.schedule = steps, block_length, temperature, schedule

    def _init(self, model: torch.nn.Module, state: State) -> None:
        super()._init(model, state)
        state.scratch["logits"] = None

    def step(self, model: torch.nn.Module, state: State) -> State:
        logits = state.scratch["logits"]
        if logits is None:
            logits = aligned_logits(model, state)
        clock = self.clock(state)
        t, s = time_grid(state, clock, self.budget(state))
        p = unmask_probability(self.schedule or state.ctx.schedule, t, s)  # [B]
        u = state.rng.rand(state.ids.shape[1], key=state.steps)
        active = state.active()
        reveal = active & (u < p[:, None].to(u.device))
        tokens, conf = propose(
            logits, reveal, self.temperature, state, "low-confidence" if state.trace is not None else None
        )
        state.record(reveal, conf, provisional(logits, state))
        state.ids = torch.where(reveal, tokens, state.ids)
        state.masked = state.masked & ~reveal
        # Nothing revealed: the canvas is unchanged, the prediction can be reused.
        state.scratch["logits"] = None if bool(reveal.any()) else logits
        clock.advance(state)
        return state


class UniformSampler(Sampler):
    name = "uniform"
    needs = "uniform"
    uses_blocks = False

    def __init__(self, *, steps: int | None = None, temperature: float = 1.0, schedule: str | None = None):
        check_options(steps, None, temperature, schedule)
        self.steps, self.temperature, self.schedule = steps, temperature, schedule

    def _init(self, model: torch.nn.Module, state: State) -> None:
        vocab = output_size(model)
        if vocab is None:
            raise UserError("uniform sampling needs an HF model (its output vocabulary size).")
        pool = torch.ones(vocab, dtype=torch.bool, device=state.ids.device)
        for i in (*state.ctx.exclude_ids, state.ctx.mask_id):
            if i is not None and 0 <= i < vocab:
                pool[i] = False
        ids_pool = pool.nonzero().squeeze(1)
        if ids_pool.numel() == 0:
            raise UserError("uniform sampling: every vocabulary id is a special token; nothing to draw.")
        draw = ids_pool[state.rng.randint(ids_pool.numel(), state.ids.shape[1], key=-1)]
        state.ids = torch.where(state.gen, draw, state.ids)
        state.scratch["pool"] = pool
        state.scratch["budget"] = steps_per_block(self.steps, state)
        state.scratch["j"] = torch.zeros(state.ids.shape[0], dtype=torch.long, device=state.ids.device)

    def step(self, model: torch.nn.Module, state: State) -> State:
        pool: Tensor = state.scratch["pool"]
        n, j = state.scratch["budget"], state.scratch["j"]
        live = state.masked  # generated positions of rows still running
        rows, cols = live.nonzero(as_tuple=True)
        logits = aligned_logits(model, state)
        picked = logits[rows, cols, : pool.numel()].double().masked_fill(~pool, float("-inf"))  # [N, V]
        temp = self.temperature if self.temperature > 0 else 1.0
        p0 = torch.softmax(picked / temp, dim=-1)  # the model's x_0 prediction
        sched = get_schedule(self.schedule or state.ctx.schedule)
        t = (1.0 - j.double() / n)[rows]
        s = (1.0 - (j + 1).double() / n).clamp(min=0.0)[rows]
        a_t, a_s = sched.alpha(t)[:, None], sched.alpha(s)[:, None]
        a_ts = a_t / a_s.clamp(min=1e-12)
        N = float(pool.sum())
        current = state.ids[rows, cols]
        if bool((current >= pool.numel()).any()):
            raise UserError("the canvas holds ids outside the model's vocabulary.")
        keep = torch.nn.functional.one_hot(current, pool.numel()).double()
        post = (a_ts * keep + (1.0 - a_ts) / N) * (a_s * p0 + (1.0 - a_s) / N)
        last = (j + 1 >= n)[rows][:, None]
        post = torch.where(last, p0, post).masked_fill(~pool, 0.0)
        logp = torch.log(post.clamp(min=1e-300)).masked_fill(~pool, float("-inf"))
        if self.temperature > 0:
            logp = logp + state.rng.gumbel_at(rows, cols, logp.shape[-1], key=state.steps)
        new = state.ids.clone()
        new[rows, cols] = logp.argmax(-1)
        if state.trace is not None:
            conf = torch.full(live.shape, float("nan"), dtype=torch.float64)
            conf[rows, cols] = p0.max(-1).values
            prov = state.ids.clone()
            prov[rows, cols] = p0.argmax(-1)
            state.record(live & (new != state.ids), conf, prov)
        state.ids = new
        state.scratch["j"] = j + 1
        state.masked = state.masked & ~(j + 1 >= n)[:, None]
        return state
