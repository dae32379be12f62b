"""The study: from an AR checkpoint to a mechanism report, in cached stages.

`run_study(StudyConfig(...))` (CLI: `ar2mdm study`) runs, each stage in its own folder under
`out`:

    ar        the ARM: the model organism (taken from the cache if trained before, else trained
              with a fixed step count) or SmolLM2-135M-Instruct (fetched offline on first use)
    mdm       conversion into an MDM (`conversion.train`; SFT on the task mixture for the
              organism, masked diffusion on the SOTU corpus for SmolLM2, which only a time budget
              allows on a CPU), with checkpoints for resume and snapshots for tracking
    ar_twin, mdm_twin
              (organism, seed_floor) the seed floor: an organism trained like the ARM with seed + 1
              (the same tokenizer and held-out sets; cached beside it) and the ARM converted again
              with seed + 1
    samplers  task accuracy against NFE for the MDM's samplers and the ARM's greedy decoding
              (`analyses.generation`)
    compare   ARM vs MDM on a common-correct pool: circuits, depth, units, the reference study's
              claims (`analyses.compare`), and the conversion's snapshots tracked
    report    report.html (self-contained) and summary.json in `out`, a summary table printed

Each stage writes `stage.json` last, holding a key made of its options and the identity of its
inputs (weight hashes, upstream keys); a stage whose key is unchanged is skipped, so a rerun
after a crash resumes at the stage that did not finish (the conversion itself resumes from its
last checkpoint). `force` reruns everything. The options and per-model settings are
`analyses.app.study_config`, the stage runner `analyses.app.stages`, the report `analyses.app.study_report`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from analyses.app.power import CLAIM_A_HALF_WIDTH, POWER_HALF_WIDTH, needed_pool, plan_power
from analyses.app.stages import StageRecord, Stages, stage_output
from analyses.app.study_config import StudyConfig
from analyses.app.study_config import settings as study_settings
from analyses.app.study_report import print_summary, write_study_report
from ar2mdm.common.errors import UserError
from ar2mdm.common.jsonl import read_json
from ar2mdm.common.outputs import claim_output

# --- stages -----------------------------------------------------------------------------------------


def _ar_stage(cfg: StudyConfig, stages: Stages) -> tuple[str, StageRecord]:
    """The ARM's source string and its stage record (key: the weights' hash)."""
    from conversion.checkpoints import load_ar

    if cfg.model == "smollm2":
        from conversion.checkpoints import smollm2_folder

        source = str(smollm2_folder())
    elif cfg.model != "organism":
        source = cfg.model  # a hub id or an HF folder: load_ar resolves it (ar2mdm.common.hub)
    else:
        from conversion.organism import OrganismConfig, default_organism_dir, outdated, train_organism

        cached = default_organism_dir()
        shape = OrganismConfig(n_experts=cfg.experts)
        if cfg.experts:  # the MoE organism has a cache folder of its own
            cached = cached.parent / f"organism-moe{cfg.experts}"
        if cfg.quick:
            source = str(stages.root / "ar" / "model")
            quick = OrganismConfig(eval_examples=8, eval_every=0, n_experts=cfg.experts)
            record = stages.run(
                "ar",
                {"quick": True, "steps": 40, "seed": cfg.seed, **({"experts": cfg.experts} if cfg.experts else {})},
                lambda folder: _train_organism(train_organism, folder / "model", 40, cfg.seed, quick),
            )
            return source, record
        present = (cached / "config.json").is_file()
        stale = outdated(cached, shape) if present else None
        home = "organism" if not cfg.experts else str(cached)
        if present and stale is None:
            source = home
        else:
            why = f"the cached organism is out of date ({stale})" if stale else f"no cached organism at {cached}"
            stages.log(f"{why}: training one ({cfg.ar_steps} steps, a few minutes on 2 cores)")
            t0 = time.perf_counter()
            report = train_organism(
                out=cached, seed=cfg.seed, steps=cfg.ar_steps, overwrite=stale is not None, config=shape
            )
            stages.records.append(
                StageRecord(
                    "organism training",
                    "ran",
                    time.perf_counter() - t0,
                    "-",
                    {"accuracy": report.accuracy, "steps": report.steps, "out": str(cached)},
                )
            )
            source = home
    meta = load_ar(source).meta
    record = stages.run(
        "ar",
        {"source": source, "hash": meta.source_hash},
        lambda folder: {"source": source, "hash": meta.source_hash, **_hub_origin(meta)},
    )
    return source, record


def _hub_origin(meta: Any) -> dict[str, str]:
    """The hub repository and commit an ARM named by hub id was read from (for the stage record)."""
    return {"repo_id": meta.repo_id, "revision": meta.revision} if meta.repo_id else {}


def _train_organism(
    train_organism: Callable[..., Any], out: Path, steps: int, seed: int, config: Any, data_seed: int | None = None
) -> dict[str, Any]:
    report = train_organism(out=out, seed=seed, steps=steps, config=config, progress=False, data_seed=data_seed)
    return {"accuracy": report.accuracy, "steps": report.steps}


def _ar_twin_stage(cfg: StudyConfig, stages: Stages, ar_source: str, ar_record: StageRecord) -> tuple[str, StageRecord]:
    """The ARM's seed twin: an organism trained exactly like the ARM (its report's steps and
    options) with seed + 1 and the ARM's data seed (same tokenizer, same held-out prompts).
    Cached beside the organism, in a folder named by the ARM's weights, so a retrained ARM gets
    a new twin."""
    from conversion.checkpoints import organism_folder
    from conversion.organism import OrganismConfig, train_organism

    if cfg.quick:
        source = str(stages.root / "ar_twin" / "model")
        quick = OrganismConfig(eval_examples=8, eval_every=0, n_experts=cfg.experts)
        parts = {"quick": True, "steps": 40, "seed": cfg.seed + 1, "data_seed": cfg.seed, "ar": ar_record.key}
        record = stages.run(
            "ar_twin",
            parts,
            lambda folder: _train_organism(train_organism, folder / "model", 40, cfg.seed + 1, quick, cfg.seed),
        )
        return source, record
    folder = organism_folder() if ar_source == "organism" else Path(ar_source).expanduser().resolve()
    retrain = f"Train the organism again: ar2mdm organism train --out {folder} --overwrite."
    report = read_json(folder / "report.json", remedy=retrain, what="an organism's report")
    try:
        seed = int(report["seed"])
        data_seed = report.get("data_seed")
        data_seed = seed if data_seed is None else int(data_seed)
        int(report["steps"]), dict(report["config"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / 'report.json'} is damaged (it lacks seed, steps or config). {retrain}") from None
    twin = folder.parent / f"{folder.name}-seed{seed + 1}-{ar_record.info['hash'][:8]}"
    if not (twin / "config.json").is_file():
        stages.log(f"[ar_twin] training the ARM's seed twin ({report['steps']} steps, seed {seed + 1}) into {twin}")
        t0 = time.perf_counter()
        # an organism saved before packing existed trained unpacked: its twin does too
        saved = {"pack_length": 0, **report["config"]}
        config = OrganismConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        made = train_organism(out=twin, seed=seed + 1, steps=int(report["steps"]), config=config, data_seed=data_seed)
        stages.records.append(
            StageRecord(
                "organism twin training",
                "ran",
                time.perf_counter() - t0,
                "-",
                {"accuracy": made.accuracy, "steps": made.steps, "out": str(twin)},
            )
        )
    from conversion.checkpoints import load_ar

    meta = load_ar(str(twin)).meta
    record = stages.run(
        "ar_twin",
        {"source": str(twin), "hash": meta.source_hash},
        lambda folder: {"source": str(twin), "hash": meta.source_hash},
    )
    return str(twin), record


def _mdm_stage(
    cfg: StudyConfig,
    stages: Stages,
    ar_source: str,
    ar_record: StageRecord,
    settings: Mapping[str, Any],
    *,
    name: str = "mdm",
    seed_offset: int = 0,
    attention: str | None = None,
) -> StageRecord:
    """The conversion (`name` "mdm"), the MDM's seed twin ("mdm_twin": the same recipe with
    seed + 1), or the same recipe under another `attention` ("mdm_block4": block:4); only the
    main conversion keeps snapshots."""
    from conversion.train import TrainConfig, train

    options = dict(settings["train"])
    seed = cfg.seed + seed_offset
    if name != "mdm":
        options.pop("snapshot_every", None)
    if attention is not None:
        options["attention"] = attention

    def work(folder: Path) -> dict[str, Any]:
        out = folder / "model"
        resume = (out / "checkpoint" / "state.json").is_file() or (out / "checkpoint.old").is_dir()
        if resume:
            stages.log(f"[{name}] resuming the interrupted conversion from {out / 'checkpoint'}")
        elif out.exists():
            shutil.rmtree(out)
        run = TrainConfig(model=ar_source, out=str(out), seed=seed, resume=resume, device=cfg.device, **options)
        result = train(run)
        return {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "final_loss": result.final_loss,
            "seconds_budget": options.get("max_minutes", 0.0) * 60,
        }

    return stages.run(name, {"ar": ar_record.key, "train": options, "seed": seed}, work, keep_partial=True)


def _samplers_stage(
    cfg: StudyConfig, stages: Stages, ar_source: str, mdm_path: Path, upstream: str, settings: Mapping[str, Any]
) -> StageRecord:
    from analyses.generation import SamplerSpec, evaluate_samplers, task_sets, write_report
    from conversion.checkpoints import load_any

    n = 8 if cfg.quick else cfg.n
    fractions = [1.0] if cfg.quick else [1.0, 0.5, 0.25]
    specs = [
        SamplerSpec("low-confidence"),
        SamplerSpec("threshold", {"tau": 0.9}),
        SamplerSpec("ancestral", {"temperature": 0.0}),
    ]
    if cfg.quick:
        specs = specs[:1]

    def work(folder: Path) -> dict[str, Any]:
        mdm = load_any(mdm_path)
        ar = load_any(ar_source)
        tasks = list(settings["sampler_tasks"])
        rows = evaluate_samplers(
            mdm, task_sets(mdm, tasks, n, seed=cfg.seed), specs, fractions=fractions, batch_size=16, seed=cfg.seed
        )
        rows += evaluate_samplers(
            ar,
            task_sets(ar, tasks, n, seed=cfg.seed),
            [SamplerSpec("ar", label="ar (the ARM)")],
            batch_size=16,
            seed=cfg.seed,
        )
        write_report(rows, folder, plotlyjs="cdn")
        return {"rows": [asdict(r) for r in rows]}

    parts = {
        "mdm": upstream,
        "n": n,
        "fractions": fractions,
        "specs": [asdict(s) for s in specs],
        "tasks": settings["sampler_tasks"],
        "seed": cfg.seed,
    }
    return stages.run("samplers", parts, work, outputs=("results.json",))


def _compare_stage(
    cfg: StudyConfig,
    stages: Stages,
    ar_source: str,
    mdm_path: Path,
    upstream: str,
    settings: Mapping[str, Any],
    twins: Mapping[str, tuple[str, str]],
    *,
    name: str = "compare",
    pool_size: int | None = None,
) -> StageRecord:
    """ARM vs MDM; twins: role ("ar", "mdm") -> (checkpoint, stage key) of the seed twins.
    name / pool_size: the stage and its pool when not the settings' (the `power` rerun)."""
    from analyses.compare import CompareOptions, compare, snapshots_of, track, write_report
    from probe import ProbedModel

    options = {"tasks": tuple(settings["tasks"]), "seed": cfg.seed, **settings["compare"]}
    if pool_size is not None:
        options["pool_size"] = pool_size
    labels = {"ar": ar_source, "mdm": str(mdm_path), **{f"{r}_twin": src for r, (src, _) in twins.items()}}

    def work(folder: Path) -> dict[str, Any]:
        started = time.perf_counter()
        ar = ProbedModel.from_checkpoint(ar_source, backend="torch", device=cfg.device)
        mdm = ProbedModel.from_checkpoint(mdm_path, backend="torch", device=cfg.device)
        twin_models = {
            r: ProbedModel.from_checkpoint(src, backend="torch", device=cfg.device, expect=r, role=f"the {r} seed twin")
            for r, (src, _) in twins.items()
        }
        opts = CompareOptions(**options)
        note = None
        try:
            result = compare(ar, mdm, opts, labels=labels, twins=twin_models, log=stages.log)
        except UserError as err:
            if not opts.common_correct:
                raise
            note = (
                f"the two models share too few correctly solved examples ({err}); "
                "analysed every aligned example instead (the claims then mix solved and unsolved examples)"
            )
            stages.log(f"[compare] {note}")
            result = compare(
                ar,
                mdm,
                CompareOptions(**{**options, "common_correct": False}),
                labels=labels,
                twins=twin_models,
                log=stages.log,
            )
        result.data["note"] = note
        if settings["track"] and (mdm_path / "snapshots").is_dir():
            load = lambda p: ProbedModel.from_checkpoint(p, backend="torch", device=cfg.device)  # noqa: E731
            snaps = snapshots_of(mdm_path)
            result.data["track"] = track(
                ar,
                snaps,
                tasks=settings["track"],
                pool_size=min(50, options["pool_size"]),
                seed=cfg.seed,
                load=load,
                log=stages.log,
            )
        write_report(result, folder, title=f"{ar_source} vs its MDM")
        return {
            "claims": {
                k: {"verdict": c["verdict"], "interval": c["interval"]} for k, c in result.data["claims"].items()
            },
            "seconds": round(time.perf_counter() - started, 1),
            "pool_size": options["pool_size"],
        }

    parts = {
        "mdm": upstream,
        "options": options,
        "device": cfg.device,
        "twins": {r: key for r, (_, key) in twins.items()},
    }
    return stages.run(name, parts, work, outputs=("report.json",))


def _blocks_stage(
    cfg: StudyConfig,
    stages: Stages,
    ar_source: str,
    ar_record: StageRecord,
    full: tuple[Path, str],
    settings: Mapping[str, Any],
) -> StageRecord:
    """Convert at each block size (stages "mdm_block{B}") and compare the ARM with every MDM
    ("blocks": series.md / series.html over block size, one report per MDM)."""
    from analyses.compare import CompareOptions, compare_series, write_series
    from probe import ProbedModel

    paths: dict[str, tuple[Path, str]] = {}
    for b in sorted(set(cfg.block_sizes)):
        record = _mdm_stage(cfg, stages, ar_source, ar_record, settings, name=f"mdm_block{b}", attention=f"block:{b}")
        paths[f"block {b}"] = (stages.root / f"mdm_block{b}" / "model", record.key)
    paths["full"] = full
    options = {
        "tasks": tuple(settings["tasks"]),
        "seed": cfg.seed,
        **settings["compare"],
        **{"faithfulness": False, "ablations": False, "neurons": False, "causal": False, "denoising": ()},
        "null_pair": False,
    }

    main = stage_output(stages.root / "compare" / "report.json")
    floor = {
        t: e["controls"]["floor_ar"]["jaccard"] for t, e in main["tasks"].items() if "floor_ar" in e.get("controls", {})
    }

    def work(folder: Path) -> dict[str, Any]:
        load = lambda p: ProbedModel.from_checkpoint(p, backend="torch", device=cfg.device)  # noqa: E731
        mdms = {label: load(path) for label, (path, _) in paths.items()}
        result = compare_series(load(ar_source), mdms, CompareOptions(**options), floor=floor, log=stages.log)
        write_series(result, folder)
        return {"mdms": list(mdms)}

    parts = {
        "ar": ar_record.key,
        "mdms": {label: key for label, (_, key) in paths.items()},
        "options": options,
        "floor": floor,
    }
    return stages.run("blocks", parts, work, outputs=("series.json",))


def run_study(cfg: StudyConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the study; returns summary.json's content.

    `out` is claimed for the run (`ar2mdm.common.outputs.claim_output`): locked against a second
    study, and refused unless it is empty or an earlier study's folder (whose finished stages are
    reused), since stages replace their folders."""
    cfg = cfg.checked()
    out = Path(cfg.out).expanduser()
    with claim_output(out, "study", recognise=_is_study_folder) as claim:
        claim.mark()
        return _run_stages(cfg, out, log)


def _is_study_folder(folder: Path) -> bool:
    """A study folder written before owner records existed."""
    return (folder / "summary.json").is_file() or any(folder.glob("*/stage.json"))


def _run_stages(cfg: StudyConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    stages = Stages(out, cfg.force, log)
    settings = study_settings(cfg)
    t0 = time.perf_counter()
    ar_source, ar_record = _ar_stage(cfg, stages)
    mdm_record = _mdm_stage(cfg, stages, ar_source, ar_record, settings)
    mdm_path = out / "mdm" / "model"
    if cfg.model != "organism":
        log(
            f"[mdm] {cfg.model} conversion on this budget: {mdm_record.info.get('steps')} steps, "
            f"{mdm_record.info.get('tokens_seen', 0):,} tokens -- published conversions used 30-580 B tokens; "
            "this MDM is barely converted, and the comparison says what such a short conversion changes."
        )
    twins: dict[str, tuple[str, str]] = {}
    if cfg.seed_floor and cfg.model == "organism":
        twin_source, twin_record = _ar_twin_stage(cfg, stages, ar_source, ar_record)
        twins["ar"] = (twin_source, twin_record.key)
        twin_mdm = _mdm_stage(cfg, stages, ar_source, ar_record, settings, name="mdm_twin", seed_offset=1)
        twins["mdm"] = (str(out / "mdm_twin" / "model"), twin_mdm.key)
    _samplers_stage(cfg, stages, ar_source, mdm_path, mdm_record.key, settings)
    pilot = _compare_stage(cfg, stages, ar_source, mdm_path, mdm_record.key, settings, twins)
    compare_dir = "compare"
    power = None
    if cfg.power:
        report = stage_output(out / "compare" / "report.json")
        seconds = float(pilot.info.get("seconds") or pilot.seconds)
        left = cfg.budget * 60 - (time.perf_counter() - t0)
        if cfg.model != "organism":
            needed, target = needed_pool(report, None, CLAIM_A_HALF_WIDTH), f"claim (a) +/-{CLAIM_A_HALF_WIDTH}"
        else:
            needed, target = needed_pool(report), f"every task's Jaccard +/-{POWER_HALF_WIDTH}"
        power = plan_power(needed, int(pilot.info.get("pool_size", cfg.pool_size)), seconds, left)
        power["target"] = target
        log(f"[power] pool {power['pool']} for {target}: {power['reason']}")
        if power["run"]:
            _compare_stage(
                cfg, stages, ar_source, mdm_path, mdm_record.key, settings, twins,
                name="compare_power", pool_size=power["pool"],
            )  # fmt: skip
            compare_dir = "compare_power"
    if cfg.block_sizes:
        _blocks_stage(cfg, stages, ar_source, ar_record, (mdm_path, mdm_record.key), settings)
    summary = write_study_report(
        out, cfg.model, cfg.quick, stages.records, ar_source, mdm_path, compare_dir=compare_dir, power=power
    )
    summary["seconds"] = time.perf_counter() - t0
    log(f"study done in {summary['seconds']:.0f} s: {out / 'report.html'}")
    return summary


__all__ = ["StudyConfig", "print_summary", "run_study"]
