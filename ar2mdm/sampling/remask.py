"""Remasking (ReMDM): ancestral sampling in which decoded tokens may be masked again.

An absorbing model's plain ancestral sampler can never revise a token. ReMDM's reverse step
from t to s < t lets a decoded token return to the mask with probability sigma, and reveals a
masked one with probability

    (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t),

which keeps the marginal of the schedule whenever 0 <= sigma <= sigma_max = min(1, (1 - alpha_s) /
alpha_t). The strategies for sigma (eta is the strategy's knob):

* ``cap``: sigma = min(eta, sigma_max);
* ``rescale``: sigma = eta * sigma_max (0 <= eta <= 1);
* ``conf``: per token, sigma_i = min(1, eta * sigma_max * n * softmax(-psi)_i) over the n decoded
  tokens of the block, psi_i the confidence the token had when it was decoded: unsure tokens are
  remasked first (the masked positions use the mean sigma).

Remasking only touches tokens decoded in the row's current block (earlier blocks are final) and
never at the last step (sigma_max = 0 there: alpha(0) = 1), so no mask survives the run.
"""

from __future__ import annotations

import torch

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion.noise import get_schedule
from ar2mdm.sampling.ancestral import time_grid
from ar2mdm.sampling.base import BudgetSampler, State, aligned_logits, check_options, propose, provisional

STRATEGIES = ("cap", "rescale", "conf")


class RemaskSampler(BudgetSampler):
    name = "remask"
    needs = "absorbing"

    def __init__(
        self,
        *,
        steps: int | None = None,
        block_length: int | None = None,
        temperature: float = 1.0,
        strategy: str = "cap",
        eta: float = 0.05,
        schedule: str | None = None,
    ):
        check_options(steps, block_length, temperature, schedule)
        if strategy not in STRATEGIES:
            raise UserError(f"unknown remasking strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
        if not 0.0 <= eta <= 1.0:
            raise UserError(f"eta must be in [0, 1], got {eta}.")
        self.steps, self.block_length, self.temperature = steps, block_length, temperature
        self.strategy, self.eta, self.schedule = strategy, eta, schedule

    def _init(self, model: torch.nn.Module, state: State) -> None:
        super()._init(model, state)
        state.scratch["psi"] = torch.zeros(state.ids.shape, dtype=torch.float64, device=state.ids.device)

    def _sigma(self, state: State, sigma_max: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """[B, T] remasking probability of every decoded token of the current block."""
        if self.strategy == "cap":
            sig = torch.minimum(torch.full_like(sigma_max, self.eta), sigma_max)[:, None].expand(decoded.shape)
        elif self.strategy == "rescale":
            sig = (self.eta * sigma_max)[:, None].expand(decoded.shape)
        else:
            psi = state.scratch["psi"].masked_fill(~decoded, float("inf"))
            weights = torch.softmax(-psi, dim=1).nan_to_num(0.0)
            n = decoded.sum(1, keepdim=True).double()
            sig = (self.eta * sigma_max[:, None] * n * weights).clamp(max=1.0)
        return torch.where(decoded, sig, torch.zeros_like(sig))

    def step(self, model: torch.nn.Module, state: State) -> State:
        logits = aligned_logits(model, state)
        clock = self.clock(state)
        sched = get_schedule(self.schedule or state.ctx.schedule)
        t, s = time_grid(state, clock, self.budget(state))
        a_t, a_s = sched.alpha(t), sched.alpha(s)
        sigma_max = torch.where(a_t > 0, ((1.0 - a_s) / a_t.clamp(min=1e-12)).clamp(max=1.0), torch.ones_like(a_t))
        sigma_max = torch.where(s <= 0, torch.zeros_like(sigma_max), sigma_max)
        cur = state.current_block()
        in_block = (state.blocks == cur[:, None]) & (cur[:, None] >= 0)
        decoded = in_block & state.gen & ~state.masked
        sigma = self._sigma(state, sigma_max, decoded)
        n_dec = decoded.sum(1).clamp(min=1)
        mean_sigma = sigma.sum(1) / n_dec
        p_reveal = ((a_s - (1.0 - mean_sigma) * a_t) / (1.0 - a_t).clamp(min=1e-12)).clamp(0.0, 1.0)
        p_reveal = torch.where(s <= 0, torch.ones_like(p_reveal), p_reveal)

        active = state.active()
        u = state.rng.rand(state.ids.shape[1], key=state.steps)
        reveal = active & (u < p_reveal[:, None])
        v = state.rng.rand(state.ids.shape[1], key=state.steps, purpose=3)
        remask = decoded & (v < sigma)
        tokens, conf = propose(logits, reveal, self.temperature, state)
        state.record(reveal, conf, provisional(logits, state), remasked=remask)
        mask_id = state.ctx.mask_id
        state.ids = torch.where(reveal, tokens, state.ids)
        state.ids = torch.where(remask, torch.full_like(state.ids, mask_id), state.ids)
        state.scratch["psi"] = torch.where(reveal, conf, state.scratch["psi"])
        state.masked = (state.masked & ~reveal) | remask
        clock.advance(state)
        return state
