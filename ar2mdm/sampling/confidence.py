"""Confidence-ordered decoding: predict every masked position, commit the most confident ones.

One sampler, three confidence rules (MaskGIT / LLaDA "low_confidence", Dream "topk_margin" and
"entropy"):

* ``low-confidence``: the probability of the chosen token;
* ``margin``: p(top-1) - p(top-2);
* ``entropy``: minus the entropy of the predictive distribution.

Each step runs the model once on the canvas, draws a token for every masked position (argmax at
temperature 0, else Gumbel-max in float64), and in each row commits the k most confident masked
positions of the row's current block, where k spreads the block's remaining masks evenly over the
block's remaining steps: k = ceil(remaining / steps_left). Committed tokens are never changed.
Blocks give semi-autoregressive decoding (`block_length`); a block-diffusion checkpoint always
decodes in its own blocks. `steps` is the per-row budget of model calls (default: one token per
call).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.sampling.base import (
    BudgetSampler,
    ModelContext,
    State,
    aligned_logits,
    check_options,
    propose,
    provisional,
    run,
)

RULES = ("low-confidence", "margin", "entropy")


class ConfidenceSampler(BudgetSampler):
    """The confidence-ordered sampler; `rule` is one of RULES (the registered subclasses below fix
    it: "low-confidence", "margin", "entropy")."""

    needs = "absorbing"
    rule: ClassVar[str] = "low-confidence"

    def __init__(
        self,
        rule: str | None = None,
        *,
        steps: int | None = None,
        block_length: int | None = None,
        temperature: float = 0.0,
    ):
        rule = rule or type(self).rule
        if rule not in RULES:
            raise UserError(f"unknown confidence rule {rule!r}; use one of {', '.join(RULES)}.")
        check_options(steps, block_length, temperature)
        self.name = rule
        self.rule, self.steps, self.block_length, self.temperature = rule, steps, block_length, temperature

    def step(self, model: torch.nn.Module, state: State) -> State:
        logits = aligned_logits(model, state)
        active = state.active()
        tokens, conf = propose(logits, active, self.temperature, state, self.rule)
        clock = self.clock(state)
        left = (self.budget(state) - clock.count).clamp(min=1)
        commit = top_k_per_row(conf, active, torch.ceil(active.sum(1) / left).long())
        state.record(commit, conf, provisional(logits, state))
        state.ids = torch.where(commit, tokens, state.ids)
        state.masked = state.masked & ~commit
        clock.advance(state)
        return state


class LowConfidenceSampler(ConfidenceSampler):
    """Commit the positions whose chosen token is most probable (MaskGIT, LLaDA)."""

    name = "low-confidence"
    rule = "low-confidence"


class MarginSampler(ConfidenceSampler):
    """Commit the positions with the largest top-1 minus top-2 probability (Dream)."""

    name = "margin"
    rule = "margin"


class EntropySampler(ConfidenceSampler):
    """Commit the positions with the lowest predictive entropy (Dream)."""

    name = "entropy"
    rule = "entropy"


def top_k_per_row(
    score: Float[Tensor, "batch pos"], allowed: Bool[Tensor, "batch pos"], k: Int[Tensor, " batch"]
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: in each row, the k[b] highest-`score` positions among `allowed` (ties go to
    the earlier position)."""
    out = torch.zeros_like(allowed)
    for b in range(score.shape[0]):
        n = min(int(k[b]), int(allowed[b].sum()))
        if n <= 0:
            continue
        s = score[b].double().masked_fill(~allowed[b], float("-inf"))
        # stable: sort descending keeps the earlier index first among equal scores
        order = torch.sort(s, descending=True, stable=True).indices[:n]
        out[b, order] = True
    return out


@torch.no_grad()
def confidence_fill(
    model: torch.nn.Module,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    mask_id: int,
    shift: bool,
    steps: int | None = None,
) -> tuple[Int[Tensor, "batch pos"], int]:
    """Fill every mask of `input_ids` [B, T] by low-confidence decoding at temperature 0 (one
    block); return (ids [B, T], NFE). A convenience for scoring MDMs on tasks."""
    ctx = ModelContext(kind="mdm", noise="absorbing", shift=shift, mask_id=mask_id)
    result = run(ConfidenceSampler("low-confidence", steps=steps), model, input_ids, attention_mask, ctx)
    return result.ids, result.nfe
