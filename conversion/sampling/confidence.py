"""Confidence-ordered filling: predict every masked position, commit the most confident ones.

At each step the model sees the current sequence (prompt, committed tokens, remaining masks). For
every still-masked position we take the argmax token and its probability (the mask token itself is
excluded, as in MDLM's SUBS parameterisation); each row commits its k most confident positions,
where k spreads the row's remaining masks evenly over the remaining steps. With `steps` equal to
the number of masks this commits one token per model call (NFE = number of masks).

Shift: with shift on, the prediction for position i is read from logits[i - 1]
(`conversion.metadata.read_positions`), so a masked position 0 cannot be predicted; rendering
never puts a mask there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from conversion.errors import UserError


@dataclass
class FillState:
    """ids [B, T] current tokens; attention_mask [B, T]; masked [B, T] still-masked positions;
    steps_left: model calls still planned; nfe: model calls made so far."""

    ids: Tensor
    attention_mask: Tensor
    masked: Tensor
    steps_left: int
    nfe: int = 0


def init_state(input_ids: Tensor, attention_mask: Tensor | None, *, mask_id: int, steps: int | None = None, shift: bool = True) -> FillState:
    """Start from `input_ids` [B, T] whose positions equal to `mask_id` are to be filled.

    steps: model calls to spend (default: the largest number of masks in a row, i.e. one token
    per call).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    masked = (input_ids == mask_id) & attention_mask.bool()
    if shift and bool(masked[:, 0].any()):
        raise UserError("a mask at position 0 cannot be predicted with shift on; put a prompt token (e.g. BOS) first.")
    most = int(masked.sum(1).max()) if masked.numel() else 0
    if steps is None:
        steps = max(most, 1)
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}.")
    return FillState(ids=input_ids.clone(), attention_mask=attention_mask, masked=masked, steps_left=steps)


def done(state: FillState) -> bool:
    return not bool(state.masked.any())


def _predictions(model: torch.nn.Module, state: FillState, *, mask_id: int, shift: bool) -> tuple[Tensor, Tensor]:
    """Argmax token and its probability at every position [B, T] (read through the shift rule)."""
    logits = model(input_ids=state.ids, attention_mask=state.attention_mask).logits.float()
    if shift:
        # position i is predicted by logits[i - 1]; position 0 gets no prediction.
        logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, :-1]], dim=1)
    if mask_id < logits.shape[-1]:
        logits[..., mask_id] = float("-inf")
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    conf, token = probs.max(-1)
    return token, conf


@torch.no_grad()
def step(model: torch.nn.Module, state: FillState, *, mask_id: int, shift: bool) -> FillState:
    """One model call: commit each row's ceil(remaining / steps_left) most confident masks."""
    token, conf = _predictions(model, state, mask_id=mask_id, shift=shift)
    conf = conf.masked_fill(~state.masked, float("-inf"))
    remaining = state.masked.sum(1)
    ids, masked = state.ids.clone(), state.masked.clone()
    for b in range(ids.shape[0]):
        k = math.ceil(int(remaining[b]) / max(state.steps_left, 1))
        if k == 0:
            continue
        top = conf[b].topk(k).indices
        ids[b, top] = token[b, top]
        masked[b, top] = False
    return FillState(ids, state.attention_mask, masked, max(state.steps_left - 1, 1), state.nfe + 1)


@torch.no_grad()
def confidence_fill(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    mask_id: int,
    shift: bool,
    steps: int | None = None,
) -> tuple[Tensor, int]:
    """Fill every mask of `input_ids` [B, T]; return (ids [B, T], NFE)."""
    state = init_state(input_ids, attention_mask, mask_id=mask_id, steps=steps, shift=shift)
    while not done(state):
        state = step(model, state, mask_id=mask_id, shift=shift)
    return state.ids, state.nfe
