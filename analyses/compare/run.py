"""ARM vs MDM, all analyses on one common-correct pool, and the reference study's claims tested.

`compare(ar, mdm, options)` takes an autoregressive model and an MDM of the same architecture
(usually its conversion) and, per task:

1. builds the *common-correct pool*: held-out examples that render aligned in both reading modes
   (AR after the prompt; MDM answer masked in place, read where its shift says) and that both
   models answer correctly (clean logit difference > 0), at most `pool_size` of them;
2. circuits: EAP-IG (on inputs, m = `steps`) edge scores per example for both models, the
   Jaccard overlap of their top-K edges with a bootstrap interval (examples resampled, the same
   resample for both models), the Jaccard curve over K, node importance s(v), and (optionally)
   each model's faithfulness curve;
3. depth: the layer distribution of the top-K nodes (node score = sum of its outgoing EAP-IG
   edges, or exact node patching), the paired MDM - AR difference of early-layer mass and centre
   of mass (`analyses.depth.compare_depth`), the logit lens by layer, and (optionally) targeted
   ablation of the early top-K nodes against random and middle/late controls;
4. units: `analyses.neurons` profiles of MLP neurons and heads over all tasks, compared with
   bootstrap intervals, and (optionally) a causal check per task;
5. beyond the reference study, for the MDM: attribution along the denoising trajectory
   (`denoising`): the first answer token is read while a growing share of the *other* answer
   tokens is already revealed (t = share of the answer still masked, 1 -> 0), and the circuit at
   each t is compared with the one at t = 1 and with the ARM's.

Claims of the reference study (RESEARCH.md section 1), each with an effect size and a 95%
percentile bootstrap interval (tasks resampled independently, examples within a task):

(a) edge overlap is higher on local tasks than on global ones:
    mean Jaccard(local) - mean Jaccard(global) > 0;
(b) the MDM puts more of its top-K node mass in the first third of the layers than the ARM on
    global tasks: mean over global tasks of early mass (MDM - AR) > 0;
(c) MDM units are less specialised: median selectivity index over MLP neurons (MDM - AR) < 0.

A claim "holds" when the interval excludes 0 in the claimed direction, is "reversed" when it
excludes 0 the other way, and is "inconclusive" otherwise (or "untested" without the tasks).

`track(ar, snapshots, ...)` follows a conversion run's snapshots (`ar2mdm convert
--snapshot-every N`): Jaccard with the ARM and early-layer mass against the training step.
`write_report(result, out)` writes report.json and a self-contained report.html.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from torch import Tensor
from tqdm.auto import tqdm

from analyses.attribution import methods_for
from analyses.circuits import attribute, faithfulness_curve
from analyses.compare.claims import claims, default_k_edges, default_k_nodes, node_examples
from analyses.compare.pool import MIN_POOL, Pool, check_pair, common_pool, task_examples
from analyses.compare.report import CompareResult, json_safe
from analyses.compare.trajectory import denoising_trajectory
from analyses.depth import compare_depth, lens_profile, mean_scores, node_patching_scores, targeted_ablation
from analyses.graph import Graph, jaccard_curve, node_importance
from analyses.neurons import causal_check, compare_profiles, profile_units
from analyses.statistics import Interval, jaccard_bootstrap
from common.errors import UserError
from probe.model import ProbedModel
from tasks import TASKS, Example, task_names

NodeScores = Literal["eap-ig", "patching"]


@dataclass
class CompareOptions:
    """What `compare` runs. pool_size: at most this many common-correct examples per task (drawn:
    examples generated per task before filtering, default 2 x pool_size). k_edges: K of the
    Jaccard overlap (default min(1000, edges // 10), at least 10). k_nodes: top-K nodes for the
    layer distribution and the targeted ablation (default a fifth of the heads and MLPs, >= 3).
    method: the edge attribution method of the circuits (a name in
    `analyses.attribution.ATTRIBUTIONS` that scores edges; default EAP-IG on inputs, as the
    reference study). steps: its interpolation points m. node_scores: "eap-ig" (sum of a node's
    outgoing edge scores under `method`; scales to any model) or "patching" (exact node patching,
    one pass per node).
    faithfulness / ablations / neurons / causal: optional parts. denoising: values of t for the
    MDM's denoising-trajectory analysis (empty: off). common_correct: False keeps every aligned
    example, solved or not (past the reference study's successful-examples-only limit; also the
    fallback for models too weak to share a pool)."""

    tasks: tuple[str, ...] = field(default_factory=task_names)
    pool_size: int = 500
    draw: int | None = None
    k_edges: int | None = None
    k_nodes: int | None = None
    method: str = "eap-ig-inputs"
    steps: int = 5
    node_scores: NodeScores = "eap-ig"
    batch_size: int = 16
    n_boot: int = 1000
    n_random: int = 5
    seed: int = 0
    faithfulness: bool = True
    ablations: bool = True
    neurons: bool = True
    causal: bool = True
    denoising: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
    common_correct: bool = True

    def checked(self) -> CompareOptions:
        tasks = tuple(dict.fromkeys(t.strip() for t in self.tasks if t.strip()))
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            raise UserError(f"unknown or no tasks {unknown or list(self.tasks)}; choose from {', '.join(TASKS)}.")
        for name in ("pool_size", "steps", "batch_size", "n_boot", "n_random"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("draw", "k_edges", "k_nodes"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise UserError(f"{name} must be >= 1 (or unset for the default), got {value}.")
        if self.method not in methods_for("edge"):
            raise UserError(
                f"method {self.method!r} is no edge attribution method; choose one of {', '.join(methods_for('edge'))}."
            )
        if self.node_scores not in ("eap-ig", "patching"):
            raise UserError(f"node_scores must be 'eap-ig' or 'patching', got {self.node_scores!r}.")
        if any(not 0.0 <= t <= 1.0 for t in self.denoising):
            raise UserError(f"denoising values are mask shares t in [0, 1], got {list(self.denoising)}.")
        denoising = tuple(sorted(set(self.denoising), reverse=True))
        if denoising and denoising[0] != 1.0:
            denoising = (1.0, *denoising)  # t = 1 is the reference circuit
        return replace(self, tasks=tasks, denoising=denoising)


# --- models and pools -------------------------------------------------------------------------------


# --- statistics -------------------------------------------------------------------------------------


# --- denoising trajectory ---------------------------------------------------------------------------


# --- the comparison ---------------------------------------------------------------------------------


def compare(
    ar: ProbedModel,
    mdm: ProbedModel,
    options: CompareOptions | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    examples: Mapping[str, Sequence[Example]] | None = None,
    log: Callable[[str], None] = print,
) -> CompareResult:
    """Run every analysis on both models over each task's common-correct pool; see the module
    docstring. labels: names of the two models in the report (default their sources).
    examples: candidate examples per task name (default `task_examples`: held-out organism sets
    or the built-in tasks); task names must be registered tasks."""
    opts = (options or CompareOptions()).checked()
    warnings = check_pair(ar, mdm)
    for warning in warnings:
        log(f"warning: {warning}")
    t0 = time.perf_counter()
    graph0 = Graph(ar.shape)
    k_edges = min(opts.k_edges or default_k_edges(len(graph0.edges)), len(graph0.edges))
    n_nodes = len(graph0.senders) - 1
    k_nodes = min(opts.k_nodes or default_k_nodes(n_nodes), n_nodes)
    names = dict(labels or {"ar": str(getattr(ar.meta, "source", "ar")), "mdm": "mdm"})
    data: dict[str, Any] = {
        "models": names,
        "warnings": warnings,
        "options": {**asdict(opts), "k_edges": k_edges, "k_nodes": k_nodes},
        "shape": {
            "n_layers": ar.config.n_layers,
            "n_heads": ar.shape.n_heads,
            "edges": len(graph0.edges),
            "nodes": n_nodes,
        },
        "pools": {},
        "tasks": {},
        "units": {},
        "denoising": {},
        "seconds": {},
    }
    result = CompareResult(data)
    models = {"ar": ar, "mdm": mdm}
    pools = _pools(ar, mdm, opts, examples, data, log)
    data["seconds"]["pools"] = time.perf_counter() - t0
    jaccard_reps: dict[str, Tensor] = {}
    depth_reps: dict[str, Tensor] = {}
    for i, (task, pool) in enumerate(tqdm(pools.items(), desc="circuits and depth", unit="task")):
        ts = time.perf_counter()
        boot = {"n_boot": opts.n_boot, "seed": opts.seed + 1009 * i}  # independent resamples per task
        entry, result.graphs[task], jaccard_reps[task], depth_reps[task] = _task(
            models, pool, opts, names, k_edges, k_nodes, boot
        )
        data["tasks"][task] = entry
        data["seconds"][f"task:{task}"] = time.perf_counter() - ts
        jac, cmp = entry["circuits"]["jaccard"], entry["depth"]["compare"]
        log(
            f"  {task}: n={len(pool)}  Jaccard@{k_edges} {jac.estimate:.2f} [{jac.low:.2f}, {jac.high:.2f}]  "
            f"early mass AR {cmp['a']['early_mass']:.2f} MDM {cmp['b']['early_mass']:.2f}  ({time.perf_counter() - ts:.0f}s)"
        )
    select_reps = _units(models, pools, opts, data)
    if len(opts.denoising) > 1:
        ts = time.perf_counter()
        data["denoising"] = denoising_trajectory(
            mdm,
            pools,
            result.graphs,
            opts.denoising,
            k_edges=k_edges,
            k_nodes=k_nodes,
            steps=opts.steps,
            batch_size=opts.batch_size,
            seed=opts.seed,
            method=opts.method,
        )
        data["seconds"]["denoising"] = time.perf_counter() - ts
    data["claims"] = claims(pools, jaccard_reps, depth_reps, data, select_reps)
    data["seconds"]["total"] = time.perf_counter() - t0
    result.data = json_safe(data)
    return result


def _pools(
    ar: ProbedModel,
    mdm: ProbedModel,
    opts: CompareOptions,
    examples: Mapping[str, Sequence[Example]] | None,
    data: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Pool]:
    """The common-correct pool of every task with at least MIN_POOL examples (stats in data["pools"])."""
    log("pools: rendering and scoring the candidate examples")
    if examples is None:
        examples = task_examples(mdm, opts.tasks, opts.draw or 2 * opts.pool_size, opts.seed)
    missing = [t for t in opts.tasks if t not in examples]
    if missing:
        raise UserError(f"no examples given for task(s) {missing}.")
    pools: dict[str, Pool] = {}
    for task in opts.tasks:
        pool = common_pool(
            ar,
            mdm,
            task,
            examples[task],
            opts.pool_size,
            batch_size=max(opts.batch_size, 32),
            require_correct=opts.common_correct,
        )
        data["pools"][task] = pool.stats
        log(f"  {task}: {pool.stats}")
        if len(pool) >= MIN_POOL:
            pools[task] = pool
    if not pools:
        raise UserError(
            f"no task has {MIN_POOL} or more examples that both models answer correctly "
            f"({ {t: s['pool'] for t, s in data['pools'].items()} }); train the models longer, draw more (--draw), "
            "or analyse every aligned example (--all-examples)."
        )
    return pools


def _task(
    models: Mapping[str, ProbedModel],
    pool: Pool,
    opts: CompareOptions,
    names: Mapping[str, str],
    k_edges: int,
    k_nodes: int,
    boot: Mapping[str, int],
) -> tuple[dict[str, Any], dict[str, Graph], Tensor, Tensor]:
    """One task's circuits and depth for both models: (report entry, graphs, Jaccard replicates,
    early-mass-difference replicates)."""
    task = pool.task
    items = {"ar": pool.ar, "mdm": pool.mdm}
    graphs = {
        m: attribute(
            pm,
            items[m],
            method=opts.method,
            steps=opts.steps,
            batch_size=opts.batch_size,
            per_example=True,
            meta={"task": task, "model": names[m]},
        )
        for m, pm in models.items()
    }
    interval, jaccard_reps = jaccard_bootstrap(graphs["ar"].examples, graphs["mdm"].examples, k_edges, **boot)
    ks, values = jaccard_curve(graphs["ar"], graphs["mdm"])
    entry: dict[str, Any] = {
        "n": len(pool),
        "circuits": {
            "jaccard": interval,
            "jaccard_curve": {"k": ks, "jaccard": values},
            **{
                m: {
                    "clean_ld": g.meta["clean_metric"],
                    "corrupt_ld": g.meta["corrupt_metric"],
                    "top_edges": [(e, g.score(e)) for e in g.top(10)],
                    "importance": node_importance(g, k_edges),
                }
                for m, g in graphs.items()
            },
        },
    }
    if opts.faithfulness:
        for m, pm in models.items():
            entry["circuits"][m]["faithfulness"] = faithfulness_curve(
                pm, items[m], graphs[m], batch_size=opts.batch_size
            ).to_dict()
    big = max(opts.batch_size, 32)
    if opts.node_scores == "patching":
        per = {m: node_patching_scores(pm, items[m], batch_size=big) for m, pm in models.items()}
    else:
        per = {m: node_examples(graphs[m]) for m in models}
    cmp = compare_depth(per["ar"], per["mdm"], models["ar"].config.n_layers, k_nodes, task=task, **boot)
    entry["depth"] = {
        "compare": cmp.to_dict(),
        **{
            m: {"lens": lens_profile(pm, items[m], batch_size=big).summary(), "scores": mean_scores(per[m])}
            for m, pm in models.items()
        },
    }
    if opts.ablations:
        for m, pm in models.items():
            try:
                ta = targeted_ablation(
                    pm,
                    items[m],
                    mean_scores(per[m]),
                    k=k_nodes,
                    method="zero",
                    n_random=opts.n_random,
                    task=task,
                    batch_size=big,
                    **boot,
                )
                entry["depth"][m]["ablation"] = ta.to_dict()
            except UserError as err:  # no early node among the top-K: say so
                entry["depth"][m]["ablation"] = {"error": str(err)}
    return entry, graphs, jaccard_reps, cmp.samples["early_mass_diff"]


def _units(
    models: Mapping[str, ProbedModel], pools: Mapping[str, Pool], opts: CompareOptions, data: dict[str, Any]
) -> Interval | None:
    """Neuron and head profiles of both models over all tasks (data["units"]); returns the
    interval of the median neuron selectivity index difference (claim c), or None."""
    if not opts.neurons:
        return None
    if len(pools) < 2:
        data["units"]["skipped"] = "unit specialisation needs at least two tasks with a pool"
        return None
    ts = time.perf_counter()
    big = max(opts.batch_size, 32)
    boot = {"n_boot": opts.n_boot, "seed": opts.seed + 1009 * (len(pools) - 1)}  # as the last task's
    for kind in ("neurons", "heads"):
        tasks = {m: {t: (p.ar if m == "ar" else p.mdm) for t, p in pools.items()} for m in models}
        profiles = {m: profile_units(pm, tasks[m], kind=kind, keep=True, batch_size=big) for m, pm in models.items()}
        block: dict[str, Any] = {
            "compare": compare_profiles(profiles["ar"], profiles["mdm"], **boot),
            **{m: {"summary": p.summary()} for m, p in profiles.items()},
        }
        if opts.causal:
            n_units = 10 if kind == "neurons" else max(1, models["ar"].shape.n_heads // 2)
            for m, pm in models.items():
                block[m]["checks"] = {
                    t: causal_check(
                        pm,
                        profiles[m],
                        tasks[m],
                        t,
                        n_units=min(n_units, len(profiles[m].units)),
                        by="selectivity",
                        n_random=opts.n_random,
                        off_target=False,
                        batch_size=big,
                        **boot,
                    ).to_dict()
                    for t in tasks[m]
                }
        data["units"][kind] = block
    data["seconds"]["units"] = time.perf_counter() - ts
    return data["units"]["neurons"]["compare"]["median_selectivity_index"]["diff"]
