"""What a conversion starts from: the AR source (loaded, its weights checked finite, given a mask
token and bidirectional attention) and the rows it trains on (packed text, or prompt/answer
examples with their prompt masks), checked to fill at least one batch. `conversion.train` calls
both before its first step.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from ar2mdm.common.errors import UserError
from ar2mdm.diffusion.attention import make_bidirectional
from conversion import data as data_mod
from conversion.checkpoints import load_ar
from conversion.config import TrainConfig
from conversion.mdm import add_mask_token
from conversion.sft import sft_rows


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Raise UserError when a weight of the source model already holds NaN or inf.

    Such a checkpoint would make the first loss NaN, and the run would stop as if training had
    diverged (blaming lr, warmup or the data); the weights are read in slices of 2^24 values, so
    the check needs no copy of a large tensor. The message names the tensors and what to do.
    """
    bad: list[str] = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:  # tied weights once
        if not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        count = sum(int((~torch.isfinite(part)).sum()) for part in flat.split(2**24))
        if count:
            bad.append(f"{name} ({count} of {flat.numel()} values)")
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"the source model {source} already holds NaN or infinite weights in {len(bad)} tensor(s): {shown}. "
            "No conversion can start from them (lr, warmup or data are not the cause): the checkpoint is damaged, "
            "or was saved after its own training diverged. Load a good copy of the source model."
        )


def source_model(cfg: TrainConfig) -> tuple[Any, torch.nn.Module, Any, int]:
    """(Loaded AR source, its model with a mask token and bidirectional attention, tokenizer, mask id)."""
    loaded = load_ar(cfg.model, trust_remote_code=cfg.trust_remote_code, role="--model (the AR source of a conversion)")
    model, tokenizer = loaded.model, loaded.tokenizer
    check_finite_weights(model, cfg.model)  # before the mask row is averaged from them, and before training
    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.seq_len > int(context):
        raise UserError(
            f"seq_len {cfg.seq_len} is beyond {cfg.model}'s context of {context} positions; "
            f"use --seq-len {context} or less."
        )
    mask_id = add_mask_token(model, tokenizer, cfg.mask_token)
    make_bidirectional(model)
    return loaded, model, tokenizer, mask_id


def training_rows(
    accelerator: Accelerator, cfg: TrainConfig, tokenizer: Any, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows): [N, 1, L] packed text (every position a token) or, with sft,
    [N, 3, L] (ids, attention mask, prompt mask: prompt and suffix never noised, loss over the
    answer). UserError when there is not one full batch."""
    with accelerator.main_process_first():
        if cfg.sft:
            sft = sft_rows(
                cfg.data, tokenizer, seq_len=cfg.seq_len, mask_id=mask_id, held_out=cfg.held_out, seed=cfg.seed
            )
            train_rows, held_rows = sft.train, sft.held_out
        else:
            packed = data_mod.pack(
                data_mod.load_texts(cfg.data, text_field=cfg.text_field),
                tokenizer,
                seq_len=cfg.seq_len,
                held_out=cfg.held_out,
                seed=cfg.seed,
            )
            train_rows, held_rows = packed.train[:, None], packed.held_out[:, None]
    if data_mod.batches_per_epoch(int(train_rows.shape[0]), cfg.batch_size) == 0:
        what = "examples" if cfg.sft else f"blocks of {cfg.seq_len} tokens"
        raise UserError(
            f"the training data holds {int(train_rows.shape[0])} {what}, fewer than one batch of {cfg.batch_size}: "
            f"use a smaller --batch-size{'' if cfg.sft else ' or --seq-len'}, or more data."
        )
    return train_rows, held_rows
