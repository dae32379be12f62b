"""Feeding rendered examples to a probed model: batches checked against the model's reading rules.

Every analysis takes `tasks` renderings: a list of `Rendered` (cut into batches of
`batch_size` rows, right-padded with the tokenizer's pad id), a `Batch`, or any iterable of
`Batch`es (a dataloader). `batches` yields them after checking each example against the model
(`ProbeConfig`): the reading mode, the shift rule of its read positions, the mask at the first
answer position of an MDM reading, a correct answer token. `pair_inputs` / `corrupted_inputs`
give a batch's clean and corrupted model inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from jaxtyping import Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import read_positions
from ar2mdm.common.modeling import pad_id
from ar2mdm.tasks.base import Batch, Rendered
from probe.model import ProbedModel

Data = Batch | Sequence[Rendered] | Iterable[Batch]


def batches(pm: ProbedModel, data: Data, batch_size: int | None = 16) -> Iterator[Batch]:
    """Batches of `data` checked against the model (reading mode, shift, mask layout).

    A list of `Rendered` is collated in chunks of `batch_size` rows (right-padded with the
    tokenizer's pad id); a `Batch` is cut into chunks of `batch_size` rows; any other iterable
    must yield `Batch`es, used as they come. batch_size=None: one batch.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    if isinstance(data, Batch):
        n = data.input_ids.shape[0]
        size = batch_size or n
        for start in range(0, n, size):
            stop = min(start + size, n)
            yield check_batch(
                pm,
                Batch(
                    data.input_ids[start:stop],
                    data.corrupted_ids[start:stop],
                    data.attention_mask[start:stop],
                    data.items[start:stop],
                ),
            )
        return
    if isinstance(data, Sequence) and not isinstance(data, str):
        if not data:
            raise UserError("no examples given; render some with ar2mdm.tasks.render.")
        if not all(isinstance(r, Rendered) for r in data):
            raise UserError("a list of examples must hold tasks Rendered items (from ar2mdm.tasks.render).")
        from ar2mdm.tasks.base import collate

        size = batch_size or len(data)
        for start in range(0, len(data), size):
            yield check_batch(pm, collate(data[start : start + size], pad_id(pm.tokenizer)))
        return
    seen = False
    for batch in data:
        if not isinstance(batch, Batch):
            raise UserError(
                f"a dataloader must yield tasks Batch objects (ar2mdm.tasks.collate); got {type(batch).__name__}."
            )
        seen = True
        yield check_batch(pm, batch)
    if not seen:
        raise UserError("the dataloader yielded no batches.")


def check_batch(pm: ProbedModel, batch: Batch) -> Batch:
    cfg = pm.config
    if not batch.items:
        raise UserError("an empty batch; give at least one example.")
    if batch.input_ids.shape != batch.corrupted_ids.shape:
        raise UserError(
            f"clean ids {list(batch.input_ids.shape)} and corrupted ids {list(batch.corrupted_ids.shape)} differ in shape; render pairs with ar2mdm.tasks.render."
        )
    if len(batch.items) != batch.input_ids.shape[0]:
        raise UserError(f"the batch holds {batch.input_ids.shape[0]} rows but {len(batch.items)} examples.")
    for row, r in enumerate(batch.items):
        fix = f"render with mode={cfg.kind!r}, shift={cfg.shift}, mask_id={cfg.mask_id} (the model's ProbeConfig)."
        if r.mode != cfg.kind:
            raise UserError(
                f"{r.example.task}: an example rendered for {r.mode!r} reading given to a {cfg.kind!r} model; {fix}"
            )
        expected = read_positions(r.answer_positions, cfg.shift)
        if not torch.equal(torch.as_tensor(expected), r.read_positions):
            raise UserError(
                f"{r.example.task}: read positions {r.read_positions.tolist()} do not follow the model's shift={cfg.shift}; {fix}"
            )
        if cfg.kind == "mdm":
            # the answer token the metric reads must be masked; later ones may be decoded already
            # (a state along a denoising trajectory, `analyses.compare.revealed`)
            if int(batch.input_ids[row, r.answer_positions[0]]) != cfg.mask_id:
                raise UserError(
                    f"{r.example.task}: the first answer position does not hold the model's mask id {cfg.mask_id}; {fix}"
                )
        if len(r.correct_ids) == 0:
            raise UserError(f"{r.example.task}: an example has no correct answer token.")
    return batch


def pair_inputs(batch: Batch) -> tuple[dict[str, Shaped[Tensor, "batch pos"]], dict[str, Shaped[Tensor, "batch pos"]]]:
    return (
        {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask},
        {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask},
    )


def corrupted_inputs(batch: Batch) -> dict[str, Shaped[Tensor, "batch pos"]]:
    return {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}
