"""Reading the residual stream through the unembedding: logit lens and direct logit attribution.

Both read at an answer's *read position*: for a token at position i that is i - 1 when the
checkpoint's `shift` is on (every AR model, shift-on MDMs) and i itself otherwise; the task
renderings (`ar2mdm.tasks.render`) already store it per example as `read_positions`, computed by
`ar2mdm.common.metadata.read_positions`, the project's single rule.

- `logit_lens`: the residual stream after the embedding and after every layer, put through the
  final norm and the unembedding: the rank and log-probability of the answer token by depth. The
  last point is the model's own prediction.
- `direct_logit_attribution`: what each sender (embed, every head, every MLP, biases) adds to
  logit(correct) - logit(counterfactual) through the direct path, with the final norm's scale
  fixed at the actual final residual. The parts sum to the model's logit difference exactly
  (before any final logit soft-capping, which Gemma 2 applies).
- `answer_logit_diff`: the differentiable metric used for patching and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Batch, Rendered
from probe.cache import Cache
from probe.model import ProbedModel


def _rows(items: Batch | Sequence[Rendered]) -> list[Rendered]:
    rows = items.items if isinstance(items, Batch) else list(items)
    if not rows:
        raise UserError("no examples given.")
    return rows


def answer_logit_diff(
    logits: Float[Tensor, "batch pos vocab"], items: Batch | Sequence[Rendered]
) -> Float[Tensor, " batch"]:
    """[B] logsumexp(logits[correct]) - logsumexp(logits[counterfactual]) at each example's first
    read position (for singleton sets: the plain logit difference). Differentiable."""
    rows = _rows(items)
    if logits.shape[0] != len(rows):
        raise UserError(f"logits have {logits.shape[0]} rows for {len(rows)} examples.")
    out = []
    for b, r in enumerate(rows):
        if len(r.counterfactual_ids) == 0:
            raise UserError(f"{r.example.task}: an example has no counterfactual answer; a logit difference needs one.")
        row = logits[b, int(r.read_positions[0])].float()
        out.append(
            torch.logsumexp(row[r.correct_ids.to(row.device)], 0)
            - torch.logsumexp(row[r.counterfactual_ids.to(row.device)], 0)
        )
    return torch.stack(out)


def read_targets(
    items: Batch | Sequence[Rendered],
) -> tuple[Int[Tensor, " batch"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """(read positions [B], first correct ids [B], first counterfactual ids [B]) of examples."""
    rows = _rows(items)
    pos = torch.tensor([int(r.read_positions[0]) for r in rows])
    correct = torch.tensor([int(r.correct_ids[0]) for r in rows])
    counter = torch.tensor([int(r.counterfactual_ids[0]) if len(r.counterfactual_ids) else -1 for r in rows])
    return pos, correct, counter


def _unembed(pm: ProbedModel, x: Tensor) -> Tensor:
    w = pm.layout.unembed_weight()
    b = pm.layout.unembed_bias()
    logits = x @ w.T.to(x.dtype)
    return logits if b is None else logits + b


def _at(cache: Cache, name: str, positions: Tensor) -> Tensor:
    x = cache[name]
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, positions.to(x.device)]


@dataclass
class LensCurve:
    """Logit lens at the read positions. `points` names the residual stream read ("L0.resid_pre"
    = after the embedding, then each "L{l}.resid_post"); `ranks` / `logprobs` are [points, B]
    (rank 0 = the top prediction)."""

    points: list[str]
    ranks: Int[Tensor, "points batch"]
    logprobs: Float[Tensor, "points batch"]

    def mean_rank(self) -> Float[Tensor, " points"]:
        return self.ranks.float().mean(1)


@torch.no_grad()
def logit_lens(
    pm: ProbedModel, cache: Cache, positions: Int[Tensor, " batch"], targets: Int[Tensor, " batch"]
) -> LensCurve:
    """Rank and log-probability of `targets` [B] at `positions` [B] after each layer.

    `cache` needs `L0.resid_pre` and every `L{l}.resid_post`. The final norm is the model's own
    module, applied to each point's residual stream.
    """
    n = pm.config.n_layers
    points = ["L0.resid_pre"] + [f"L{layer}.resid_post" for layer in range(n)]
    ranks, logprobs = [], []
    for point in points:
        x = _at(cache, point, positions)
        logits = _unembed(pm, pm.layout.final_norm(x.to(next(pm.model.parameters()).dtype))).float()
        target = logits.gather(1, targets.to(logits.device)[:, None])
        ranks.append((logits > target).sum(1))
        logprobs.append(torch.log_softmax(logits, -1).gather(1, targets.to(logits.device)[:, None])[:, 0])
    return LensCurve(points, torch.stack(ranks).cpu(), torch.stack(logprobs).cpu())


@dataclass
class Attribution:
    """Direct logit attribution: `parts[name]` [B] per sender, `constant` [B] (biases and the
    final norm's offset); `total()` equals the model's logit difference."""

    parts: dict[str, Float[Tensor, " batch"]]
    constant: Float[Tensor, " batch"]

    def total(self) -> Float[Tensor, " batch"]:
        return sum(self.parts.values()) + self.constant

    def heads(self, n_layers: int, n_heads: int) -> Float[Tensor, "layers heads batch"]:
        """Head attributions as [n_layers, n_heads, B]."""
        return torch.stack(
            [torch.stack([self.parts[f"L{layer}.H{h}"] for h in range(n_heads)]) for layer in range(n_layers)]
        )


@torch.no_grad()
def direct_logit_attribution(
    pm: ProbedModel,
    cache: Cache,
    positions: Int[Tensor, " batch"],
    correct: Int[Tensor, " batch"],
    counter: Int[Tensor, " batch"] | None = None,
) -> Attribution:
    """Each sender's direct effect on logit(correct) - logit(counter) (or logit(correct) when
    `counter` is None) at `positions`; all [B]. Needs `embed`, every head and every MLP in
    `cache` (and `L{n-1}.resid_post`)."""
    final = pm.core.final
    if not final.exact:
        raise UserError(
            f"direct logit attribution cannot linearise the final norm ({type(pm.layout.final_norm).__name__})."
        )
    dec = pm.decompose(cache)
    x_final = _at(cache, f"L{pm.config.n_layers - 1}.resid_post", positions).float()
    w = pm.layout.unembed_weight().float()
    direction = w[correct.to(w.device)]
    b_u = pm.layout.unembed_bias()
    if counter is not None:
        direction = direction - w[counter.to(w.device)]
    parts = {}
    for name, value in dec.parts.items():
        part = _at(Cache({name: value}), name, positions).float()
        parts[name] = (final.linear(part, x_final) * direction).sum(-1)
    constant = (final.linear(_at(Cache({"b": dec.bias}), "b", positions).float(), x_final) * direction).sum(-1)
    if final.bias is not None:
        constant = constant + (final.bias.float() * direction).sum(-1)
    if b_u is not None:
        ub = b_u.float()[correct.to(b_u.device)]
        constant = constant + (ub - b_u.float()[counter.to(b_u.device)] if counter is not None else ub)
    return Attribution(parts, constant)
