"""Routing in ARM vs MDM: which experts a task uses, how sharply, how evenly, and along denoising.

For a pair of mixture-of-experts models (`ProbedModel.shape.moe_layers`), per task, on the
common-correct pool's clean inputs:

- `routing_at_reads(pm, items)`: the gate weights [N, M, E] every MoE layer (M of them) gives each
  expert at each example's read position (`L{l}.routing`; the ARM's last prompt position, the
  MDM's masked answer position, shift-aware), and the top-k load [M, E] over every real token;
- `routing_stats`: routing entropy (bits, mean over examples and MoE layers of the entropy of the
  normalised gate weights at the read position: 0 = one expert, log2 k = k equal ones), load
  balance (mean over layers of H(load) / log2 E: 1 = every expert equally busy) and the top
  experts (the K (layer, expert) pairs of largest mean gate weight at the read position,
  K = M x top_k);
- `selective_experts`: per model, the experts whose mean gate weight on one task stands out from
  the other tasks (selectivity index (mu_task - mu_rest) / (mu_task + mu_rest) >= 0.5, as
  `analyses.neurons` reads neurons);
- `expert_overlap`: Jaccard of two models' top experts with a bootstrap interval (examples
  resampled, the same resample for both models);
- `align_experts`: expert indices are labels; two models are compared up to the permutation of
  each layer's experts that best matches their per-task routing profiles (an MDM inherits its
  ARM's labels, and the match shows whether conversion kept them; a seed twin shares none);
- `routing_claim`: "converting the ARM changes which experts a task uses": 1 - mean Jaccard of the
  ARM's and the MDM's top experts over tasks, pooled over tasks, against the controls: the null
  pair (each model against itself on the two halves of its pool: what sampling alone moves) and
  the seed floor (ARM vs ARM', MDM vs MDM', when seed twins are given);
- `routing_trajectory`: the MDM's routing at the read position while a share 1 - t of the other
  answer tokens is decoded (t = 1 ... 0, `analyses.compare.trajectory.revealed`): entropy and
  Jaccard of the top experts with t = 1's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.batching import batches
from analyses.statistics import (
    Interval,
    bootstrap_indices,
    floor_bound,
    format_interval,
    percentile_interval,
    pooled,
    verdict,
)
from analyses.verdicts import WITHIN_FLOOR, WITHIN_NULL, stored_verdict, unfloored
from ar2mdm.tasks.base import Rendered
from probe.model import ProbedModel

SELECTIVE = 0.5  # selectivity index at or above which an expert is "selective" for a task


def routing_at_reads(
    pm: ProbedModel, items: Sequence[Rendered], batch_size: int = 16
) -> tuple[Float[Tensor, "examples moe_layers experts"], Float[Tensor, "moe_layers experts"]]:
    """(gate weights at each example's first read position [N, M, E], share of top-k assignments
    per expert over every real token [M, E]) of `pm` on the clean inputs of `items`."""
    layers = pm.shape.moe_layers
    names = [f"L{layer}.routing" for layer in layers]
    reads, load = [], torch.zeros(len(layers), pm.shape.n_experts, dtype=torch.float64)
    for batch in batches(pm, list(items), batch_size):
        _, cache = pm.run_with_cache(batch, names=names)
        rows = torch.arange(batch.input_ids.shape[0])
        pos = torch.stack([it.read_positions[0] for it in batch.items])
        real = batch.attention_mask.bool()
        reads.append(torch.stack([cache[n][rows, pos].double() for n in names], 1))
        for i, n in enumerate(names):
            load[i] += (cache[n][real] > 0).double().sum(0)
    return torch.cat(reads), load / load.sum(-1, keepdim=True).clamp(min=1)


def _entropy_bits(p: Float[Tensor, "*rest experts"]) -> Float[Tensor, "*rest"]:
    q = p / p.sum(-1, keepdim=True).clamp(min=1e-30)
    return -(q * torch.log2(q.clamp(min=1e-30))).sum(-1)


def top_experts(reads: Float[Tensor, "examples moe_layers experts"], layers: Sequence[int], k: int) -> list[str]:
    """The k (layer, expert) names `L{l}.expert{e}` of largest mean gate weight over examples."""
    mean = reads.mean(0).flatten()
    order = torch.argsort(mean, descending=True, stable=True)[:k]
    n_experts = reads.shape[-1]
    return [f"L{layers[int(i) // n_experts]}.expert{int(i) % n_experts}" for i in order]


def routing_stats(
    reads: Float[Tensor, "examples moe_layers experts"],
    load: Float[Tensor, "moe_layers experts"],
    layers: Sequence[int],
    k: int,
) -> dict[str, Any]:
    """Entropy (bits), load balance (H(load) / log2 E) and the top-k experts (module docstring)."""
    n_experts = reads.shape[-1]
    return {
        "entropy_bits": float(_entropy_bits(reads).mean()),
        "load_balance": float((_entropy_bits(load) / math.log2(n_experts)).mean()),
        "load": load.tolist(),
        "top_experts": top_experts(reads, layers, k),
    }


def _jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def expert_overlap(
    a: Float[Tensor, "examples moe_layers experts"],
    b: Float[Tensor, "examples moe_layers experts"],
    layers: Sequence[int],
    k: int,
    *,
    n_boot: int,
    seed: int,
) -> tuple[Interval, Float[Tensor, " boot"]]:
    """Jaccard of the top-k experts of two models read on the same examples, with its percentile
    bootstrap interval (examples resampled alike for both) and the replicates."""
    estimate = _jaccard(top_experts(a, layers, k), top_experts(b, layers, k))
    reps = torch.tensor(
        [
            _jaccard(top_experts(a[idx], layers, k), top_experts(b[idx], layers, k))
            for idx in bootstrap_indices(a.shape[0], n_boot, seed)
        ],
        dtype=torch.float64,
    )
    return percentile_interval(reps, estimate, 0.95), reps


def split_half_overlap(
    reads: Float[Tensor, "examples moe_layers experts"], layers: Sequence[int], k: int, *, n_boot: int, seed: int
) -> tuple[Interval, Float[Tensor, " boot"]]:
    """The null pair of routing: Jaccard of one model's top experts on the two halves of its pool
    (alternate examples), with a bootstrap interval over examples within each half."""
    first, second = reads[0::2], reads[1::2]
    n = min(first.shape[0], second.shape[0])
    return expert_overlap(first[:n], second[:n], layers, k, n_boot=n_boot, seed=seed)


def selective_experts(
    means: Mapping[str, Float[Tensor, "moe_layers experts"]], layers: Sequence[int]
) -> dict[str, list[dict[str, float | str]]]:
    """Per task, the experts whose mean gate weight at the read position on that task has a
    selectivity index >= SELECTIVE against the mean over the other tasks (name, SI, mean weight)."""
    out: dict[str, list[dict[str, float | str]]] = {}
    tasks = list(means)
    for task in tasks:
        rest = [means[t] for t in tasks if t != task]
        if not rest:
            out[task] = []
            continue
        mu, other = means[task], torch.stack(rest).mean(0)
        si = (mu - other) / (mu + other).clamp(min=1e-12)
        found = []
        for li, layer in enumerate(layers):
            for e in range(mu.shape[-1]):
                if float(si[li, e]) >= SELECTIVE and float(mu[li, e]) > 0:
                    found.append({"expert": f"L{layer}.expert{e}", "si": float(si[li, e]), "weight": float(mu[li, e])})
        out[task] = sorted(found, key=lambda x: -float(x["si"]))
    return out


def routing_claim(overlaps: Mapping[str, Mapping[str, tuple[Interval, Tensor]]]) -> dict[str, Any]:
    """The routing claim: effect 1 - mean Jaccard of the ARM's and the MDM's top experts over tasks
    (pooled bootstrap), for the main pair and every control pair. 1 - Jaccard is >= 0 for any two
    sets, so a control is not expected at 0: the null pairs (a model against itself on two halves
    of its pool) measure what sampling alone moves, the seed floors (ARM vs ARM', MDM vs MDM',
    experts matched first: `align_experts`) what training alike with another seed moves. The
    main effect "holds" only where its interval clears the far end of every control's
    (`floor_bound`, unsigned); "bound_from" names the control that sets the bound (an effect
    short of a null pair's bound is "within the null pairs' noise", of a seed floor's "within the
    seed floor"). Without a seed floor, "holds" / "reversed" say so in the verdict
    (`analyses.verdicts.unfloored`).

    overlaps: pair name ("main", "null_ar", "null_mdm", "floor_ar", "floor_mdm") -> task ->
    (Jaccard interval, replicates)."""

    def effect(per_task: Mapping[str, tuple[Interval, Tensor]]) -> Interval:
        tasks = list(per_task)
        w = [1.0 / len(tasks)] * len(tasks)
        mean = pooled([per_task[t][0].estimate for t in tasks], [per_task[t][1] for t in tasks], w)
        return Interval(1 - mean.estimate, 1 - mean.high, 1 - mean.low, mean.level)

    effects = {name: effect(per_task) for name, per_task in overlaps.items() if per_task}
    bounds = {name: floor_bound(e, 1, signed=False) or 0.0 for name, e in effects.items() if name != "main"}
    source = max(bounds, key=bounds.get) if bounds else None
    main = effects.get("main")
    missing = not any(f in effects for f in ("floor_ar", "floor_mdm"))
    read = verdict(main, 1, floor=bounds[source] if source else None)
    if read == WITHIN_FLOOR and source and source.startswith("null"):
        read = WITHIN_NULL  # the bound it misses is sampling noise, not a seed floor
    return {
        "claim": "converting the ARM changes which experts a task uses (1 - Jaccard of top experts, ARM vs MDM)",
        "effect": main,
        "verdict": unfloored(read) if missing else read,  # no seed floor: the verdict says so
        "bound": bounds.get(source) if source else None,
        "bound_from": source,
        "seed_floor": max((bounds[f] for f in ("floor_ar", "floor_mdm") if f in bounds), default=None),
        "seed_floor_missing": missing,
        "controls": {name: {"effect": e, "bound": bounds[name]} for name, e in effects.items() if name != "main"},
    }


def align_experts(
    ref: Mapping[str, Float[Tensor, "examples moe_layers experts"]],
    other: Mapping[str, Float[Tensor, "examples moe_layers experts"]],
) -> Int[Tensor, "moe_layers experts"]:
    """Per MoE layer, the relabelling of `other`'s experts that best matches `ref`'s: expert
    indices are arbitrary labels (two models trained apart share no correspondence, an MDM
    inherits its ARM's), so expert sets are compared up to a permutation. Each expert is its
    profile of mean gate weights over the tasks; the Hungarian assignment (scipy's
    linear_sum_assignment) minimises the summed squared distance between matched profiles.
    Returns perm [M, E]: `other`'s expert perm[l, e] plays `ref`'s expert e in layer l."""
    from scipy.optimize import linear_sum_assignment

    tasks = sorted(set(ref) & set(other))
    a = torch.stack([ref[t].mean(0) for t in tasks])  # [T, M, E]
    b = torch.stack([other[t].mean(0) for t in tasks])
    perms = []
    for layer in range(a.shape[1]):
        cost = torch.cdist(a[:, layer].T.double(), b[:, layer].T.double()).pow(2)  # [E ref, E other]
        _, cols = linear_sum_assignment(cost.numpy())
        perms.append(torch.as_tensor(cols, dtype=torch.long))
    return torch.stack(perms)


def relabelled(
    reads: Float[Tensor, "examples moe_layers experts"], perm: Int[Tensor, "moe_layers experts"]
) -> Float[Tensor, "examples moe_layers experts"]:
    """`reads` with expert e of layer l taken from expert perm[l, e] (`align_experts`)."""
    return torch.stack([reads[:, layer, perm[layer]] for layer in range(reads.shape[1])], 1)


Reveal = Callable[[Rendered, float, random.Random], Rendered]


def routing_trajectory(
    mdm: ProbedModel,
    items: Sequence[Rendered],
    ts: Sequence[float],
    k: int,
    reveal: Reveal,
    *,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The MDM's routing at the read position along the denoising trajectory: per t (share of the
    other answer tokens still masked), its entropy and the Jaccard of its top experts with t = 1's.
    reveal: `analyses.compare.trajectory.revealed` (an item with a share 1 - t of its other
    answer tokens decoded)."""
    layers = mdm.shape.moe_layers
    reference: list[str] | None = None
    out = []
    for t in sorted(set(ts), reverse=True):
        rng = random.Random(seed)
        shown = [reveal(it, t, rng) for it in items]
        stats = routing_stats(*routing_at_reads(mdm, shown, batch_size), layers, k)
        top = stats["top_experts"]
        reference = top if reference is None else reference
        out.append(
            {
                "t": t,
                "entropy_bits": stats["entropy_bits"],
                "load_balance": stats["load_balance"],
                "jaccard_with_t1": _jaccard(top, reference),
                "top_experts": top,
            }
        )
    return out


def compare_routing(
    models: Mapping[str, ProbedModel],
    pools: Mapping[str, Any],
    *,
    denoising: Sequence[float],
    reveal: Reveal,
    n_boot: int,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """The routing section of `analyses.compare.compare` for mixture-of-experts pairs: per task
    and model (roles "ar", "mdm" and the seed twins "ar_twin", "mdm_twin" when given) the routing
    statistics, the ARM-MDM expert overlap with its controls (experts of the MDM and of each twin
    matched to their reference first, `align_experts`), the selective experts, the MDM's routing
    along denoising, and the routing claim (module docstring)."""
    ar = models["ar"]
    layers = ar.shape.moe_layers
    k = len(layers) * max(1, ar.config.top_k)
    reads: dict[str, dict[str, Tensor]] = {}
    tasks: dict[str, Any] = {task: {} for task in pools}
    for task, pool in pools.items():
        for role, pm in models.items():
            items = pool.ar if role.startswith("ar") else pool.mdm
            r, load = routing_at_reads(pm, items, batch_size)
            reads.setdefault(role, {})[task] = r
            tasks[task][role] = routing_stats(r, load, layers, k)
    pairs = {"main": ("ar", "mdm"), "floor_ar": ("ar", "ar_twin"), "floor_mdm": ("mdm", "mdm_twin")}
    pairs = {name: p for name, p in pairs.items() if p[1] in reads}
    perms = {name: align_experts(reads[a], reads[b]) for name, (a, b) in pairs.items()}
    overlaps: dict[str, dict[str, tuple[Interval, Tensor]]] = {name: {} for name in (*pairs, "null_ar", "null_mdm")}
    for i, task in enumerate(pools):
        boot = {"n_boot": n_boot, "seed": seed + 7919 * (i + 1)}
        for name, (a, b) in pairs.items():
            matched = relabelled(reads[b][task], perms[name])
            overlaps[name][task] = expert_overlap(reads[a][task], matched, layers, k, **boot)
        overlaps["null_ar"][task] = split_half_overlap(reads["ar"][task], layers, k, **boot)
        overlaps["null_mdm"][task] = split_half_overlap(reads["mdm"][task], layers, k, **boot)
        tasks[task]["overlap"] = {name: per_task[task][0] for name, per_task in overlaps.items()}
        if len(denoising) > 1:
            tasks[task]["denoising"] = routing_trajectory(
                models["mdm"], pools[task].mdm, denoising, k, reveal, batch_size=batch_size, seed=seed
            )
    selective = {
        role: selective_experts({t: x.mean(0) for t, x in per_task.items()}, layers) for role, per_task in reads.items()
    }
    identity = torch.arange(ar.shape.n_experts)
    return {
        "moe_layers": list(layers),
        "n_experts": ar.shape.n_experts,
        "top_k": ar.config.top_k,
        "k_experts": k,
        "tasks": tasks,
        "selective": selective,
        "alignment": {
            name: {"perm": perm.tolist(), "identity_layers": int(sum(bool((p == identity).all()) for p in perm))}
            for name, perm in perms.items()
        },
        "claim": routing_claim(overlaps),
    }


# --- report -------------------------------------------------------------------------------------


def routing_rows(section: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per task: entropy and load balance per model, the ARM-MDM overlap of top experts
    with its null pairs and seed floors, the selective experts."""
    rows = []
    for task, e in section["tasks"].items():
        row = {"task": task}
        for role in ("ar", "mdm"):
            row[f"entropy {role.upper()} (bits)"] = f"{e[role]['entropy_bits']:.2f}"
            row[f"load balance {role.upper()}"] = f"{e[role]['load_balance']:.2f}"
        names = {"main": "Jaccard ARM-MDM", "null_ar": "null ARM", "null_mdm": "null MDM"}
        names.update(floor_ar="floor ARM-ARM'", floor_mdm="floor MDM-MDM'")
        for key, label in names.items():
            row[label] = format_interval(e["overlap"].get(key))
        for role in ("ar", "mdm"):
            found = section["selective"].get(role, {}).get(task, [])
            row[f"selective experts {role.upper()}"] = ", ".join(x["expert"] for x in found[:4]) or "-"
        rows.append(row)
    return rows


def routing_markdown(section: Mapping[str, Any]) -> list[str]:
    """The routing section as Markdown lines (claim, per-task table, denoising)."""
    c = section["claim"]
    floor = "missing" if c["seed_floor_missing"] else f"{c['seed_floor']:.2f}"
    bound = "-" if c["bound"] is None else f"{c['bound']:.2f} ({c['bound_from']})"
    kept = section.get("alignment", {}).get("main", {}).get("identity_layers")
    lines = [
        f"Routing ({section['n_experts']} experts, top-{section['top_k']}, MoE layers {section['moe_layers']}; "
        f"top experts K = {section['k_experts']}; experts matched across models, `align_experts`):",
        "",
        f"- {c['claim']}: **{stored_verdict(c)}** -- effect {format_interval(c['effect'])}; the bound to clear: {bound}; "
        f"seed floor: {floor}; controls (1 - Jaccard): "
        + "; ".join(f"{name} {format_interval(v['effect'])}" for name, v in c["controls"].items()),
    ]
    if kept is not None:
        lines.append(
            f"- expert labels the MDM kept from the ARM (the matching is the identity): {kept} of "
            f"{len(section['moe_layers'])} layers"
        )
    lines.append("")
    rows = routing_rows(section)
    if rows:
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
        lines.append("")
    traj = [
        f"{t}: "
        + ", ".join(f"t={p['t']:.2f} H={p['entropy_bits']:.2f} J={p['jaccard_with_t1']:.2f}" for p in e["denoising"])
        for t, e in section["tasks"].items()
        if e.get("denoising")
    ]
    if traj:
        lines += [
            "MDM routing along denoising (entropy H in bits, J = Jaccard of top experts with t = 1):",
            "",
            *traj,
            "",
        ]
    return lines


def routing_figure(section: Mapping[str, Any]) -> Any:
    """Routing entropy per task (ARM, MDM) and the ARM-MDM overlap of top experts with the seed floor."""
    from plotly.subplots import make_subplots

    tasks = list(section["tasks"])
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("routing entropy at the read position (bits)", "Jaccard of top experts")
    )
    for role in ("ar", "mdm"):
        fig.add_bar(
            x=tasks, y=[section["tasks"][t][role]["entropy_bits"] for t in tasks], name=role.upper(), row=1, col=1
        )
    for key, label in (("main", "ARM vs MDM"), ("floor_ar", "ARM vs ARM'"), ("floor_mdm", "MDM vs MDM'")):
        vals = [section["tasks"][t]["overlap"].get(key) for t in tasks]
        if not any(vals):
            continue
        est = [v["estimate"] if v else None for v in vals]
        err = [v["high"] - v["estimate"] if v else 0 for v in vals]
        minus = [v["estimate"] - v["low"] if v else 0 for v in vals]
        fig.add_bar(
            x=tasks, y=est, name=label, row=1, col=2, error_y={"type": "data", "array": err, "arrayminus": minus}
        )
    fig.update_layout(barmode="group", height=380)
    return fig
