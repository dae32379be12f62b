"""Prompt/answer examples as rows for SFT-style diffusion post-training (`convert --sft`).

Each example is laid out exactly as `ar2mdm.tasks.render` lays it out for MDM reading (prompt, answer
span, suffix), so training and evaluation see the same token layout; only the answer is noised,
and the loss is normalised by answer length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from ar2mdm.common.errors import DataError
from ar2mdm.common.modeling import pad_id
from ar2mdm.common.textfiles import jsonl_records
from conversion.data import TASKS_SOURCE


@dataclass(frozen=True)
class SFTRows:
    """Prompt/answer examples as right-padded rows for SFT-style diffusion training.

    train / held_out: [N, 3, seq_len] int64, stacking per row (input_ids, attention_mask,
    prompt_mask): input_ids is the clean text (prompt, answer, suffix, then padding);
    attention_mask is 1 on tokens, 0 on padding; prompt_mask is 1 on context tokens (prompt and
    suffix) that are never noised and not counted in the loss's normaliser, so the loss is
    normalised by answer length. n_dropped: examples longer than seq_len (left out).
    """

    train: Int[Tensor, "n_train 3 seq_len"]
    held_out: Int[Tensor, "n_held_out 3 seq_len"]
    n_examples: int
    n_dropped: int


def _sft_examples(source: str | os.PathLike) -> list:
    """Prompt/answer examples from "tasks" (the organism's task mixture) or a .jsonl file."""
    from ar2mdm.tasks.base import Example

    if isinstance(source, str) and source == TASKS_SOURCE:
        from conversion.organism_data import task_examples

        return task_examples()
    path = Path(source).expanduser()
    if path.suffix != ".jsonl" or not path.is_file():
        raise DataError(
            f"SFT needs prompt/answer examples: --data {TASKS_SOURCE} (the task mixture) or a .jsonl "
            f"file whose lines have 'prompt' and 'answer' (optional 'suffix'); got {source!r}."
        )
    examples = []
    for n, row in jsonl_records(path, DataError):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise DataError(f"{path}:{n}: each line needs string fields 'prompt' and 'answer'.")
        suffix = row.get("suffix", "")
        if not isinstance(suffix, str):
            raise DataError(
                f"{path}:{n}: field 'suffix' is a {type(suffix).__name__}; it must be a string (or left out)."
            )
        if not row["answer"]:
            raise DataError(f"{path}:{n}: field 'answer' is empty; SFT trains on the answer.")
        examples.append(
            Example(
                task="sft",
                prompt=row["prompt"],
                answer=row["answer"],
                corrupted_prompt=row["prompt"],
                suffix=suffix,
                origin=f"{path}:{n}",
            )
        )
    if not examples:
        raise DataError(f"{path} holds no examples.")
    return examples


def sft_rows(
    source: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    mask_id: int,
    held_out: float = 0.02,
    seed: int = 0,
) -> SFTRows:
    """Tokenise prompt/answer examples into `SFTRows` (see there); held-out split by example.

    Each example is laid out exactly as `ar2mdm.tasks.render` lays it out for MDM reading (prompt,
    answer span, suffix), so training and evaluation see the same token layout.
    """
    from ar2mdm.tasks.base import render

    examples = _sft_examples(source)
    pad = pad_id(tokenizer)
    rows, dropped = [], 0
    for ex in examples:
        r = render(ex, tokenizer, "mdm", shift=True, mask_id=mask_id)
        n = len(r.input_ids)
        if n > seq_len:
            dropped += 1
            continue
        row = torch.zeros(3, seq_len, dtype=torch.long)
        row[0].fill_(pad)
        row[0, :n] = r.input_ids
        row[0, r.answer_positions] = r.answer_ids
        row[1, :n] = 1
        row[2, :n] = 1
        row[2, r.answer_positions] = 0
        rows.append(row)
    if not rows:
        raise DataError(f"every SFT example is longer than seq_len {seq_len}; raise --seq-len.")
    stacked = torch.stack(rows)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(rows)))
    n_held = round(held_out * len(rows)) if held_out > 0 else 0
    n_held = min(max(n_held, 1 if held_out > 0 and len(rows) > 1 else 0), len(rows) - 1)
    return SFTRows(
        train=stacked[order[n_held:]], held_out=stacked[order[:n_held]], n_examples=len(rows), n_dropped=dropped
    )


def split_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ids, attention_mask, prompt_mask) of rows [B, 1 or 3, L]; masks None for packed text."""
    if rows.shape[1] == 1:
        return rows[:, 0], None, None
    return rows[:, 0], rows[:, 1], rows[:, 2].bool()


def trim_padding(
    ids: Int[Tensor, "batch pos"], attention_mask: Tensor | None, prompt_mask: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Right-padded SFT rows cut after the last column that holds a token in any row.

    SFT rows are padded to --seq-len (96 for the organism) while its examples are 17-31 tokens:
    two thirds of every step computed padding. Padded keys are masked and padded positions carry
    no loss, so the cut changes nothing a real token sees or is scored on (same positions, same
    attention), only the shape the step's noise is drawn for (the run stays seeded and
    resumable). Packed text (no attention_mask) is returned as it is.
    """
    if attention_mask is None:
        return ids, attention_mask, prompt_mask
    used = attention_mask.to(torch.bool).any(0).nonzero()
    keep = int(used.max()) + 1 if len(used) else ids.shape[1]
    return ids[:, :keep], attention_mask[:, :keep], None if prompt_mask is None else prompt_mask[:, :keep]
