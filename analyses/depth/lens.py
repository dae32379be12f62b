"""The logit lens by layer over a set of examples: when does the answer become readable?

`lens_profile` wraps `probe.logit_lens`: the rank and probability of the first correct answer
token, and the logit difference correct - counterfactual (over the same candidate sets as
`probe.answer_logit_diff`), after the embedding and after every layer, at each example's
shift-aware read position. The last point is the model's own prediction. Streams over batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.batching import batches
from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Rendered
from probe.cache import Cache
from probe.lens import logit_lens, read_targets
from probe.model import ProbedModel


@dataclass
class LensProfile:
    """Logit lens at the read positions: `points` ("L0.resid_pre" = after the embedding, then
    "L{l}.resid_post"); `ranks` (first correct id; 0 = top-1), `logprobs` (of that id) and
    `logit_diffs` (logsumexp over the correct set - over the counterfactual set) are [points, N]."""

    points: list[str]
    ranks: Int[Tensor, "points examples"]
    logprobs: Float[Tensor, "points examples"]
    logit_diffs: Float[Tensor, "points examples"]

    def summary(self) -> dict[str, list[str] | list[float]]:
        return {
            "points": self.points,
            "mean_rank": self.ranks.float().mean(1).tolist(),
            "median_rank": self.ranks.float().median(1).values.tolist(),
            "top1": (self.ranks == 0).float().mean(1).tolist(),
            "mean_prob": self.logprobs.exp().mean(1).tolist(),
            "mean_logit_diff": self.logit_diffs.mean(1).tolist(),
        }

    def first_point(self, top1: float = 0.5) -> str | None:
        """The first point at which at least a `top1` share of examples rank the answer first."""
        shares = (self.ranks == 0).float().mean(1)
        hits = (shares >= top1).nonzero()
        return self.points[int(hits[0])] if len(hits) else None


def _set_logprob(pm: ProbedModel, cache: Cache, pos: Tensor, sets: list[Tensor]) -> Tensor:
    """[points, B] log P(any id of each example's set) through the lens."""
    width = max(len(s) for s in sets)
    parts = []
    for j in range(width):
        ids = torch.tensor([int(s[j]) if j < len(s) else int(s[0]) for s in sets])
        lp = logit_lens(pm, cache, pos, ids).logprobs
        absent = torch.tensor([j >= len(s) for s in sets])
        parts.append(lp.masked_fill(absent[None], -math.inf))
    return torch.logsumexp(torch.stack(parts), 0)


def lens_profile(pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64) -> LensProfile:
    """The logit lens of every example at its read position, streamed over batches."""
    ranks, logprobs, diffs, points = [], [], [], None
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, ["L0.resid_pre", "L*.resid_post"])
        pos, correct, _ = read_targets(batch)
        curve = logit_lens(pm, cache, pos, correct)
        points = curve.points
        ranks.append(curve.ranks)
        logprobs.append(curve.logprobs)
        rows = batch.items
        if any(len(r.counterfactual_ids) == 0 for r in rows):
            raise UserError("an example has no counterfactual answer; the lens logit difference needs one.")
        good = _set_logprob(pm, cache, pos, [r.correct_ids for r in rows])
        bad = _set_logprob(pm, cache, pos, [r.counterfactual_ids for r in rows])
        diffs.append(good - bad)
    assert points is not None
    return LensProfile(points, torch.cat(ranks, 1), torch.cat(logprobs, 1), torch.cat(diffs, 1))
