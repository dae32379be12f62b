"""How a mechanism moves: along the MDM's denoising trajectory, and across a conversion's snapshots.

`revealed` gives the state of a denoising trajectory where the first answer token is still to be
decided and a share 1 - t of the other answer tokens is already decoded; `compare` attributes
along t: 1 -> 0. `track(ar, snapshots_of(run))` follows a conversion run's snapshots
(`ar2mdm convert --snapshot-every N`): accuracy on the ARM's correct examples, Jaccard with the
ARM and early-layer mass against the training step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from analyses.circuits import attribute
from analyses.compare.claims import default_k_edges, default_k_nodes
from analyses.compare.pool import MIN_POOL, Pool, check_pair, rendered_for, task_examples
from analyses.compare.report import json_safe
from analyses.depth import layer_distribution
from analyses.graph import Graph, jaccard
from analyses.patching import baseline_logit_diffs
from ar2mdm.common.errors import CheckpointError, TaskError, UserError
from ar2mdm.common.metadata import META_FILE, ModelMeta
from ar2mdm.tasks.base import Rendered
from probe.model import ProbedModel


def revealed(item: Rendered, t: float, rng: random.Random) -> Rendered:
    """`item` (MDM reading) with a share 1 - t of its answer tokens other than the first already
    decoded (the reference answer written in, the same in clean and corrupted input): the state
    of a denoising trajectory where the first answer token is still to be decided."""
    if item.mode != "mdm":
        raise UserError("the denoising analysis reads MDM renderings (answer masked in place).")
    others = item.answer_positions[1:].tolist()
    n_show = round((1.0 - t) * len(others))
    show = rng.sample(range(len(others)), n_show)
    if not show:
        return item
    ids, cids = item.input_ids.clone(), item.corrupted_ids.clone()
    for j in show:
        ids[others[j]] = item.answer_ids[j + 1]
        cids[others[j]] = item.answer_ids[j + 1]
    return replace(item, input_ids=ids, corrupted_ids=cids)


def denoising_trajectory(
    mdm: ProbedModel,
    pools: Mapping[str, Pool],
    graphs: Mapping[str, Mapping[str, Graph]],
    ts: Sequence[float],
    *,
    k_edges: int,
    k_nodes: int,
    steps: int,
    batch_size: int,
    seed: int,
    method: str = "eap-ig-inputs",
) -> dict[str, Any]:
    """Per task: the MDM's circuit (attribution `method`, as the pool's own) while a share 1 - t of the answer (all but the first
    token) is already decoded, for each t in `ts` (1 first: the pool's own circuit, `graphs`),
    compared with the t = 1 circuit and the ARM's (Jaccard of the top `k_edges`), with its
    early-layer mass. Tasks with single-token answers are skipped (nothing else to reveal)."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for task, pool in pools.items():
        longest = max(len(r.answer_positions) for r in pool.mdm)
        if longest < 2:
            out[task] = {"skipped": "single-token answers: nothing else to reveal"}
            continue
        rows = []
        reference = graphs[task]["mdm"]
        for t in ts:
            items = [revealed(r, t, rng) for r in pool.mdm]
            g = reference if t == 1.0 else attribute(mdm, items, method=method, steps=steps, batch_size=batch_size)
            dist = layer_distribution(g.node_scores, mdm.config.n_layers, k_nodes)
            rows.append(
                {
                    "t": t,
                    "clean_ld": g.meta["clean_metric"],
                    "corrupt_ld": g.meta["corrupt_metric"],
                    "jaccard_t1": jaccard(g, reference, k_edges),
                    "jaccard_ar": jaccard(g, graphs[task]["ar"], k_edges),
                    "early_mass": dist.early_mass,
                    "centre": dist.centre,
                }
            )
        out[task] = {"answer_tokens": longest, "points": rows}
    return out


def snapshots_of(run: str | Path, *, final: bool = True) -> list[tuple[int, Path]]:
    """(step, folder) of a conversion run's snapshots (`ar2mdm convert --snapshot-every N`), by
    step; with `final`, the run's own finished MDM last (at its step count).

    A snapshot's ar2mdm.json is written last: a snapshot folder without a readable one (its write
    was cut short and the run never came back past that step) is a UserError naming it."""
    root = Path(run) / "snapshots"
    found = sorted(
        (int(p.name.split("-")[1]), p) for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()
    )
    if not found:
        raise UserError(f"no snapshots under {root}; convert with --snapshot-every N to write them.")
    for _, folder in found:
        try:
            ModelMeta.load(folder)
        except CheckpointError as err:
            raise UserError(
                f"{folder} is not a complete snapshot: {err} Its write was cut short (or the folder was changed): "
                f"if the conversion is unfinished, --resume writes it again; otherwise delete {folder} to track "
                "without it."
            ) from None
    if final and (Path(run) / META_FILE).is_file():
        steps = int(ModelMeta.load(run).extra.get("steps", found[-1][0] + 1))
        if steps > found[-1][0]:
            found.append((steps, Path(run)))
    return found


def track(
    ar: ProbedModel,
    snapshots: Sequence[tuple[int, str | Path]],
    *,
    tasks: Sequence[str] = ("ioi", "countdown"),
    pool_size: int = 100,
    steps: int = 5,
    batch_size: int = 16,
    seed: int = 0,
    method: str = "eap-ig-inputs",
    load: Callable[[str | Path], ProbedModel] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """When does the mechanism shift? For each snapshot of a conversion run: the MDM's accuracy
    (clean LD > 0) on examples the ARM solves, the Jaccard of its top-K EAP-IG edges with the
    ARM's, and the early-layer mass of its top-K nodes. The pool is fixed by the ARM (an early
    snapshot solves little), so every step is measured on the same examples. method: the edge
    attribution method (`analyses.attribution.ATTRIBUTIONS`)."""
    load = load or (lambda p: ProbedModel.from_checkpoint(p, backend="torch"))
    if not snapshots:
        raise UserError("track needs at least one snapshot.")
    first = load(snapshots[0][1])
    check_pair(ar, first)
    graph0 = Graph(ar.shape)
    k_edges = default_k_edges(len(graph0.edges))
    k_nodes = default_k_nodes(len(graph0.senders) - 1)
    examples = task_examples(first, tasks, 2 * pool_size, seed)
    out: dict[str, Any] = {"k_edges": k_edges, "k_nodes": k_nodes, "tasks": {}}
    pools, ar_graphs = {}, {}
    for task in tasks:
        rows = []
        for ex in examples[task]:
            try:
                rows.append((rendered_for(ar, ex), ex))
            except TaskError:
                continue
        if not rows:
            continue
        ld = baseline_logit_diffs(ar, [r for r, _ in rows])[0]
        keep = [rows[i] for i in (ld > 0).nonzero().squeeze(1)[:pool_size].tolist()]
        if len(keep) < MIN_POOL:
            continue
        pools[task] = keep
        ar_graphs[task] = attribute(ar, [r for r, _ in keep], method=method, steps=steps, batch_size=batch_size)
        ar_dist = layer_distribution(ar_graphs[task].node_scores, ar.config.n_layers, k_nodes)
        out["tasks"][task] = {"n": len(keep), "ar_early_mass": ar_dist.early_mass, "points": []}
    for step, path in tqdm(snapshots, desc="snapshots", unit="ckpt"):
        pm = first if path == snapshots[0][1] else load(path)
        for task, keep in pools.items():
            items = []
            for _, ex in keep:
                try:
                    items.append(rendered_for(pm, ex))
                except TaskError:
                    continue
            g = attribute(pm, items, method=method, steps=steps, batch_size=batch_size)
            ld = baseline_logit_diffs(pm, items)[0]
            dist = layer_distribution(g.node_scores, pm.config.n_layers, k_nodes)
            point = {
                "step": step,
                "accuracy": float((ld > 0).float().mean()),
                "clean_ld": float(ld.mean()),
                "jaccard_ar": jaccard(g, ar_graphs[task], k_edges),
                "early_mass": dist.early_mass,
                "centre": dist.centre,
            }
            out["tasks"][task]["points"].append(point)
            log(f"  step {step} {task}: {point}")
    return json_safe(out)
