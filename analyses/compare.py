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

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from analyses.circuits import attribute, faithfulness_curve
from analyses.depth import (
    baseline_logit_diffs,
    compare_depth,
    layer_distribution,
    lens_profile,
    mean_scores,
    node_patching_scores,
    targeted_ablation,
)
from analyses.graph import Graph, jaccard, jaccard_curve, node_importance
from analyses.neurons import causal_check, compare_profiles, profile_units
from analyses.statistics import Interval, jaccard_bootstrap, pooled, verdict
from common.errors import CheckpointError, TaskError, UserError
from common.outputs import atomic_write_text
from probe.model import ProbedModel
from tasks import TASKS, Example, render, task_names
from tasks.base import Rendered

NodeScores = Literal["eap-ig", "patching"]
MIN_POOL = 4  # fewer common-correct examples than this: the task is reported, not analysed


@dataclass
class CompareOptions:
    """What `compare` runs. pool_size: at most this many common-correct examples per task (drawn:
    examples generated per task before filtering, default 2 x pool_size). k_edges: K of the
    Jaccard overlap (default min(1000, edges // 10), at least 10). k_nodes: top-K nodes for the
    layer distribution and the targeted ablation (default a fifth of the heads and MLPs, >= 3).
    steps: EAP-IG interpolation points m. node_scores: "eap-ig" (sum of a node's outgoing edge
    scores; scales to any model) or "patching" (exact node patching, one pass per node).
    faithfulness / ablations / neurons / causal: optional parts. denoising: values of t for the
    MDM's denoising-trajectory analysis (empty: off). common_correct: False keeps every aligned
    example, solved or not (past the reference study's successful-examples-only limit; also the
    fallback for models too weak to share a pool)."""

    tasks: tuple[str, ...] = field(default_factory=task_names)
    pool_size: int = 500
    draw: int | None = None
    k_edges: int | None = None
    k_nodes: int | None = None
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
        if self.node_scores not in ("eap-ig", "patching"):
            raise UserError(f"node_scores must be 'eap-ig' or 'patching', got {self.node_scores!r}.")
        if any(not 0.0 <= t <= 1.0 for t in self.denoising):
            raise UserError(f"denoising values are mask shares t in [0, 1], got {list(self.denoising)}.")
        denoising = tuple(sorted(set(self.denoising), reverse=True))
        if denoising and denoising[0] != 1.0:
            denoising = (1.0, *denoising)  # t = 1 is the reference circuit
        return replace(self, tasks=tasks, denoising=denoising)


# --- models and pools -------------------------------------------------------------------------------


def check_pair(ar: ProbedModel, mdm: ProbedModel) -> list[str]:
    """Check that `ar` and `mdm` are an ARM and an MDM that can be compared; return warnings.

    Errors (CheckpointError): the kinds are not ARM and MDM; the graphs differ (layers, heads, KV
    heads, MLP width); the tokenizers disagree on any token's id (the MDM may add only its mask
    token). Warnings: special tokens that differ, and an MDM whose recorded source (its weights'
    sha256) is not this ARM, i.e. not the ARM's own conversion.
    """
    if ar.config.kind != "ar":
        raise CheckpointError(f"--ar must be an autoregressive checkpoint; this one is kind {ar.config.kind!r}.")
    if mdm.config.kind != "mdm":
        raise CheckpointError("--mdm must be a masked diffusion checkpoint (a folder written by `ar2mdm convert`); "
                              f"this one is kind {mdm.config.kind!r}.")
    a, b = ar.shape, mdm.shape
    if (a.n_layers, a.n_heads, a.n_kv_heads, a.d_mlp) != (b.n_layers, b.n_heads, b.n_kv_heads, b.d_mlp):
        raise CheckpointError(
            f"the models differ in architecture (AR {a.n_layers} layers x {a.n_heads} heads, MLP {a.d_mlp}; "
            f"MDM {b.n_layers} x {b.n_heads}, MLP {b.d_mlp}): edge overlap needs the same graph. "
            "Compare an ARM with its own conversion."
        )
    warnings = _tokenizer_warnings(ar, mdm)
    src, own = mdm.meta.source_hash, ar.meta.source_hash
    if src and own and src != own:
        warnings.append(
            f"the MDM was converted from {mdm.meta.source or 'another model'} (weights sha256 {src[:12]}...), but "
            f"--ar's weights hash to {own[:12]}...: this is not the ARM's own conversion, so every difference "
            "below mixes the conversion with the difference between the two source models."
        )
    return warnings


def _tokenizer_warnings(ar: ProbedModel, mdm: ProbedModel) -> list[str]:
    """CheckpointError if the vocabularies disagree; warnings for differing special tokens."""
    ta, tb = ar.tokenizer, mdm.tokenizer
    if ta is None or tb is None or not hasattr(ta, "get_vocab") or not hasattr(tb, "get_vocab"):
        return []
    va, vb = ta.get_vocab(), tb.get_vocab()
    moved = sorted(t for t, i in va.items() if vb.get(t) != i)
    added = sorted(set(vb) - set(va) - {getattr(tb, "mask_token", None)})
    if moved or added:
        example = f"{moved[0]!r}: {va[moved[0]]} in the ARM, {vb.get(moved[0])} in the MDM" if moved else f"{added[0]!r} only in the MDM"
        counts = [f"{len(moved)} of the ARM's {len(va)} tokens have another id in the MDM" if moved else "",
                  f"{len(added)} tokens besides the mask exist only in the MDM" if added else ""]
        raise CheckpointError(
            f"--ar and --mdm use different tokenizers ({'; '.join(c for c in counts if c)}; e.g. {example}). "
            "Token-level comparisons need one vocabulary: compare an ARM with its own conversion."
        )
    differ = [
        f"{role} {getattr(ta, role + '_token', None)!r} vs {getattr(tb, role + '_token', None)!r}"
        for role in ("bos", "eos", "pad", "unk")
        if getattr(ta, role + "_token_id", None) != getattr(tb, role + "_token_id", None)
    ]
    return [f"the tokenizers' special tokens differ (ARM vs MDM: {', '.join(differ)})."] if differ else []


def task_examples(mdm: ProbedModel, tasks: Sequence[str], n: int, seed: int = 0) -> dict[str, list[Example]]:
    """n candidate examples per task: the organism's held-out sets for an organism conversion
    (prompts its training never saw), else the built-in tasks aligned under this tokenizer."""
    from tasks import get_task

    tok = mdm.tokenizer
    from conversion.organism import eval_examples, is_organism

    if mdm.meta is not None and is_organism(mdm.meta.source):
        examples = eval_examples(n, eval_seed=seed)
        return {t: examples[t] for t in tasks}
    out = {}
    for t in tasks:
        try:
            out[t] = get_task(t, tok).generate_aligned(n, tok, seed, modes=("ar", "mdm"), mask_id=mdm.config.mask_id)
        except TaskError as err:
            out[t] = []
            print(f"{t}: no aligned examples for this tokenizer ({err})")
    return out


def rendered_for(pm: ProbedModel, example: Example) -> Rendered:
    cfg = pm.config
    return render(example, pm.tokenizer, cfg.kind, shift=cfg.shift, mask_id=cfg.mask_id)


@dataclass
class Pool:
    """One task's common-correct pool: the same examples rendered for each model."""

    task: str
    ar: list[Rendered]
    mdm: list[Rendered]
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ar)


def common_pool(ar: ProbedModel, mdm: ProbedModel, task: str, examples: Sequence[Example], pool_size: int,
                *, batch_size: int = 64, require_correct: bool = True) -> Pool:
    """Examples both models render aligned and (require_correct) both answer correctly, at most
    `pool_size`, in the order drawn."""
    rows_ar, rows_mdm = [], []
    for ex in examples:
        try:
            ra, rm = rendered_for(ar, ex), rendered_for(mdm, ex)
        except TaskError:
            continue
        bad = any(len(r.counterfactual_ids) == 0 or set(r.correct_ids.tolist()) & set(r.counterfactual_ids.tolist())
                  for r in (ra, rm))
        if not bad:
            rows_ar.append(ra)
            rows_mdm.append(rm)
    stats: dict[str, Any] = {"drawn": len(examples), "aligned": len(rows_ar)}
    if not rows_ar:
        return Pool(task, [], [], {**stats, "pool": 0, "accuracy_ar": math.nan, "accuracy_mdm": math.nan})
    ld_ar = baseline_logit_diffs(ar, rows_ar, batch_size=batch_size)[0]
    ld_mdm = baseline_logit_diffs(mdm, rows_mdm, batch_size=batch_size)[0]
    keep = ((ld_ar > 0) & (ld_mdm > 0)) if require_correct else torch.ones(len(rows_ar), dtype=torch.bool)
    idx = keep.nonzero().squeeze(1)[:pool_size].tolist()
    stats.update(pool=len(idx), accuracy_ar=float((ld_ar > 0).float().mean()), accuracy_mdm=float((ld_mdm > 0).float().mean()),
                 both_correct=int(((ld_ar > 0) & (ld_mdm > 0)).sum()))
    return Pool(task, [rows_ar[i] for i in idx], [rows_mdm[i] for i in idx], stats)


# --- statistics -------------------------------------------------------------------------------------


def default_k_edges(n_edges: int) -> int:
    return min(n_edges, max(10, min(1000, n_edges // 10)))


def default_k_nodes(n_nodes: int) -> int:
    return min(n_nodes, max(3, round(n_nodes / 5)))


def node_examples(graph: Graph) -> dict[str, Tensor]:
    """Per-example node scores (sum of each sender's outgoing edges) from `graph.examples`."""
    if graph.examples is None:
        raise UserError("node_examples needs per-example scores: attribute(..., per_example=True).")
    index = {s: i for i, s in enumerate(graph.senders)}
    cols = torch.tensor([index[s] for s, _ in graph.pairs])
    nodes = torch.zeros(graph.examples.shape[0], len(graph.senders), dtype=torch.float64)
    nodes.index_add_(1, cols, graph.examples.double())
    return {s: nodes[:, i] for s, i in index.items() if s != "embed"}


# --- denoising trajectory ---------------------------------------------------------------------------


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


# --- the comparison ---------------------------------------------------------------------------------


@dataclass
class CompareResult:
    """Everything `compare` measured: JSON-able `data` and the circuit graphs (not in JSON)."""

    data: dict[str, Any]
    graphs: dict[str, dict[str, Graph]] = field(default_factory=dict)  # task -> {"ar", "mdm"}

    @property
    def claims(self) -> dict[str, Any]:
        return self.data["claims"]


def json_safe(x: Any) -> Any:
    """JSON-safe: NaN / inf -> None, tensors -> lists, intervals -> dicts."""
    if isinstance(x, Interval):
        return json_safe(x.to_dict())
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, Tensor):
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


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
    or the built-in tasks); task names must be among the local and global tasks."""
    opts = (options or CompareOptions()).checked()
    warnings = check_pair(ar, mdm)
    for warning in warnings:
        log(f"warning: {warning}")
    t0 = time.perf_counter()
    shape = ar.shape
    graph0 = Graph(shape)
    k_edges = min(opts.k_edges or default_k_edges(len(graph0.edges)), len(graph0.edges))
    n_nodes = len(graph0.senders) - 1
    k_nodes = min(opts.k_nodes or default_k_nodes(n_nodes), n_nodes)
    n_layers = ar.config.n_layers
    boot = {"n_boot": opts.n_boot, "seed": opts.seed}
    names = dict(labels or {"ar": str(getattr(ar.meta, "source", "ar")), "mdm": "mdm"})
    data: dict[str, Any] = {
        "models": names, "warnings": warnings, "options": {**asdict(opts), "k_edges": k_edges, "k_nodes": k_nodes},
        "shape": {"n_layers": n_layers, "n_heads": shape.n_heads, "edges": len(graph0.edges), "nodes": n_nodes},
        "pools": {}, "tasks": {}, "units": {}, "denoising": {}, "seconds": {},
    }
    result = CompareResult(data)
    models = {"ar": ar, "mdm": mdm}

    log("pools: rendering and scoring the candidate examples")
    if examples is None:
        examples = task_examples(mdm, opts.tasks, opts.draw or 2 * opts.pool_size, opts.seed)
    missing = [t for t in opts.tasks if t not in examples]
    if missing:
        raise UserError(f"no examples given for task(s) {missing}.")
    pools: dict[str, Pool] = {}
    for task in opts.tasks:
        pool = common_pool(ar, mdm, task, examples[task], opts.pool_size, batch_size=max(opts.batch_size, 32),
                           require_correct=opts.common_correct)
        data["pools"][task] = pool.stats
        log(f"  {task}: {pool.stats}")
        if len(pool) >= MIN_POOL:
            pools[task] = pool
    data["seconds"]["pools"] = time.perf_counter() - t0
    if not pools:
        raise UserError(
            f"no task has {MIN_POOL} or more examples that both models answer correctly "
            f"({ {t: s['pool'] for t, s in data['pools'].items()} }); train the models longer, draw more (--draw), "
            "or analyse every aligned example (--all-examples)."
        )

    jaccard_reps: dict[str, Tensor] = {}
    depth_reps: dict[str, Tensor] = {}
    for i, (task, pool) in enumerate(tqdm(pools.items(), desc="circuits and depth", unit="task")):
        ts = time.perf_counter()
        boot = {"n_boot": opts.n_boot, "seed": opts.seed + 1009 * i}  # independent resamples per task
        items = {"ar": pool.ar, "mdm": pool.mdm}
        entry: dict[str, Any] = {"n": len(pool)}
        graphs = {m: attribute(pm, items[m], method="eap-ig-inputs", steps=opts.steps, batch_size=opts.batch_size,
                               per_example=True, meta={"task": task, "model": names[m]})
                  for m, pm in models.items()}
        result.graphs[task] = graphs
        interval, reps = jaccard_bootstrap(graphs["ar"].examples, graphs["mdm"].examples, k_edges, **boot)
        jaccard_reps[task] = reps
        ks, values = jaccard_curve(graphs["ar"], graphs["mdm"])
        entry["circuits"] = {
            "jaccard": interval, "jaccard_curve": {"k": ks, "jaccard": values},
            **{m: {"clean_ld": g.meta["clean_metric"], "corrupt_ld": g.meta["corrupt_metric"],
                   "top_edges": [(e, g.score(e)) for e in g.top(10)],
                   "importance": node_importance(g, k_edges)} for m, g in graphs.items()},
        }
        if opts.faithfulness:
            for m, pm in models.items():
                curve = faithfulness_curve(pm, items[m], graphs[m], batch_size=opts.batch_size)
                entry["circuits"][m]["faithfulness"] = curve.to_dict()

        # depth
        if opts.node_scores == "patching":
            per = {m: node_patching_scores(pm, items[m], batch_size=max(opts.batch_size, 32)) for m, pm in models.items()}
        else:
            per = {m: node_examples(graphs[m]) for m in models}
        cmp = compare_depth(per["ar"], per["mdm"], n_layers, k_nodes, task=task, **boot)
        depth_reps[task] = cmp.samples["early_mass_diff"]
        entry["depth"] = {
            "compare": cmp.to_dict(),
            **{m: {"lens": lens_profile(pm, items[m], batch_size=max(opts.batch_size, 32)).summary(),
                   "scores": mean_scores(per[m])} for m, pm in models.items()},
        }
        if opts.ablations:
            for m, pm in models.items():
                try:
                    ta = targeted_ablation(pm, items[m], mean_scores(per[m]), k=k_nodes, method="zero", n_random=opts.n_random,
                                           task=task, batch_size=max(opts.batch_size, 32), **boot)
                    entry["depth"][m]["ablation"] = ta.to_dict()
                except UserError as err:  # no early node among the top-K: say so
                    entry["depth"][m]["ablation"] = {"error": str(err)}
        data["tasks"][task] = entry
        data["seconds"][f"task:{task}"] = time.perf_counter() - ts
        log(f"  {task}: n={len(pool)}  Jaccard@{k_edges} {interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]  "
            f"early mass AR {cmp.a.early_mass:.2f} MDM {cmp.b.early_mass:.2f}  ({time.perf_counter() - ts:.0f}s)")

    # units
    select_reps = None
    if opts.neurons and len(pools) >= 2:
        ts = time.perf_counter()
        for kind in ("neurons", "heads"):
            profiles = {m: profile_units(pm, {t: (p.ar if m == "ar" else p.mdm) for t, p in pools.items()}, kind=kind,
                                         keep=True, batch_size=max(opts.batch_size, 32))
                        for m, pm in models.items()}
            comparison = compare_profiles(profiles["ar"], profiles["mdm"], **boot)
            block: dict[str, Any] = {"compare": comparison, **{m: {"summary": p.summary()} for m, p in profiles.items()}}
            if opts.causal:
                n_units = 10 if kind == "neurons" else max(1, shape.n_heads // 2)
                for m, pm in models.items():
                    tasks = {t: (p.ar if m == "ar" else p.mdm) for t, p in pools.items()}
                    block[m]["checks"] = {
                        t: causal_check(pm, profiles[m], tasks, t, n_units=min(n_units, len(profiles[m].units)), by="selectivity",
                                        n_random=opts.n_random, off_target=False, batch_size=max(opts.batch_size, 32), **boot).to_dict()
                        for t in tasks}
            data["units"][kind] = block
        data["seconds"]["units"] = time.perf_counter() - ts
        select_reps = data["units"]["neurons"]["compare"]["median_selectivity_index"]["diff"]
    elif opts.neurons:
        data["units"]["skipped"] = "unit specialisation needs at least two tasks with a pool"

    # denoising trajectory (MDM)
    if len(opts.denoising) > 1:
        ts = time.perf_counter()
        rng = random.Random(opts.seed)
        for task, pool in pools.items():
            longest = max(len(r.answer_positions) for r in pool.mdm)
            if longest < 2:
                data["denoising"][task] = {"skipped": "single-token answers: nothing else to reveal"}
                continue
            rows = []
            reference = result.graphs[task]["mdm"]
            for t in opts.denoising:
                items = [revealed(r, t, rng) for r in pool.mdm]
                g = reference if t == 1.0 else attribute(mdm, items, method="eap-ig-inputs", steps=opts.steps, batch_size=opts.batch_size)
                dist = layer_distribution(g.node_scores, n_layers, k_nodes)
                rows.append({"t": t, "clean_ld": g.meta["clean_metric"], "corrupt_ld": g.meta["corrupt_metric"],
                             "jaccard_t1": jaccard(g, reference, k_edges), "jaccard_ar": jaccard(g, result.graphs[task]["ar"], k_edges),
                             "early_mass": dist.early_mass, "centre": dist.centre})
            data["denoising"][task] = {"answer_tokens": longest, "points": rows}
        data["seconds"]["denoising"] = time.perf_counter() - ts

    data["claims"] = claims(pools, jaccard_reps, depth_reps, data, select_reps)
    data["seconds"]["total"] = time.perf_counter() - t0
    result.data = json_safe(data)
    return result


def claims(pools: Mapping[str, Pool], jaccard_reps: Mapping[str, Tensor], depth_reps: Mapping[str, Tensor],
           data: Mapping[str, Any], selectivity: Interval | None) -> dict[str, Any]:
    """The three claims with effect sizes, intervals and verdicts."""
    local = [t for t in pools if TASKS[t].kind == "local"]
    glob = [t for t in pools if TASKS[t].kind == "global"]
    out: dict[str, Any] = {}

    def jac(t: str) -> float:
        return data["tasks"][t]["circuits"]["jaccard"].estimate

    a = None
    if local and glob:
        a = pooled([jac(t) for t in local + glob], [jaccard_reps[t] for t in local + glob],
                   [1 / len(local)] * len(local) + [-1 / len(glob)] * len(glob))
    out["a"] = {
        "claim": "edge overlap (Jaccard of top-K edges, ARM vs MDM) is higher on local than on global tasks",
        "effect": "mean Jaccard over local tasks - mean over global tasks",
        "interval": a, "verdict": verdict(a, 1), "local_tasks": local, "global_tasks": glob,
        "per_task": {t: data["tasks"][t]["circuits"]["jaccard"] for t in pools},
    }
    b = None
    if glob:
        b = pooled([data["tasks"][t]["depth"]["compare"]["early_mass_diff"]["estimate"] for t in glob],
                   [depth_reps[t] for t in glob], [1 / len(glob)] * len(glob))
    out["b"] = {
        "claim": "the MDM has more early-layer (first third) mass among its top-K nodes than the ARM on global tasks",
        "effect": "mean over global tasks of early mass (MDM - ARM)",
        "interval": b, "verdict": verdict(b, 1), "global_tasks": glob,
        "per_task": {t: data["tasks"][t]["depth"]["compare"]["early_mass_diff"] for t in pools},
    }
    out["c"] = {
        "claim": "MDM units are less specialised than the ARM's (single-component specialisation is weaker)",
        "effect": "median selectivity index over MLP neurons across tasks (MDM - ARM)",
        "interval": selectivity, "verdict": verdict(selectivity, -1),
        "supporting": ({k: data["units"]["neurons"]["compare"][k]["diff"] for k in ("median_entropy",)}
                       if "neurons" in data["units"] else {}),
    }
    return out


# --- tracking a conversion run ----------------------------------------------------------------------


def snapshots_of(run: str | Path, *, final: bool = True) -> list[tuple[int, Path]]:
    """(step, folder) of a conversion run's snapshots (`ar2mdm convert --snapshot-every N`), by
    step; with `final`, the run's own finished MDM last (at its step count)."""
    from common.metadata import META_FILE, ModelMeta

    root = Path(run) / "snapshots"
    found = sorted((int(p.name.split("-")[1]), p) for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit())
    if not found:
        raise UserError(f"no snapshots under {root}; convert with --snapshot-every N to write them.")
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
    load: Callable[[str | Path], ProbedModel] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """When does the mechanism shift? For each snapshot of a conversion run: the MDM's accuracy
    (clean LD > 0) on examples the ARM solves, the Jaccard of its top-K EAP-IG edges with the
    ARM's, and the early-layer mass of its top-K nodes. The pool is fixed by the ARM (an early
    snapshot solves little), so every step is measured on the same examples."""
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
        ar_graphs[task] = attribute(ar, [r for r, _ in keep], method="eap-ig-inputs", steps=steps, batch_size=batch_size)
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
            g = attribute(pm, items, method="eap-ig-inputs", steps=steps, batch_size=batch_size)
            ld = baseline_logit_diffs(pm, items)[0]
            dist = layer_distribution(g.node_scores, pm.config.n_layers, k_nodes)
            point = {"step": step, "accuracy": float((ld > 0).float().mean()), "clean_ld": float(ld.mean()),
                     "jaccard_ar": jaccard(g, ar_graphs[task], k_edges), "early_mass": dist.early_mass, "centre": dist.centre}
            out["tasks"][task]["points"].append(point)
            log(f"  step {step} {task}: {point}")
    return json_safe(out)


# --- report -----------------------------------------------------------------------------------------


def format_interval(d: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not d or d.get("estimate") is None:
        return "-"
    if d.get("low") is None:
        return f"{d['estimate']:.{digits}f}"
    return f"{d['estimate']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def summary_rows(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per task: pool, accuracies, Jaccard, early mass AR / MDM and their difference."""
    rows = []
    for task, pool in data["pools"].items():
        entry = data["tasks"].get(task)
        row = {"task": task, "kind": TASKS[task].kind, "pool": str(pool["pool"]),
               "acc AR": f"{pool['accuracy_ar']:.2f}" if pool.get("accuracy_ar") is not None else "-",
               "acc MDM": f"{pool['accuracy_mdm']:.2f}" if pool.get("accuracy_mdm") is not None else "-"}
        if entry is None:
            row.update({"LD gap AR / MDM": "-", "Jaccard@K": "(pool too small)", "early mass AR": "-", "early mass MDM": "-", "MDM - AR": "-"})
        else:
            cmp = entry["depth"]["compare"]
            gaps = [entry["circuits"][m]["clean_ld"] - entry["circuits"][m]["corrupt_ld"] for m in ("ar", "mdm")]
            # a small clean - corrupt gap means attribution measures a tiny effect: flag it
            row["LD gap AR / MDM"] = f"{gaps[0]:.2f} / {gaps[1]:.2f}" + (" (small!)" if min(gaps) < 0.5 else "")
            row.update({"Jaccard@K": format_interval(entry["circuits"]["jaccard"]), "early mass AR": f"{cmp['a']['early_mass']:.2f}",
                        "early mass MDM": f"{cmp['b']['early_mass']:.2f}", "MDM - AR": format_interval(cmp["early_mass_diff"])})
        rows.append(row)
    return rows


def _md_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    head = list(rows[0])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows)]


def markdown_summary(data: Mapping[str, Any]) -> str:
    """The report's numbers as Markdown: claims, per-task table, circuits, ablations, units,
    denoising trajectory and tracking (whichever were run)."""
    lines = [f"**Warning:** {w}" for w in data.get("warnings", [])]
    lines += [f"K = {data['options']['k_edges']} edges of {data['shape']['edges']}, {data['options']['k_nodes']} nodes; "
              f"EAP-IG m = {data['options']['steps']}; 95% bootstrap intervals ({data['options']['n_boot']} resamples).", ""]
    for key, c in data["claims"].items():
        lines.append(f"- ({key}) {c['claim']}: **{c['verdict']}** -- {c['effect']} = {format_interval(c['interval'], 3)}")
    lines += ["", *_md_table(summary_rows(data)), ""]
    rows = []
    for t, e in data["tasks"].items():
        row = {"task": t}
        for m in ("ar", "mdm"):
            c = e["circuits"][m]
            row[f"LD clean / corrupt {m.upper()}"] = f"{c['clean_ld']:.2f} / {c['corrupt_ld']:.2f}"
            if "faithfulness" in c:
                row[f"faithfulness area {m.upper()}"] = f"{c['faithfulness']['area']:.2f}"
            ab = e["depth"][m].get("ablation")
            if ab and "error" not in ab:
                row[f"early top-K zero-ablation drop {m.upper()} (vs random)"] = f"{format_interval(ab['target']['drop'])} ({format_interval(ab['versus']['random'])})"
            elif ab:
                row[f"early top-K zero-ablation drop {m.upper()} (vs random)"] = "no early node in the top-K"
        rows.append(row)
    lines += ["Circuits and ablations per model:", "", *_md_table(rows), ""]
    units = data.get("units", {})
    for kind in ("neurons", "heads"):
        if kind not in units:
            continue
        cmp = units[kind]["compare"]
        lines += [f"{kind}: MDM - AR (95% CI): median selectivity index {format_interval(cmp['median_selectivity_index']['diff'], 3)}, "
                  f"median entropy {format_interval(cmp['median_entropy']['diff'], 3)}; Gini of attribution per task: "
                  + ", ".join(f"{t} {format_interval(cmp[f'{t}:gini']['diff'])}" for t in data["tasks"] if f"{t}:gini" in cmp), ""]
    points = {t: d for t, d in data.get("denoising", {}).items() if "points" in d}
    if points:
        lines += ["Denoising trajectory (MDM; t = share of the answer still masked):", ""]
        lines += _md_table([{"task": t, "t": f"{p['t']:.2f}", "clean LD": f"{p['clean_ld']:.2f}", "Jaccard with t=1": f"{p['jaccard_t1']:.2f}",
                             "Jaccard with ARM": f"{p['jaccard_ar']:.2f}", "early mass": f"{p['early_mass']:.2f}"}
                            for t, d in points.items() for p in d["points"]])
        lines.append("")
    tracked = data.get("track", {}).get("tasks", {})
    if tracked:
        lines += ["Across the conversion's snapshots:", ""]
        lines += _md_table([{"task": t, "step": p["step"], "accuracy": f"{p['accuracy']:.2f}", "Jaccard with ARM": f"{p['jaccard_ar']:.2f}",
                             "early mass": f"{p['early_mass']:.2f}", "ARM early mass": f"{d['ar_early_mass']:.2f}"}
                            for t, d in tracked.items() for p in d["points"]])
        lines.append("")
    if data.get("note"):
        lines += [f"Note: {data['note']}", ""]
    return "\n".join(lines)


def figures(data: Mapping[str, Any]) -> dict[str, Any]:
    """Plotly figures of a comparison: Jaccard curves, layer mass, lens, denoising, units."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from analyses.circuit_plots import curves_figure

    tasks = list(data["tasks"])
    figs: dict[str, Any] = {}
    colors = {"ar": "#1f77b4", "mdm": "#d62728"}
    if not tasks:
        return figs
    figs["jaccard"] = curves_figure({t: (e["circuits"]["jaccard_curve"]["k"], e["circuits"]["jaccard_curve"]["jaccard"]) for t, e in data["tasks"].items()},
                                    title="ARM vs MDM: Jaccard overlap of the top-K EAP-IG edges", x_title="K", y_title="Jaccard")
    fig = go.Figure()
    n_layers = data["shape"]["n_layers"]
    for m in ("ar", "mdm"):
        for layer in range(n_layers):
            key = "a" if m == "ar" else "b"
            fig.add_trace(go.Bar(x=tasks, y=[data["tasks"][t]["depth"]["compare"][key]["mass"][layer] for t in tasks],
                                 name=f"{m.upper()} L{layer}", offsetgroup=m,
                                 marker={"color": colors[m], "opacity": 1 - 0.8 * layer / max(1, n_layers)},
                                 base=[sum(data["tasks"][t]["depth"]["compare"][key]["mass"][:layer]) for t in tasks]))
    fig.update_layout(title=f"Share of the top-{data['options']['k_nodes']} nodes' score per layer (left bar ARM, right bar MDM)",
                      yaxis_title="mass", height=450, width=max(700, 160 * len(tasks)))
    figs["layers"] = fig
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True)
    for i, t in enumerate(tasks, start=1):
        for m in ("ar", "mdm"):
            lens = data["tasks"][t]["depth"][m]["lens"]
            fig.add_trace(go.Scatter(x=list(range(len(lens["top1"]))), y=lens["top1"], name=m.upper(), line={"color": colors[m]},
                                     showlegend=i == 1), row=1, col=i)
    fig.update_yaxes(title_text="answer ranked first (share)", row=1, col=1)
    fig.update_xaxes(title_text="layer (0 = embedding)")
    fig.update_layout(title="Logit lens at the read position", height=380, width=max(700, 260 * len(tasks)))
    figs["lens"] = fig
    if any("faithfulness" in data["tasks"][t]["circuits"]["ar"] for t in tasks):
        curves = {f"{t} {m.upper()}": ([max(s, 0.5) for s in e["circuits"][m]["faithfulness"]["sizes"]], e["circuits"][m]["faithfulness"]["values"])
                  for t, e in data["tasks"].items() for m in ("ar", "mdm")}
        figs["faithfulness"] = curves_figure(curves, title="Faithfulness of top-n EAP-IG circuits", x_title="edges (n)", y_title="faithfulness")
    points = {t: d["points"] for t, d in data.get("denoising", {}).items() if "points" in d}
    if points:
        fig = make_subplots(rows=1, cols=2, subplot_titles=["Jaccard with the t = 1 circuit / with the ARM", "early-layer mass"])
        for t, pts in points.items():
            ts = [p["t"] for p in pts]
            fig.add_trace(go.Scatter(x=ts, y=[p["jaccard_t1"] for p in pts], name=f"{t}: vs t=1", mode="lines+markers"), row=1, col=1)
            fig.add_trace(go.Scatter(x=ts, y=[p["jaccard_ar"] for p in pts], name=f"{t}: vs ARM", mode="lines+markers", line={"dash": "dot"}), row=1, col=1)
            fig.add_trace(go.Scatter(x=ts, y=[p["early_mass"] for p in pts], name=f"{t}: early mass", mode="lines+markers"), row=1, col=2)
        fig.update_xaxes(title_text="t (share of the answer still masked)", autorange="reversed")
        fig.update_layout(title="MDM circuit along the denoising trajectory", height=420, width=1100)
        figs["denoising"] = fig
    tracked = data.get("track", {}).get("tasks", {})
    if tracked:
        fig = make_subplots(rows=1, cols=3, subplot_titles=["accuracy on the ARM's correct examples", "Jaccard with the ARM", "early-layer mass"])
        for t, d in tracked.items():
            steps = [p["step"] for p in d["points"]]
            for col, key in enumerate(("accuracy", "jaccard_ar", "early_mass"), start=1):
                fig.add_trace(go.Scatter(x=steps, y=[p[key] for p in d["points"]], name=t, legendgroup=t, showlegend=col == 1,
                                         mode="lines+markers"), row=1, col=col)
        fig.update_xaxes(title_text="conversion step")
        fig.update_layout(title="Across the conversion run's snapshots", height=400, width=1300)
        figs["track"] = fig
    return figs


def _table_html(rows: Sequence[Mapping[str, str]]) -> str:
    import html

    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(data: Mapping[str, Any], *, title: str = "ARM vs MDM", extra_figures: Mapping[str, Any] | None = None,
                sections: Sequence[str] = (), plotlyjs: bool | str = True) -> str:
    """One HTML page: claims, summary table, figures. plotlyjs: True embeds plotly.js once (a
    self-contained page, ~4.5 MB); "cdn" links it (small pages for a repository)."""
    import html

    figs = {**figures(data), **(extra_figures or {})}
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>ARM: <code>{html.escape(str(data['models']['ar']))}</code>, MDM: <code>{html.escape(str(data['models']['mdm']))}</code>; "
             f"{data['shape']['n_layers']} layers, {data['shape']['edges']} edges; K = {data['options']['k_edges']} edges, "
             f"{data['options']['k_nodes']} nodes; EAP-IG m = {data['options']['steps']}; 95% bootstrap intervals "
             f"({data['options']['n_boot']} resamples).</p>",
             *(f"<p style='color:#b00'><b>Warning:</b> {html.escape(w)}</p>" for w in data.get("warnings", [])),
             *sections, "<h2>Claims of the reference study</h2>"]
    rows = [{"claim": f"({k}) {c['claim']}", "effect": c["effect"], "estimate [95% CI]": format_interval(c["interval"], 3), "verdict": c["verdict"]}
            for k, c in data["claims"].items()]
    parts.append(_table_html(rows))
    parts += ["<h2>Per task (common-correct pool)</h2>", _table_html(summary_rows(data))]
    first = True
    for name, fig in figs.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs if first else False))
        first = False
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}code{background:#f4f4f4}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def write_report(result: CompareResult, out: str | Path, *, title: str = "ARM vs MDM", plotlyjs: bool | str = True) -> Path:
    """report.json (every number), report.html (self-contained), summary.md and one graph JSON per
    task and model (graphs/TASK-ar.json, loadable with `Graph.load`) under `out`."""
    out = Path(out)
    (out / "graphs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(result.data, indent=1, allow_nan=False))
    atomic_write_text(out / "report.html", report_html(result.data, title=title, plotlyjs=plotlyjs))
    atomic_write_text(out / "summary.md", markdown_summary(result.data) + "\n")
    for task, graphs in result.graphs.items():
        for m, g in graphs.items():
            g.save(out / "graphs" / f"{task}-{m}.json")
    return out
