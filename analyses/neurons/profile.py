"""Unit profiles: every unit's attribution and activation per task, and two models' profiles compared.

A *unit* is an MLP neuron `L{l}.mlp.neuron{i}` or a head `L{l}.H{h}`. `profile_units` streams
every task's examples through the model once (batch by batch; only per-unit sums are kept) and
records, per unit and task:

- attribution: the unit's attribution-patching (AtP) estimate of its effect on the task metric,
  (a_corrupt - a_clean) . dLD/da summed over positions, per example (`analyses.attribution`,
  the "eap" method at the unit level), where LD is the logit difference at the read position and
  a is the unit's value (a neuron's activation, a head's output vector). One clean
  forward+backward and one corrupted forward per batch. `attr_mean` is the mean of |attribution|
  over examples (how much the unit is involved; signs of single examples cannot cancel),
  `attr_signed` the signed mean.
- activation at the read position: a neuron's activation, a head's output norm ||h||_2.
- over every real token of every task: the activation's moments (for kurtosis) and its top
  tokens.

`UnitProfile` applies the metrics of `analyses.neurons.metrics` two ways: per unit across tasks
(selectivity, index, entropy: how specialised a unit is) and per task across units (gini, hoyer,
kurtosis of the attribution vector, units for 50/80/90 %: how concentrated a task's attribution
is). `compare_profiles` puts two models' profiles side by side with bootstrap intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.attribution import ATTRIBUTIONS
from analyses.batching import batches
from analyses.neurons.metrics import (
    SHARES,
    Moments,
    excess_kurtosis,
    gini,
    hoyer,
    normalised_entropy,
    selectivity,
    selectivity_index,
    units_for_share,
)
from analyses.statistics import Interval, bootstrap_weights, percentile_interval
from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Batch, Rendered
from probe.lens import read_targets
from probe.model import ProbedModel

UnitKind = Literal["neurons", "heads"]
On = Literal["attribution", "activation"]

# --- per-batch unit values --------------------------------------------------------------------------


def unit_names(pm: ProbedModel, kind: UnitKind) -> list[str]:
    """Every unit of `kind` in forward order (neurons of the dense MLPs: a mixture-of-experts layer
    has experts instead, `analyses.compare.routing`)."""
    if kind == "neurons":
        return [f"L{layer}.mlp.neuron{i}" for layer in dense_layers(pm) for i in range(pm.config.d_mlp)]
    if kind == "heads":
        return [f"L{layer}.H{h}" for layer in range(pm.config.n_layers) for h in range(pm.config.n_heads)]
    raise UserError(f"unit kind {kind!r}; use 'neurons' or 'heads'.")


def dense_layers(pm: ProbedModel) -> list[int]:
    """The layers whose MLP is dense (all of them but a mixture of experts' MoE layers)."""
    return [layer for layer in range(pm.config.n_layers) if not pm.shape.is_moe(layer)]


def _stored(pm: ProbedModel, kind: UnitKind) -> list[str]:
    if kind == "neurons":
        return [f"L{layer}.mlp.neurons" for layer in dense_layers(pm)]
    return unit_names(pm, "heads")


@dataclass
class _Chunk:
    attribution: Tensor  # [B, U]
    read: Tensor  # [B, U] activation at the read position
    tokens: Tensor  # [n_real, U] activation at every real token
    token_ids: Tensor  # [n_real]


def _chunk(pm: ProbedModel, batch: Batch, kind: UnitKind, method: str = "eap") -> _Chunk:
    """One batch's unit attributions (`method` at the unit level, AtP by default), activations at
    the read position and over every real token."""
    stored = _stored(pm, kind)
    deltas, cache = ATTRIBUTIONS.get(method)().unit_scores(pm, batch, stored)
    real = batch.attention_mask.bool().to(next(iter(deltas.values())).device)
    pos, _, _ = read_targets(batch)
    rows = torch.arange(len(pos))
    attr, read, tokens = [], [], []
    for name in stored:
        clean = cache[name]
        delta = deltas[name]
        if kind == "neurons":
            attr.append(delta.sum(1))
            read.append(clean[rows, pos])
            tokens.append(clean[real])
        else:
            attr.append(delta.sum((1, 2))[:, None])
            norm = clean.norm(dim=-1)
            read.append(norm[rows, pos][:, None])
            tokens.append(norm[real][:, None])
    return _Chunk(
        torch.cat(attr, 1).cpu().double(),
        torch.cat(read, 1).cpu().double(),
        torch.cat(tokens, 1).cpu().double(),
        batch.input_ids.to(real.device)[real].cpu(),
    )


def unit_attributions(
    pm: ProbedModel, items: Sequence[Rendered], kind: UnitKind = "neurons", *, batch_size: int = 32
) -> Float[Tensor, "examples units"]:
    """[N, U] per-example AtP attribution of every unit (`unit_names` order) to the logit difference."""
    return torch.cat([_chunk(pm, b, kind).attribution for b in batches(pm, items, batch_size)])


# --- profile ----------------------------------------------------------------------------------------


@dataclass
class UnitProfile:
    """Per-unit, per-task statistics from `profile_units` (see the module docstring).

    [U, T] tensors: attr_mean (mean |attribution|), attr_var (its variance), attr_signed (mean
    signed attribution), act_mean / act_var (activation at the read position; heads: output norm),
    act_abs (mean |activation| there). counts [T]: examples per task. token_kurtosis [U]: excess
    kurtosis of the activation over every real token of every task. top_values / top_tokens /
    top_tasks [U, m]: each unit's highest activations over those tokens, their token ids and the
    index of the task they came from. per_example: task -> [N, U] signed attributions, when
    `profile_units(..., keep=True)` kept them (for `compare_profiles`).
    """

    kind: str
    units: list[str]
    tasks: list[str]
    counts: Int[Tensor, " tasks"]
    attr_mean: Float[Tensor, "units tasks"]
    attr_var: Float[Tensor, "units tasks"]
    attr_signed: Float[Tensor, "units tasks"]
    act_mean: Float[Tensor, "units tasks"]
    act_var: Float[Tensor, "units tasks"]
    act_abs: Float[Tensor, "units tasks"]
    token_kurtosis: Float[Tensor, " units"]
    top_values: Float[Tensor, "units top"]
    top_tokens: Int[Tensor, "units top"]
    top_tasks: Int[Tensor, "units top"]
    token_count: int = 0
    per_example: dict[str, Float[Tensor, "_examples units"]] = field(default_factory=dict)

    def _task(self, task: str) -> int:
        if task not in self.tasks:
            raise UserError(f"task {task!r} is not in this profile; it holds {', '.join(self.tasks)}.")
        return self.tasks.index(task)

    def _on(self, on: On) -> tuple[Tensor, Tensor, Tensor]:
        """(means, variances, magnitudes) of `on`."""
        if on == "attribution":
            return self.attr_mean, self.attr_var, self.attr_mean
        if on == "activation":
            return self.act_mean, self.act_var, self.act_abs
        raise UserError(f"on={on!r}; use 'attribution' or 'activation'.")

    def _need_tasks(self, what: str) -> None:
        if len(self.tasks) < 2:
            raise UserError(f"{what} compares tasks; profile at least two tasks.")

    def selectivity(self, on: On = "attribution") -> Float[Tensor, "units tasks"]:
        """[U, T] standardised selectivity of each unit for each task."""
        self._need_tasks("selectivity")
        m, v, _ = self._on(on)
        return selectivity(m, v)

    def selectivity_index(self, on: On = "attribution") -> Float[Tensor, " units"]:
        """[U] max-vs-rest index over tasks of the magnitude of `on`."""
        self._need_tasks("selectivity_index")
        return selectivity_index(self._on(on)[2])

    def entropy(self, on: On = "attribution") -> Float[Tensor, " units"]:
        """[U] normalised entropy over tasks of the magnitude of `on`."""
        self._need_tasks("entropy")
        return normalised_entropy(self._on(on)[2])

    def preferred(self, on: On = "attribution") -> Int[Tensor, " units"]:
        """[U] index of the task with the largest magnitude of `on`."""
        return self._on(on)[2].argmax(1)

    def concentration(self, task: str, shares: Sequence[float] = SHARES) -> dict[str, float]:
        """How concentrated `task`'s attribution (attr_mean) is over the units."""
        x = self.attr_mean[:, self._task(task)]
        k = units_for_share(x, shares)
        out = {
            "gini": float(gini(x)),
            "hoyer": float(hoyer(x)),
            "kurtosis": float(excess_kurtosis(x)),
            "n_units": len(x),
        }
        for s, n in k.items():
            out[f"k{round(100 * s)}"] = n
            out[f"share_k{round(100 * s)}"] = n / len(x)
        return out

    def ranking(self, task: str, by: Literal["selectivity", "attribution"] = "selectivity") -> list[str]:
        """Units for `task`, most specialised (selectivity on attribution) or most attributed
        (attr_mean) first; NaN selectivities last; ties in forward order."""
        t = self._task(task)
        if by == "selectivity":
            key = self.selectivity("attribution")[:, t]
        elif by == "attribution":
            key = self.attr_mean[:, t]
        else:
            raise UserError(f"by={by!r}; rank units by 'selectivity' or 'attribution'.")
        key = torch.nan_to_num(key, nan=-math.inf)
        order = sorted(range(len(self.units)), key=lambda i: -float(key[i]))
        return [self.units[i] for i in order]

    def summary(self) -> dict:
        """Medians and means of the per-unit metrics, and every task's concentration."""

        def stats(x: Tensor) -> dict[str, float]:
            x = x[~torch.isnan(x)]
            if len(x) == 0:
                return {"median": math.nan, "mean": math.nan, "p90": math.nan}
            return {"median": float(x.median()), "mean": float(x.mean()), "p90": float(torch.quantile(x, 0.9))}

        out: dict = {"kind": self.kind, "n_units": len(self.units), "tasks": self.tasks, "counts": self.counts.tolist()}
        if len(self.tasks) >= 2:
            for on in ("attribution", "activation"):
                sel = self.selectivity(on)
                out[on] = {
                    "selectivity_index": stats(self.selectivity_index(on)),
                    "entropy": stats(self.entropy(on)),
                    "max_selectivity": stats(
                        sel.nan_to_num(-math.inf).max(1).values.where(~sel.isnan().all(1), torch.nan)
                    ),
                }
        out["token_kurtosis"] = stats(self.token_kurtosis)
        out["concentration"] = {t: self.concentration(t) for t in self.tasks}
        return out


def profile_units(
    pm: ProbedModel,
    tasks: Mapping[str, Sequence[Rendered]],
    *,
    kind: UnitKind = "neurons",
    batch_size: int = 32,
    top_k_tokens: int = 10,
    keep: bool = False,
) -> UnitProfile:
    """Stream every task's examples and collect the per-unit statistics of a `UnitProfile`.

    tasks: task name -> examples rendered for this model's reading mode (with corrupted inputs).
    Memory holds one batch's activations and [U]-sized sums, never a dataset's activations;
    `keep` also keeps every example's attributions ([N, U] per task, for `compare_profiles`).
    """
    if not tasks:
        raise UserError("profile_units needs at least one task's examples.")
    if top_k_tokens < 1:
        raise UserError(f"top_k_tokens must be >= 1, got {top_k_tokens}.")
    units = unit_names(pm, kind)
    U, T = len(units), len(tasks)
    attr_mean, attr_var, attr_signed = (torch.zeros(U, T, dtype=torch.float64) for _ in range(3))
    act_mean, act_var, act_abs = (torch.zeros(U, T, dtype=torch.float64) for _ in range(3))
    counts = torch.zeros(T, dtype=torch.long)
    token_moments = Moments()
    top_v = torch.full((0, U), -math.inf, dtype=torch.float64)
    top_id = torch.zeros((0, U), dtype=torch.long)
    top_task = torch.zeros((0, U), dtype=torch.long)
    kept: dict[str, Tensor] = {}
    for t, (name, items) in enumerate(tasks.items()):
        attr, act = Moments(), Moments()
        signed = torch.zeros(U, dtype=torch.float64)
        absolute = torch.zeros(U, dtype=torch.float64)
        rows = []
        for batch in batches(pm, items, batch_size):
            c = _chunk(pm, batch, kind)
            if keep:
                rows.append(c.attribution)
            attr.update(c.attribution.abs())
            act.update(c.read)
            signed += c.attribution.sum(0)
            absolute += c.read.abs().sum(0)
            token_moments.update(c.tokens)
            # running top tokens: merge this batch's activations with the best so far
            values = torch.cat([top_v, c.tokens])
            ids = torch.cat([top_id, c.token_ids[:, None].expand(-1, U)])
            where = torch.cat([top_task, torch.full_like(c.tokens, t, dtype=torch.long)])
            best = values.topk(min(top_k_tokens, len(values)), dim=0).indices
            top_v, top_id, top_task = values.gather(0, best), ids.gather(0, best), where.gather(0, best)
        n = attr.n
        if n == 0:
            raise UserError(f"task {name!r} has no examples.")
        counts[t] = n
        if keep:
            kept[name] = torch.cat(rows)
        attr_mean[:, t], attr_var[:, t], attr_signed[:, t] = attr.mean, attr.var, signed / n
        act_mean[:, t], act_var[:, t], act_abs[:, t] = act.mean, act.var, absolute / n
    return UnitProfile(
        kind,
        units,
        list(tasks),
        counts,
        attr_mean,
        attr_var,
        attr_signed,
        act_mean,
        act_var,
        act_abs,
        token_moments.kurtosis,
        top_v.T.contiguous(),
        top_id.T.contiguous(),
        top_task.T.contiguous(),
        token_moments.n,
        kept,
    )


# --- comparing two models ---------------------------------------------------------------------------


def _share_units(x: Tensor, share: float) -> Tensor:
    """[B] fraction of units (largest first) needed for `share` of each row's total |x|."""
    cum = x.abs().sort(-1, descending=True).values.cumsum(-1)
    need = (cum < share * cum[..., -1:] * (1 - 1e-12)).sum(-1) + 1
    return need.double() / x.shape[-1]


def _profile_metrics(means: Tensor, shares: Sequence[float]) -> dict[str, Tensor]:
    """Metrics of [B, U, T] mean |attribution| matrices: per task (over units) and across tasks."""
    out: dict[str, Tensor] = {}
    for t in range(means.shape[-1]):
        x = means[..., t]
        out[f"{t}:gini"] = gini(x)
        out[f"{t}:hoyer"] = hoyer(x)
        for s in shares:
            out[f"{t}:share_k{round(100 * s)}"] = _share_units(x, s)
    if means.shape[-1] >= 2:
        out["median_selectivity_index"] = selectivity_index(means).nanmedian(-1).values
        out["median_entropy"] = normalised_entropy(means).nanmedian(-1).values
    return out


def compare_profiles(
    a: UnitProfile,
    b: UnitProfile,
    *,
    shares: Sequence[float] = SHARES,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Interval]]:
    """Concentration and specialisation of two models' units, with bootstrap intervals.

    Needs profiles made with `keep=True` over the same tasks. For each task: Gini and Hoyer of
    the units' mean |attribution| and the share of units needed for each share of the total
    ("TASK:gini", "TASK:share_k80", ...); across tasks: the median over units of the selectivity
    index and of the normalised entropy. Each metric gets {"a", "b", "diff" (b - a)}; examples are
    resampled within each task, with the same resample for both models when their task holds the
    same number of examples (the same pool: a paired comparison).
    """
    if a.tasks != b.tasks:
        raise UserError(f"the profiles cover different tasks ({a.tasks} vs {b.tasks}); profile the same tasks.")
    if not a.per_example or not b.per_example:
        raise UserError("compare_profiles needs per-example attributions: make both profiles with keep=True.")
    boots_a, boots_b, full_a, full_b = [], [], [], []
    for t, task in enumerate(a.tasks):
        xa, xb = a.per_example[task].abs(), b.per_example[task].abs()
        wa = bootstrap_weights(len(xa), n_boot, seed + t)
        wb = wa if len(xb) == len(xa) else bootstrap_weights(len(xb), n_boot, seed + t + 10_000)
        boots_a.append(wa @ xa)
        boots_b.append(wb @ xb)
        full_a.append(xa.mean(0))
        full_b.append(xb.mean(0))
    ma, mb = _profile_metrics(torch.stack(boots_a, -1), shares), _profile_metrics(torch.stack(boots_b, -1), shares)
    ea, eb = (
        _profile_metrics(torch.stack(full_a, -1)[None], shares),
        _profile_metrics(torch.stack(full_b, -1)[None], shares),
    )
    out: dict[str, dict[str, Interval]] = {}
    for key in ma:
        name = key if ":" not in key else f"{a.tasks[int(key.split(':')[0])]}:{key.split(':')[1]}"
        va, vb, xa_, xb_ = float(ea[key][0]), float(eb[key][0]), ma[key], mb[key]
        out[name] = {
            "a": percentile_interval(xa_, va, level),
            "b": percentile_interval(xb_, vb, level),
            "diff": percentile_interval(xb_ - xa_, vb - va, level),
        }
    return out


# --- what a neuron writes ---------------------------------------------------------------------------


# --- causal check -----------------------------------------------------------------------------------
