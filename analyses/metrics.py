"""The task metrics circuits are scored and tested with, read at each example's read position.

"logit_diff": logsumexp of the correct first answer tokens minus logsumexp of the counterfactual
ones (`probe.answer_logit_diff` for singletons); "prob": the probability of the correct first
tokens; "kl": KL(clean || model) of the next-token distribution (its gradient vanishes at the
clean input, so plain EAP scores 0 under it). `Targets` holds a batch's read positions and
candidate sets, padded; `metric_values` gives the metric per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Rendered

METRICS = ("logit_diff", "prob", "kl")


@dataclass
class Targets:
    """Where and what each row of a batch is scored on: read positions [B], correct and
    counterfactual first-token ids padded to [B, C] with validity masks."""

    positions: Int[Tensor, " batch"]
    correct: Int[Tensor, "batch n_correct"]
    correct_ok: Bool[Tensor, "batch n_correct"]
    counter: Int[Tensor, "batch n_counter"]
    counter_ok: Bool[Tensor, "batch n_counter"]

    @classmethod
    def of(cls, items: Sequence[Rendered]) -> Targets:
        def padded(sets: list[Tensor]) -> tuple[Tensor, Tensor]:
            width = max(1, max(len(s) for s in sets))
            ids = torch.zeros(len(sets), width, dtype=torch.long)
            ok = torch.zeros(len(sets), width, dtype=torch.bool)
            for i, s in enumerate(sets):
                ids[i, : len(s)] = s
                ok[i, : len(s)] = True
            return ids, ok

        pos = torch.tensor([int(r.read_positions[0]) for r in items])
        correct, correct_ok = padded([r.correct_ids for r in items])
        counter, counter_ok = padded([r.counterfactual_ids for r in items])
        return cls(pos, correct, correct_ok, counter, counter_ok)

    def repeat(self, k: int) -> Targets:
        """The targets of k stacked copies of the batch."""
        return Targets(
            *(
                t.repeat(k, *([1] * (t.ndim - 1)))
                for t in (self.positions, self.correct, self.correct_ok, self.counter, self.counter_ok)
            )
        )

    def rows(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, "batch vocab"]:
        """[B, V] logits at each row's read position, in float32 or wider."""
        pos = self.positions.to(logits.device)
        rows = logits[torch.arange(logits.shape[0], device=logits.device), pos]
        return rows.to(torch.promote_types(rows.dtype, torch.float32))


def logsumexp_at(
    rows: Float[Tensor, "batch vocab"], ids: Int[Tensor, "batch n"], ok: Bool[Tensor, "batch n"]
) -> Float[Tensor, " batch"]:
    values = rows.gather(1, ids.to(rows.device)).masked_fill(~ok.to(rows.device), -math.inf)
    return values.logsumexp(1)


def metric_values(
    metric: str,
    logits: Float[Tensor, "batch pos vocab"],
    targets: Targets,
    clean: Float[Tensor, "batch vocab"] | None = None,
) -> Float[Tensor, " batch"]:
    """[B] metric per row. logits: [B, T, V]. clean: [B, V] log-probabilities of the clean run
    at the read positions (needed for "kl"; None: this run's own, detached)."""
    return row_values(metric, targets.rows(logits), targets, clean)


def row_values(
    metric: str, rows: Float[Tensor, "batch vocab"], targets: Targets, clean: Float[Tensor, "batch vocab"] | None = None
) -> Float[Tensor, " batch"]:
    """`metric_values` from the logits at the read positions only (`Targets.rows`), [B, V]."""
    if metric == "logit_diff":
        if not bool(targets.counter_ok.any(1).all()):
            raise UserError(
                "the logit difference needs a counterfactual answer for every example; use metric='prob' or 'kl'."
            )
        return logsumexp_at(rows, targets.correct, targets.correct_ok) - logsumexp_at(
            rows, targets.counter, targets.counter_ok
        )
    if metric == "prob":
        return (logsumexp_at(rows, targets.correct, targets.correct_ok) - rows.logsumexp(1)).exp()
    if metric == "kl":
        logp = torch.log_softmax(rows, -1)
        ref = logp.detach() if clean is None else clean.to(logp)
        return (ref.exp() * (ref - logp)).sum(-1)
    raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")


def clean_reference(
    metric: str, logits: Float[Tensor, "batch pos vocab"], targets: Targets
) -> Float[Tensor, "batch vocab"] | None:
    """What `metric_values` needs from the clean run: its read-position log-probs for "kl"."""
    return torch.log_softmax(targets.rows(logits), -1).detach() if metric == "kl" else None
