"""What a probed model accepts as input, checked before anything runs.

Token ids [B, T] (or [T]), a mapping with input_ids (and attention_mask), a `ar2mdm.tasks.Batch`, or
text (tokenized with the model's tokenizer, padded on its side). Every bad input is a UserError
that says what was wrong: an empty batch or text, ids that are not integers or lie outside the
embedding, a mask of another shape or with values other than 0/1, a row with no real token,
inputs longer than the model's context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Int, Shaped
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import device_of
from ar2mdm.tasks.base import Batch

# Token ids are [B, T] or [T]; their dtype and shape are checked by `model_inputs` (a UserError).
Inputs = Shaped[Tensor, "*_batch _pos"] | Mapping[str, Shaped[Tensor, "*_batch _pos"]] | Batch | str | Sequence[str]


def model_inputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    inputs: Inputs,
    attention_mask: Shaped[Tensor, "*_batch _pos"] | None,
) -> tuple[Int[Tensor, "batch pos"], Shaped[Tensor, "batch pos"]]:
    """(input_ids [B, T], attention_mask [B, T]) on the model's device, after checking them.

    Raises UserError for: an unknown input type, text without a tokenizer, an empty batch or
    text, ids that are not integers or lie outside the embedding, a mask of another shape or
    with values other than 0/1, a row with no real token, and inputs longer than the model's
    context (rotary models would run past it silently, absolute-position ones would crash).
    """
    mask = attention_mask
    texts = [inputs] if isinstance(inputs, str) else inputs
    if (
        isinstance(texts, Sequence)
        and not isinstance(texts, Tensor)
        and len(texts) > 0
        and all(isinstance(t, str) for t in texts)
    ):
        if tokenizer is None:
            raise UserError("text inputs need a tokenizer; pass token ids or give the model a tokenizer.")
        enc = tokenizer(list(texts), return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"] if mask is None else mask
        empty = [i for i, row in enumerate(enc["attention_mask"]) if int(row.sum()) == 0]
        if empty:
            raise UserError(f"input text {empty[0]} ({texts[empty[0]]!r}) has no tokens; pass non-empty text.")
    elif isinstance(inputs, Tensor):
        ids = inputs
    elif isinstance(inputs, Mapping) and "input_ids" in inputs:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask") if mask is None else mask
    elif hasattr(inputs, "input_ids") and hasattr(inputs, "attention_mask"):  # ar2mdm.tasks.Batch
        ids = inputs.input_ids
        mask = inputs.attention_mask if mask is None else mask
    elif isinstance(inputs, Sequence) and len(inputs) == 0:
        raise UserError("the inputs are an empty list; pass at least one text or a [B, T] tensor of token ids.")
    else:
        raise UserError(
            f"inputs must be token ids [B, T], a mapping with input_ids (and attention_mask), a "
            f"tasks Batch, or text; got {type(inputs).__name__}."
        )
    if not isinstance(ids, Tensor):
        raise UserError(f"input_ids must be a tensor [B, T]; got {type(ids).__name__}.")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.dtype not in (torch.long, torch.int, torch.int32):
        raise UserError(f"token ids must be an integer tensor [B, T]; got {ids.dtype} {list(ids.shape)}.")
    if ids.numel() == 0:
        raise UserError(f"the inputs are empty (shape {list(ids.shape)}); pass at least one token.")
    if mask is None:
        mask = torch.ones_like(ids)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise UserError(f"attention_mask is {list(mask.shape)} but input_ids are {list(ids.shape)}.")
    if bool(((mask != 0) & (mask != 1)).any()):
        raise UserError("attention_mask must hold 1 (token) and 0 (padding) only.")
    if not bool(mask.any(-1).all()):
        row = int((mask.sum(-1) == 0).nonzero()[0])
        raise UserError(f"row {row} of the inputs is all padding (its attention_mask is all 0); drop it.")
    rows = model.get_input_embeddings().weight.shape[0]
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= rows:
        raise UserError(
            f"token ids must lie in 0..{rows - 1} (the model's embedding has {rows} rows); got ids from "
            f"{low} to {high}. Were they made by another tokenizer?"
        )
    context = context_length(model)
    if context is not None and ids.shape[1] > context:
        raise UserError(
            f"the inputs are {ids.shape[1]} tokens long but the model's context is {context} positions; "
            f"shorten them to at most {context} tokens."
        )
    device = device_of(model)
    return ids.to(device), mask.to(device)


def context_length(model: PreTrainedModel) -> int | None:
    """The model's context in positions (max_position_embeddings / n_positions), if it states one."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return int(value) if value else None
