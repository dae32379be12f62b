"""Ablations by depth: knock out components and measure the drop of the task's logit difference.

The metric is the logit difference at the read position (`probe.answer_logit_diff`); an
ablation's effect is its *drop*, clean LD - ablated LD per example, reported with a percentile
bootstrap interval over examples and as a share of the clean - corrupted gap. Methods (the
`analyses.patching` sources): "zero" (the node's output set to 0), "mean" (its mean over every
real token of the reference examples, streamed), "corrupt" (its value on the corrupted input:
resample ablation / noising patch).

`targeted_ablation` ablates the top-K components that lie in one third of the layers (default:
early) and, with the same number of components of the same kinds, three controls: random
components from any layer (several draws, averaged per example) and the most important
components of each other third (the importance-matched middle / late controls). Differences
target - control are paired over examples. `node_patching_scores` (exact node patching) and
`dla_scores` (direct logit attribution) give per-example node scores for the layer distribution.
Every forward pass goes through `analyses.patching`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.batching import batches
from analyses.depth.distribution import REGIONS, Region, layer_distribution, layer_of, region
from analyses.patching import Patch, baseline_logit_diffs, component, patched_metrics, reference_means
from analyses.patching import Source as Method
from analyses.statistics import Interval, bootstrap_ci, ratio_of_means
from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Rendered
from probe.lens import read_targets
from probe.model import ProbedModel
from probe.names import parse


def layer_components(pm: ProbedModel, layers: int | Sequence[int]) -> list[str]:
    """Every head and the MLP of each layer in `layers` (a whole-layer ablation)."""
    out = []
    for layer in [layers] if isinstance(layers, int) else layers:
        pm.shape.check(f"L{layer}.mlp")
        out += pm.shape.heads(layer) + [f"L{layer}.mlp"]
    return out


def ablated_logit_diffs(
    pm: ProbedModel,
    items: Sequence[Rendered],
    components: Sequence[str],
    *,
    method: Method = "mean",
    means: Mapping[str, Float[Tensor, "*_shape"]] | None = None,
    batch_size: int = 64,
) -> Float[Tensor, " examples"]:
    """[N] logit differences with every component in `components` ablated by `method` at every
    position ("mean" needs `means` from `reference_means`; "corrupt" reads each example's
    corrupted input). An empty list gives the clean logit differences."""
    for c in components:
        component(pm, c)
    return patched_metrics(pm, items, [Patch(tuple(components), method)], means=means, batch_size=batch_size)[0]


@dataclass
class AblationResult:
    """One ablation over N examples. clean / ablated / corrupted: LD per example [N] (for several
    random draws, `ablated` is the mean over draws per example and `draws` each draw's mean drop).
    drop: mean(clean - ablated) with its interval; gap_share: mean drop / mean(clean - corrupted)."""

    label: str
    components: tuple[str, ...]
    method: str
    clean: Float[Tensor, " examples"]
    ablated: Float[Tensor, " examples"]
    corrupted: Float[Tensor, " examples"]
    drop: Interval
    gap_share: Interval
    draws: tuple[float, ...] = ()
    draw_components: tuple[tuple[str, ...], ...] = ()

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "components": list(self.components),
            "method": self.method,
            "n": len(self.clean),
            "mean_clean": float(self.clean.mean()),
            "mean_ablated": float(self.ablated.mean()),
            "mean_corrupted": float(self.corrupted.mean()),
            "drop": self.drop.to_dict(),
            "gap_share": self.gap_share.to_dict(),
            "draws": list(self.draws),
            "draw_components": [list(c) for c in self.draw_components],
        }


def summarise_ablation(
    label: str,
    components: Sequence[str],
    method: str,
    clean: Float[Tensor, " examples"],
    ablated: Float[Tensor, " examples"],
    corrupted: Float[Tensor, " examples"],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    draws: Sequence[float] = (),
    draw_components: Sequence[Sequence[str]] = (),
) -> AblationResult:
    """An `AblationResult` from per-example logit differences."""
    drop = clean.double() - ablated.double()
    return AblationResult(
        label,
        tuple(components),
        method,
        clean,
        ablated,
        corrupted,
        bootstrap_ci(drop, n_boot=n_boot, level=level, seed=seed),
        ratio_of_means(drop, clean.double() - corrupted.double(), n_boot=n_boot, level=level, seed=seed),
        tuple(draws),
        tuple(tuple(c) for c in draw_components),
    )


def ablate(
    pm: ProbedModel,
    items: Sequence[Rendered],
    components: Sequence[str],
    *,
    method: Method = "mean",
    means: Mapping[str, Float[Tensor, "*_shape"]] | None = None,
    label: str = "ablation",
    batch_size: int = 64,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> AblationResult:
    """Ablate `components` together and report the drop of the logit difference (see module
    docstring). "mean" without `means` takes the means over `items` themselves."""
    if method == "mean" and means is None:
        means = reference_means(pm, items, components, batch_size=batch_size)
    clean, corrupted = baseline_logit_diffs(pm, items, batch_size=batch_size)
    ablated = ablated_logit_diffs(pm, items, components, method=method, means=means, batch_size=batch_size)
    return summarise_ablation(
        label, components, method, clean, ablated, corrupted, n_boot=n_boot, level=level, seed=seed
    )


def _nodes(pm: ProbedModel, nodes: Sequence[str] | None) -> list[str]:
    return [n for n in pm.senders() if n != "embed"] if nodes is None else [str(component(pm, n)) for n in nodes]


def node_patching_scores(
    pm: ProbedModel, items: Sequence[Rendered], nodes: Sequence[str] | None = None, *, batch_size: int = 64
) -> dict[str, Float[Tensor, " examples"]]:
    """Exact node activation patching (noising): for each node (default every head and MLP),
    clean LD - LD with that node alone set to its value on the corrupted input; [N] per node.
    One forward pass per node and batch."""
    names = _nodes(pm, nodes)
    clean = patched_metrics(pm, items, [Patch(())], batch_size=batch_size)[0]
    patched = patched_metrics(pm, items, [Patch((n,)) for n in names], batch_size=batch_size)
    return {n: clean - patched[i] for i, n in enumerate(names)}


@torch.no_grad()
def dla_scores(
    pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64
) -> dict[str, Float[Tensor, " examples"]]:
    """Direct logit attribution of every head and MLP to logit(correct) - logit(counterfactual)
    (first ids of each set) at the read position, [N] per node (`probe.direct_logit_attribution`).
    Direct effects only: an early component that works through later ones scores ~0 here."""
    from probe.lens import direct_logit_attribution

    names = _nodes(pm, None)
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, ["embed", "L*.H*", "L*.mlp", f"L{pm.config.n_layers - 1}.resid_post"])
        pos, correct, counter = read_targets(batch)
        dla = direct_logit_attribution(pm, cache, pos, correct, counter)
        for n in names:
            out[n].append(dla.parts[n].cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def _kind(name: str) -> str:
    return parse(name).kind


def _universe(pm: ProbedModel, kind: str) -> list[str]:
    if kind == "head":
        return [f"L{layer}.H{h}" for layer in range(pm.config.n_layers) for h in range(pm.config.n_heads)]
    if kind == "mlp":
        return [f"L{layer}.mlp" for layer in range(pm.config.n_layers)]
    return [f"L{layer}.mlp.neuron{i}" for layer in range(pm.config.n_layers) for i in range(pm.config.d_mlp)]


def random_matched(
    pm: ProbedModel, target: Sequence[str], rng: random.Random, *, layers: Sequence[int] | None = None
) -> list[str]:
    """Random components with the same count of each kind as `target`, none of them in `target`,
    drawn from every layer (or from `layers` when given)."""
    chosen: list[str] = []
    taken = set(target)
    for kind in sorted({_kind(t) for t in target}):
        need = sum(_kind(t) == kind for t in target)
        pool = [c for c in _universe(pm, kind) if c not in taken and (layers is None or layer_of(c) in layers)]
        if len(pool) < need:
            raise UserError(
                f"only {len(pool)} {kind} components are left to draw a random control of {need} from; ablate fewer."
            )
        chosen += rng.sample(pool, need)
    return chosen


def region_matched(pm: ProbedModel, target: Sequence[str], scores: Mapping[str, float], where: Region) -> list[str]:
    """The most important (|score|) components of region `where` with the kinds of `target`
    (same count per kind where the region has them; the rest filled with its next most important
    components of any kind; fewer only if the region is smaller than `target`)."""
    n_layers = pm.config.n_layers
    taken = set(target)

    def key(c: str) -> float:
        return -abs(float(scores.get(c, 0.0)))

    members = {
        kind: sorted(
            (c for c in _universe(pm, kind) if c not in taken and region(layer_of(c), n_layers) == where), key=key
        )
        for kind in {_kind(t) for t in target}
    }
    chosen: list[str] = []
    for kind in sorted(members):
        need = sum(_kind(t) == kind for t in target)
        chosen += members[kind][:need]
    rest = sorted((c for ms in members.values() for c in ms if c not in chosen), key=key)
    chosen += rest[: len(target) - len(chosen)]
    return chosen


@dataclass
class TargetedAblation:
    """Ablating the top-K components of one region against size-matched controls.

    target: the region's top-K components ablated together. controls: "random" (random draws of
    the same kinds from any layer), and one per other region (its most important components).
    versus: paired interval of drop(target) - drop(control) per control.
    """

    task: str
    k: int
    region: str
    method: str
    target: AblationResult
    controls: dict[str, AblationResult]
    versus: dict[str, Interval]

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "k": self.k,
            "region": self.region,
            "method": self.method,
            "target": self.target.to_dict(),
            "controls": {k: v.to_dict() for k, v in self.controls.items()},
            "versus": {k: v.to_dict() for k, v in self.versus.items()},
        }


def targeted_ablation(
    pm: ProbedModel,
    items: Sequence[Rendered],
    scores: Mapping[str, float],
    *,
    k: int,
    where: Region = "early",
    method: Method = "mean",
    n_random: int = 5,
    task: str = "",
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    batch_size: int = 64,
    means: Mapping[str, Float[Tensor, "*_shape"]] | None = None,
) -> TargetedAblation:
    """Ablate the components of region `where` among the top-`k` of `scores` (the circuit's
    early-layer part by default) and size-matched controls; see the module docstring.

    scores: importance per head / MLP (or neuron) in canonical names. means: reference means for
    method="mean" (default: over `items`, clean).
    """
    if where not in REGIONS:
        raise UserError(f"where={where!r}; use one of {', '.join(REGIONS)}.")
    if n_random < 1:
        raise UserError(f"n_random must be >= 1, got {n_random}.")
    n_layers = pm.config.n_layers
    dist = layer_distribution(scores, n_layers, k)
    target = [c for c in dist.top if region(layer_of(c), n_layers) == where]
    if not target:
        raise UserError(
            f"none of the top-{k} components lies in the {where} third of the layers ({list(dist.top)}); raise k or pick another region."
        )
    for c in target:
        component(pm, c)
    rng = random.Random(seed)
    randoms = [random_matched(pm, target, rng) for _ in range(n_random)]
    others = {r: region_matched(pm, target, scores, r) for r in REGIONS if r != where}
    every = sorted(set(target) | {c for d in randoms for c in d} | {c for o in others.values() for c in o})
    if method == "mean" and means is None:
        means = reference_means(pm, items, every, batch_size=batch_size)
    clean, corrupted = baseline_logit_diffs(pm, items, batch_size=batch_size)

    def run(components: Sequence[str]) -> Tensor:
        return ablated_logit_diffs(pm, items, components, method=method, means=means, batch_size=batch_size)

    opts = {"n_boot": n_boot, "level": level, "seed": seed}
    tgt_ld = run(target)
    target_res = summarise_ablation(f"{where} top-{k}", target, method, clean, tgt_ld, corrupted, **opts)
    draws = [run(d) for d in randoms]
    rand_ld = torch.stack(draws).mean(0)
    controls = {
        "random": summarise_ablation(
            "random",
            (),
            method,
            clean,
            rand_ld,
            corrupted,
            draws=[float((clean - d).mean()) for d in draws],
            draw_components=randoms,
            **opts,
        )
    }
    lds = {"random": rand_ld}
    for r, comps in others.items():
        if comps:
            lds[r] = run(comps)
            controls[r] = summarise_ablation(r, comps, method, clean, lds[r], corrupted, **opts)
    # drop(target) - drop(control) = control LD - target LD, paired over examples
    versus = {name: bootstrap_ci(ld.double() - tgt_ld.double(), **opts) for name, ld in lds.items()}
    return TargetedAblation(task, k, where, method, target_res, controls, versus)
