"""Causal checks of specialised units, and what a neuron writes.

Selectivity is not importance (Leavitt & Morcos 2021), so every ranking is paired with a causal
check (`causal_check`): ablate the task's top-n units (by selectivity or by attribution) and
compare the drop of that task's logit difference with ablating n random units drawn from the
same layers (several draws), with paired bootstrap intervals; the same units are also ablated on
the other tasks (is the damage specific?). `vocab_projection` reads what a neuron writes: its
down-projection column through the final norm's gain and the unembedding (Geva et al. 2022).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from analyses.depth.ablation import AblationResult, ablated_logit_diffs, random_matched, summarise_ablation
from analyses.depth.distribution import layer_of
from analyses.neurons.profile import UnitProfile, unit_names
from analyses.patching import Source as Method
from analyses.patching import baseline_logit_diffs, reference_means
from analyses.statistics import Interval, bootstrap_ci
from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Rendered
from probe.model import ProbedModel


@dataclass
class Projection:
    """A unit's output direction read through the unembedding: the k most promoted (`top`) and
    most suppressed (`bottom`) token ids with their logit contributions per unit of activation
    (up to the final norm's positive per-token scale)."""

    unit: str
    top_ids: list[int]
    top_values: list[float]
    bottom_ids: list[int]
    bottom_values: list[float]


@torch.no_grad()
def vocab_projection(pm: ProbedModel, unit: str, k: int = 10) -> Projection:
    """What neuron `unit` writes, as logits: W_U (g * w) with w its down-projection column and g
    the final norm's gain (a LayerNorm also centres w)."""
    n = pm.shape.check(unit)
    if n.kind != "neuron":
        raise UserError(
            f"vocab_projection reads a neuron's fixed output direction; {unit!r} is a {n.kind} "
            "(a head writes a different vector for every input). Pass L{l}.mlp.neuron{i}."
        )
    w = pm.layout.down_weight(n.layer)[:, n.neuron].float()
    final = pm.core.final
    if getattr(final, "exact", False):
        if final.centered:
            w = w - w.mean()
        w = w * final.gain.float()
    logits = pm.layout.unembed_weight().float() @ w
    k = min(k, len(logits))
    top = logits.topk(k)
    bottom = (-logits).topk(k)
    return Projection(
        unit, top.indices.tolist(), top.values.tolist(), bottom.indices.tolist(), (-bottom.values).tolist()
    )


@dataclass
class CausalCheck:
    """Ablating a task's top-n units against n random units from the same layers.

    target / random: `AblationResult`s on the task (random: mean over draws per example).
    versus_random: paired interval of drop(target) - drop(random). off_target: the same target
    units ablated on each other task.
    """

    task: str
    by: str
    method: str
    units: tuple[str, ...]
    target: AblationResult
    random: AblationResult
    versus_random: Interval
    off_target: dict[str, AblationResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "by": self.by,
            "method": self.method,
            "units": list(self.units),
            "target": self.target.to_dict(),
            "random": self.random.to_dict(),
            "versus_random": self.versus_random.to_dict(),
            "off_target": {k: v.to_dict() for k, v in self.off_target.items()},
        }


def causal_check(
    pm: ProbedModel,
    profile: UnitProfile,
    tasks: Mapping[str, Sequence[Rendered]],
    task: str,
    *,
    n_units: int = 10,
    by: Literal["selectivity", "attribution"] = "selectivity",
    method: Method = "mean",
    n_random: int = 5,
    match_layers: bool = True,
    off_target: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    batch_size: int = 64,
) -> CausalCheck:
    """Ablate `task`'s top `n_units` units of `profile` (ranked `by`) and `n_random` draws of as
    many random units (from the same layers, same count per layer, when `match_layers`), and
    report the drop of `task`'s logit difference. Mean ablation uses each task's own clean means."""
    if task not in tasks:
        raise UserError(f"task {task!r} has no examples here; given: {', '.join(tasks)}.")
    if not 1 <= n_units <= len(profile.units):
        raise UserError(f"n_units must lie in 1..{len(profile.units)}, got {n_units}.")
    if n_random < 1:
        raise UserError(f"n_random must be >= 1, got {n_random}.")
    if profile.units != unit_names(pm, profile.kind):  # type: ignore[arg-type]
        raise UserError(f"this {profile.kind} profile was made on a model of another shape; profile this model first.")
    units = profile.ranking(task, by)[:n_units]
    rng = random.Random(seed)
    draws: list[list[str]] = []
    for _ in range(n_random):
        if match_layers:
            draw: list[str] = []
            for layer in sorted({layer_of(u) for u in units}):
                same = [u for u in units if layer_of(u) == layer]
                draw += random_matched(pm, same, rng, layers=[layer])
            draws.append(draw)
        else:
            draws.append(random_matched(pm, units, rng))
    opts = {"n_boot": n_boot, "level": level, "seed": seed}

    def measure(name: str, with_random: bool) -> tuple[AblationResult, AblationResult | None, Interval | None]:
        items = tasks[name]
        every = sorted(set(units) | ({u for d in draws for u in d} if with_random else set()))
        means = reference_means(pm, items, every, batch_size=batch_size) if method == "mean" else None
        clean, corrupted = baseline_logit_diffs(pm, items, batch_size=batch_size)
        tgt = ablated_logit_diffs(pm, items, units, method=method, means=means, batch_size=batch_size)
        target = summarise_ablation(f"{task} top-{n_units} by {by}", units, method, clean, tgt, corrupted, **opts)
        if not with_random:
            return target, None, None
        lds = [ablated_logit_diffs(pm, items, d, method=method, means=means, batch_size=batch_size) for d in draws]
        rand = torch.stack(lds).mean(0)
        rand_res = summarise_ablation(
            "random",
            (),
            method,
            clean,
            rand,
            corrupted,
            draws=[float((clean - d).mean()) for d in lds],
            draw_components=draws,
            **opts,
        )
        return target, rand_res, bootstrap_ci(rand.double() - tgt.double(), **opts)

    target, rand_res, versus = measure(task, True)
    assert rand_res is not None and versus is not None
    others = {name: measure(name, False)[0] for name in tasks if name != task} if off_target else {}
    return CausalCheck(task, by, method, tuple(units), target, rand_res, versus, others)
