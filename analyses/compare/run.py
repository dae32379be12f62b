"""ARM vs MDM, all analyses on one common-correct pool, and the reference study's claims tested.

`compare(ar, mdm, options)` takes an autoregressive model and an MDM of the same architecture
(usually its conversion) and, per task:

1. builds the *common-correct pool*: held-out examples that render aligned in both reading modes
   (AR after the prompt; MDM answer masked in place, read where its shift says) and that both
   models answer correctly, at most `pool_size` of them. "Correctly" is `pool_criterion`: "ld"
   (default; clean logit difference answer - counterfactual > 0, a forced choice) or "top1" (the
   answer is the model's most likely token); both accuracies are reported either way;
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
5. mixtures of experts (`analyses.compare.routing`): per task and model, routing entropy, load
   balance, top and selective experts, the ARM-MDM expert overlap against the null pair and the
   seed floor, the MDM's routing along denoising, and the routing claim;
6. beyond the reference study, for the MDM: attribution along the denoising trajectory
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

A claim "holds" when the interval excludes 0 in the claimed direction (and clears the seed
floor), is "reversed" when it excludes 0 the other way, and is "inconclusive" otherwise (or
"untested" without the tasks); with no seed floor measured, "holds" and "reversed" say so in the
verdict itself (`analyses.verdicts`).

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
from analyses.compare.controls import CONTROL_PAIRS, PairStats, check_twins, pair_stats, with_twins
from analyses.compare.methods import mark, method_dependence
from analyses.compare.pool import (
    MIN_POOL,
    Pool,
    PoolCriterion,
    check_criterion,
    check_pair,
    common_pool,
    criterion_label,
    task_examples,
)
from analyses.compare.report import CompareResult, json_safe
from analyses.compare.routing import compare_routing
from analyses.compare.trajectory import denoising_trajectory, revealed
from analyses.depth import compare_depth, lens_profile, mean_scores, node_patching_scores, targeted_ablation
from analyses.graph import Graph, check_top_k, jaccard_curve, node_importance
from analyses.neurons import causal_check, compare_profiles, profile_units
from analyses.statistics import Interval, jaccard_bootstrap
from ar2mdm.common.errors import UserError
from ar2mdm.tasks import TASKS, Example, task_names
from probe.model import ProbedModel

NodeScores = Literal["eap-ig", "patching"]


@dataclass
class CompareOptions:
    """What `compare` runs. pool_size: at most this many common-correct examples per task (drawn:
    examples generated per task before filtering, default 2 x pool_size). k_edges: K of the
    Jaccard overlap (default min(1000, edges // 10), at least 10; at most the graph's edges).
    k_nodes: top-K nodes for the layer distribution and the targeted ablation (default a fifth
    of the heads and MLPs, >= 3; at most their number). Both are checked against the models'
    graph by `compare` (`top_ks`) before anything is scored.
    method: the edge attribution method of the circuits (a name in
    `analyses.attribution.ATTRIBUTIONS` that scores edges; default EAP-IG on inputs, as the
    reference study). steps: its interpolation points m. node_scores: "eap-ig" (sum of a node's
    outgoing edge scores under `method`; scales to any model) or "patching" (exact node patching,
    one pass per node).
    faithfulness / ablations / neurons / causal: optional parts. denoising: values of t for the
    MDM's denoising-trajectory analysis (empty: off). common_correct: False keeps every aligned
    example, solved or not (past the reference study's successful-examples-only limit; also the
    fallback for models too weak to share a pool). pool_criterion: what "correct" means for the
    pool (`analyses.compare.pool.CRITERIA`): "ld" (logit difference answer - counterfactual > 0,
    a forced choice; the default, as before) or "top1" (the answer is the model's top token).
    null_pair: attribute each model a second time and report the pair "model vs itself" beside
    every claim (`analyses.compare.controls`)."""

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
    pool_criterion: PoolCriterion = "ld"
    null_pair: bool = True

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
        check_criterion(self.pool_criterion)
        if self.node_scores not in ("eap-ig", "patching"):
            raise UserError(f"node_scores must be 'eap-ig' or 'patching', got {self.node_scores!r}.")
        if any(not 0.0 <= t <= 1.0 for t in self.denoising):
            raise UserError(f"denoising values are mask shares t in [0, 1], got {list(self.denoising)}.")
        denoising = tuple(sorted(set(self.denoising), reverse=True))
        if denoising and denoising[0] != 1.0:
            denoising = (1.0, *denoising)  # t = 1 is the reference circuit
        return replace(self, tasks=tasks, denoising=denoising)


def top_ks(opts: CompareOptions, graph: Graph) -> tuple[int, int]:
    """(K edges, K nodes) of a comparison on `graph` (the ARM's): the options' values, checked
    against the graph's size (`check_top_k`: at most its edges, and its heads + MLPs),
    or the defaults (`default_k_edges`, `default_k_nodes`). Raises UserError for a K above the
    graph's size, saying the largest allowed value."""
    n_edges, n_nodes = len(graph.edges), len(graph.senders) - 1
    if opts.k_edges is None:
        k_edges = default_k_edges(n_edges)
    else:
        k_edges = check_top_k(opts.k_edges, n_edges, option="k_edges (--k-edges)")
    if opts.k_nodes is None:
        k_nodes = default_k_nodes(n_nodes)
    else:
        k_nodes = check_top_k(opts.k_nodes, n_nodes, what="nodes (heads and MLPs)", option="k_nodes (--k-nodes)")
    return k_edges, k_nodes


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
    twins: Mapping[str, ProbedModel] | None = None,
    log: Callable[[str], None] = print,
) -> CompareResult:
    """Run every analysis on both models over each task's common-correct pool; see the module
    docstring. labels: names of the two models in the report (default their sources).
    examples: candidate examples per task name (default `task_examples`: held-out organism sets
    or the built-in tasks); task names must be registered tasks. twins: seed twins for the
    seed floor, {"ar": ARM', "mdm": MDM'} (either optional; `analyses.compare.controls`); the
    pool then also requires the twins to answer correctly.
    Raises CheckpointError for a pair (or twin) that cannot be compared, UserError for bad
    options (a K above the graph's edges or nodes among them: `top_ks`, checked before any
    example is scored) or when no task has a pool of MIN_POOL examples."""
    opts = (options or CompareOptions()).checked()
    twins = dict(twins or {})
    warnings = check_pair(ar, mdm) + check_twins(ar, mdm, twins)
    for warning in warnings:
        log(f"warning: {warning}")
    t0 = time.perf_counter()
    graph0 = Graph(ar.shape)
    k_edges, k_nodes = top_ks(opts, graph0)
    n_nodes = len(graph0.senders) - 1
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
    data["controls"] = {
        "null_pair": opts.null_pair,
        "seed_twins": {r: names.get(f"{r}_twin", str(getattr(m.meta, "source", r))) for r, m in twins.items()},
    }
    result = CompareResult(data)
    models = {"ar": ar, "mdm": mdm, **{f"{r}_twin": m for r, m in twins.items()}}
    data["hub"] = {  # the hub repository and commit of each model loaded by hub id (ar2mdm.common.hub)
        role: {"repo_id": m.meta.repo_id, "revision": m.meta.revision}
        for role, m in models.items()
        if m.meta is not None and getattr(m.meta, "repo_id", "")
    }
    pools = _pools(ar, mdm, opts, examples, data, log, twins)
    data["seconds"]["pools"] = time.perf_counter() - t0
    pairs: dict[str, dict[str, PairStats]] = {}
    for i, (task, pool) in enumerate(tqdm(pools.items(), desc="circuits and depth", unit="task")):
        ts = time.perf_counter()
        boot = {"n_boot": opts.n_boot, "seed": opts.seed + 1009 * i}  # independent resamples per task
        entry, result.graphs[task], task_pairs = _task(models, pool, opts, names, k_edges, k_nodes, boot)
        for name, stats in task_pairs.items():
            pairs.setdefault(name, {})[task] = stats
        data["tasks"][task] = entry
        data["seconds"][f"task:{task}"] = time.perf_counter() - ts
        jac, cmp = entry["circuits"]["jaccard"], entry["depth"]["compare"]
        log(
            f"  {task}: n={len(pool)}  Jaccard@{k_edges} {jac.estimate:.2f} [{jac.low:.2f}, {jac.high:.2f}]  "
            f"early mass AR {cmp['a']['early_mass']:.2f} MDM {cmp['b']['early_mass']:.2f}  ({time.perf_counter() - ts:.0f}s)"
        )
    selectivity = _units(models, pools, opts, data)
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
    if ar.shape.moe_layers and ar.shape.moe_layers == mdm.shape.moe_layers:  # mixtures of experts: routing
        ts = time.perf_counter()
        data["routing"] = compare_routing(
            models,
            pools,
            denoising=opts.denoising,
            reveal=revealed,
            n_boot=opts.n_boot,
            seed=opts.seed,
            batch_size=opts.batch_size,
        )
        data["seconds"]["routing"] = time.perf_counter() - ts
        claim = data["routing"]["claim"]
        log(f"  routing: {claim['claim']}: {claim['verdict']}")
    neurons = data["units"].get("neurons", {}).get("compare", {})
    supporting = {"median_entropy": neurons["median_entropy"]["diff"]} if "median_entropy" in neurons else {}
    data["claims"] = claims(list(pools), pairs, selectivity, supporting)
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
    twins: Mapping[str, ProbedModel],
) -> dict[str, Pool]:
    """The common-correct pool of every task with at least MIN_POOL examples (stats in
    data["pools"]); with seed twins, restricted to the examples they answer correctly too."""
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
            criterion=opts.pool_criterion,
        )
        pool = with_twins(
            pool,
            twins,
            batch_size=max(opts.batch_size, 32),
            require_correct=opts.common_correct,
            criterion=opts.pool_criterion,
        )
        data["pools"][task] = pool.stats
        log(f"  {task}: {pool.stats}")
        if len(pool) >= MIN_POOL:
            pools[task] = pool
    if not pools:
        raise UserError(
            f"no task has {MIN_POOL} or more examples that both models answer correctly "
            f"({criterion_label(opts.pool_criterion)}: { {t: s['pool'] for t, s in data['pools'].items()} }); "
            "train the models longer, draw more (--draw), "
            + (
                "judge correctness by the logit difference (--pool-criterion ld), "
                if opts.pool_criterion != "ld"
                else ""
            )
            + "or analyse every aligned example (--all-examples)."
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
) -> tuple[dict[str, Any], dict[str, Graph], dict[str, PairStats]]:
    """One task's circuits and depth for the pair (and its controls): (report entry, graphs by
    role, pair name -> PairStats for "main" and each control pair)."""
    task = pool.task
    items = {role: pool.ar if role.startswith("ar") else pool.mdm for role in models}

    def circuits(role: str, pm: ProbedModel) -> Graph:
        meta = {"task": task, "model": names.get(role, role)}
        return attribute(
            pm,
            items[role],
            method=opts.method,
            steps=opts.steps,
            batch_size=opts.batch_size,
            per_example=True,
            meta=meta,
        )

    graphs = {role: circuits(role, pm) for role, pm in models.items()}
    reruns = {f"{m}_rerun": circuits(m, models[m]) for m in ("ar", "mdm")} if opts.null_pair else {}
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
        for m in ("ar", "mdm"):
            entry["circuits"][m]["faithfulness"] = faithfulness_curve(
                models[m], items[m], graphs[m], batch_size=opts.batch_size
            ).to_dict()
    big = max(opts.batch_size, 32)
    if opts.node_scores == "patching":
        per = {m: node_patching_scores(pm, items[m], batch_size=big) for m, pm in models.items()}
        per.update({r: per[r.removesuffix("_rerun")] for r in reruns})  # patching is exact: no rerun needed
    else:
        per = {m: node_examples(g) for m, g in {**graphs, **reruns}.items()}
    n_layers = models["ar"].config.n_layers
    cmp = compare_depth(per["ar"], per["mdm"], n_layers, k_nodes, task=task, **boot)
    entry["depth"] = {
        "compare": cmp.to_dict(),
        **{
            m: {"lens": lens_profile(models[m], items[m], batch_size=big).summary(), "scores": mean_scores(per[m])}
            for m in ("ar", "mdm")
        },
    }
    for role in models.keys() - {"ar", "mdm"}:
        entry["depth"][role] = {"scores": mean_scores(per[role])}
    if opts.ablations:
        for m in ("ar", "mdm"):
            entry["depth"][m]["ablation"] = _ablation(models[m], items[m], per[m], opts, task, k_nodes, boot)
    pairs = {"main": PairStats(interval, jaccard_reps, cmp.early_mass_diff, cmp.samples["early_mass_diff"])}
    all_graphs = {**graphs, **reruns}
    for name, (first, second) in CONTROL_PAIRS.items():
        if first in all_graphs and second in all_graphs:
            pairs[name] = pair_stats(
                all_graphs[first],
                all_graphs[second],
                per[first],
                per[second],
                n_layers,
                k_edges,
                k_nodes,
                task=task,
                **boot,
            )
    entry["controls"] = {name: stats.to_dict() for name, stats in pairs.items() if name != "main"}
    return entry, graphs, pairs


def _ablation(
    pm: ProbedModel,
    items: Sequence[Any],
    per: Mapping[str, Tensor],
    opts: CompareOptions,
    task: str,
    k_nodes: int,
    boot: Mapping[str, int],
) -> dict[str, Any]:
    """Targeted zero-ablation of the early top-K nodes against controls, or why there is none."""
    try:
        return targeted_ablation(
            pm,
            items,
            mean_scores(per),
            k=k_nodes,
            method="zero",
            n_random=opts.n_random,
            task=task,
            batch_size=max(opts.batch_size, 32),
            **boot,
        ).to_dict()
    except UserError as err:  # no early node among the top-K: say so
        return {"error": str(err)}


def _units(
    models: Mapping[str, ProbedModel], pools: Mapping[str, Pool], opts: CompareOptions, data: dict[str, Any]
) -> dict[str, Interval | None]:
    """Neuron and head profiles of both models over all tasks (data["units"]); returns, per pair
    ("main" and the controls), the interval of the median neuron selectivity index difference
    (claim c); empty when units are not profiled. Seed twins are profiled on neurons only; the
    null pairs reuse each model's profile (it is deterministic)."""
    if not opts.neurons:
        return {}
    if len(pools) < 2:
        data["units"]["skipped"] = "unit specialisation needs at least two tasks with a pool"
        return {}
    ts = time.perf_counter()
    big = max(opts.batch_size, 32)
    boot = {"n_boot": opts.n_boot, "seed": opts.seed + 1009 * (len(pools) - 1)}  # as the last task's
    tasks = {m: {t: (p.ar if m.startswith("ar") else p.mdm) for t, p in pools.items()} for m in models}
    selectivity: dict[str, Interval | None] = {}
    kinds = ["neurons", "heads"]
    if not any(not models["ar"].shape.is_moe(layer) for layer in range(models["ar"].config.n_layers)):
        kinds = ["heads"]  # every MLP is a mixture of experts: the experts are read in data["routing"]
        data["units"]["neurons_skipped"] = "every MLP is a mixture of experts (see the routing section)"
    for kind in kinds:
        roles = list(models) if kind == "neurons" else ["ar", "mdm"]
        profiles = {m: profile_units(models[m], tasks[m], kind=kind, keep=True, batch_size=big) for m in roles}
        block: dict[str, Any] = {
            "compare": compare_profiles(profiles["ar"], profiles["mdm"], **boot),
            **{m: {"summary": p.summary()} for m, p in profiles.items()},
        }
        if kind == "neurons":
            selectivity["main"] = block["compare"]["median_selectivity_index"]["diff"]
            controls = {"floor_ar": ("ar", "ar_twin"), "floor_mdm": ("mdm", "mdm_twin")}
            if opts.null_pair:
                controls.update(null_ar=("ar", "ar"), null_mdm=("mdm", "mdm"))
            for name, (first, second) in controls.items():
                if second in profiles:
                    diff = compare_profiles(profiles[first], profiles[second], **boot)["median_selectivity_index"]
                    selectivity[name] = diff["diff"]
        if opts.causal:
            n_units = 10 if kind == "neurons" else max(1, models["ar"].shape.n_heads // 2)
            for m in ("ar", "mdm"):
                block[m]["checks"] = {
                    t: causal_check(
                        models[m],
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
    return selectivity


def compare_methods(
    ar: ProbedModel,
    mdm: ProbedModel,
    options: CompareOptions,
    methods: Sequence[str],
    *,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> tuple[CompareResult, dict[str, CompareResult]]:
    """(the main result, {method: result}): `analyses.compare.compare` once per method, every
    method checked before the first run (UserError for an unknown one). With two or more methods
    the main result (the first method's) carries `method_dependence` and its dependent claims
    are marked (`mark`). kwargs: passed to `compare` (labels, examples, twins)."""
    by_method = {m: replace(options, method=m).checked() for m in methods}
    results = {}
    for m, opts in by_method.items():
        if len(by_method) > 1:
            log(f"method {m}:")
        results[m] = compare(ar, mdm, opts, log=log, **kwargs)
    main = results[next(iter(results))]
    if len(results) > 1:
        dependence = method_dependence({m: r.data["claims"] for m, r in results.items()})
        mark(main.data["claims"], dependence)
        main.data["method_dependence"] = dependence
    return main, results
