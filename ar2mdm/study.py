"""The study: from an AR checkpoint to a mechanism report, in cached stages.

`run_study(StudyConfig(...))` (CLI: `ar2mdm study`) runs, each stage in its own folder under
`out`:

    ar        the ARM: the model organism (taken from the cache if trained before, else trained
              with a fixed step count) or SmolLM2-135M-Instruct (fetched offline on first use)
    mdm       conversion into an MDM (`conversion.train`; SFT on the task mixture for the
              organism, masked diffusion on the SOTU corpus for SmolLM2, which only a time budget
              allows on a CPU), with checkpoints for resume and snapshots for tracking
    samplers  task accuracy against NFE for the MDM's samplers and the ARM's greedy decoding
              (`analyses.generation`)
    compare   ARM vs MDM on a common-correct pool: circuits, depth, units, the reference study's
              claims (`analyses.compare`), and the conversion's snapshots tracked
    report    report.html (self-contained) and summary.json in `out`, a summary table printed

Each stage writes `stage.json` last, holding a key made of its options and the identity of its
inputs (weight hashes, upstream keys); a stage whose key is unchanged is skipped, so a rerun
after a crash resumes at the stage that did not finish (the conversion itself resumes from its
last checkpoint). `force` reruns everything.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.outputs import atomic_write_text, claim_output
from conversion.organism_data import TASK_NAMES as ORGANISM_TASKS

MODELS = ("organism", "smollm2")


@dataclass
class StudyConfig:
    """out: the study folder. model: "organism" (the embedded default) or "smollm2".
    budget: minutes for the whole SmolLM2 study on this machine (the conversion gets 40%, the
    comparison's pool is sized from it).
    ar_steps: organism training steps when no organism is cached. convert_steps: conversion
    steps (organism; SmolLM2 runs until its share of the budget is spent). pool_size: at most this
    many common-correct examples per task. n: examples per task for the sampler evaluation.
    device: "cpu" or "cuda" (analyses; training uses accelerate's device). quick: tiny settings
    everywhere (tests, a smoke run; the numbers mean nothing). force: rerun every stage."""

    out: str | Path = "study"
    model: str = "organism"
    budget: float = 30.0
    ar_steps: int = 1500
    convert_steps: int = 600
    pool_size: int = 100
    n: int = 50
    n_boot: int = 500
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    force: bool = False

    def checked(self) -> StudyConfig:
        if self.model not in MODELS:
            raise UserError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}.")
        for name in ("ar_steps", "convert_steps", "pool_size", "n", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.budget > 0:
            raise UserError(f"--budget must be a positive number of minutes, got {self.budget}.")
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda, got {self.device!r}.")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError("--device cuda, but torch sees no CUDA device here; use --device cpu.")
        return self


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" | "cached"
    seconds: float
    key: str
    info: dict[str, Any] = field(default_factory=dict)


def _key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs stages in folders under `root`, skipping those whose stage.json holds the same key."""

    def __init__(self, root: Path, force: bool, log: Callable[[str], None]) -> None:
        self.root, self.force, self.log = root, force, log
        self.records: list[StageRecord] = []

    def run(
        self, name: str, parts: Mapping[str, Any], work: Callable[[Path], dict[str, Any]], *, keep_partial: bool = False
    ) -> StageRecord:
        """work(folder) -> info (JSON-able), run unless folder/stage.json has this key.
        keep_partial: leave an unfinished folder in place for `work` to resume from."""
        folder = self.root / name
        key = _key(parts)
        marker = folder / "stage.json"
        if marker.is_file() and not self.force:
            done = json.loads(marker.read_text())
            if done.get("key") == key:
                self.log(f"[{name}] unchanged inputs: cached ({folder})")
                record = StageRecord(name, "cached", 0.0, key, done.get("info", {}))
                self.records.append(record)
                return record
        if folder.exists() and (marker.is_file() or self.force or not keep_partial):
            shutil.rmtree(folder)  # stale: other inputs, or a finished run to redo
        folder.mkdir(parents=True, exist_ok=True)
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        info = work(folder)
        seconds = time.perf_counter() - t0
        atomic_write_text(
            marker, json.dumps({"key": key, "parts": parts, "info": info, "seconds": seconds}, indent=1, default=str)
        )
        record = StageRecord(name, "ran", seconds, key, info)
        self.records.append(record)
        self.log(f"[{name}] done in {seconds:.0f} s")
        return record


# --- settings per model -----------------------------------------------------------------------------


def _settings(cfg: StudyConfig) -> dict[str, Any]:
    """What each stage runs with, by model and quick mode."""
    if cfg.model == "organism":
        s = {
            "tasks": list(ORGANISM_TASKS),  # what the organism was trained on
            "sampler_tasks": ["ioi", "countdown"],
            "train": {
                "data": "tasks",
                "sft": True,
                "steps": cfg.convert_steps,
                "seq_len": 96,
                "batch_size": 32,
                "lr": 5e-4,
                "warmup": 50,
                "save_every": 100,
                "snapshot_every": max(1, cfg.convert_steps // 4),
                "log_every": 10,
            },
            "compare": {"pool_size": cfg.pool_size, "n_boot": cfg.n_boot, "n_random": 3},
            "track": ["ioi", "countdown"],
        }
    else:
        s = {
            "tasks": ["ioi", "greater_than", "countdown"],
            "sampler_tasks": ["ioi", "countdown"],
            "train": {
                "data": "sotu",
                "steps": 100_000,
                "seq_len": 128,
                "batch_size": 8,
                "lr": 1e-4,
                "warmup": 20,
                "save_every": 25,
                "log_every": 5,
                "max_minutes": cfg.budget * 0.4,
            },
            # measured on 2 busy cores: ~7 min per task for 40 examples (EAP-IG, m = 5, both models)
            "compare": {
                "pool_size": min(cfg.pool_size, max(8, int(cfg.budget / 2))),
                "n_boot": cfg.n_boot,
                "n_random": 2,
                "denoising": (1.0, 0.0),
                "faithfulness": False,
                "causal": False,
                "batch_size": 8,
            },
            "track": [],
        }
    if cfg.quick:
        s["train"].update({"steps": 12, "save_every": 4, "snapshot_every": 6, "max_minutes": 0.0})
        s["compare"].update(
            {
                "pool_size": 8,
                "n_boot": 50,
                "n_random": 1,
                "denoising": (1.0, 0.0),
                "faithfulness": False,
                "common_correct": False,
            }
        )
        s["tasks"] = ["ioi", "greater_than", "countdown"]
        s["sampler_tasks"] = ["ioi"]
        s["track"] = ["ioi"]
    return s


# --- stages -----------------------------------------------------------------------------------------


def _ar_stage(cfg: StudyConfig, stages: Stages) -> tuple[str, StageRecord]:
    """The ARM's source string and its stage record (key: the weights' hash)."""
    from conversion.checkpoints import load_ar

    if cfg.model == "smollm2":
        from conversion.checkpoints import smollm2_folder

        source = str(smollm2_folder())
    else:
        from conversion.organism import OrganismConfig, default_organism_dir, train_organism

        cached = default_organism_dir()
        if cfg.quick:
            source = str(stages.root / "ar" / "model")
            quick = OrganismConfig(eval_examples=8, eval_every=0)
            record = stages.run(
                "ar",
                {"quick": True, "steps": 40, "seed": cfg.seed},
                lambda folder: _train_organism(train_organism, folder / "model", 40, cfg.seed, quick),
            )
            return source, record
        if (cached / "config.json").is_file():
            source = "organism"
        else:
            stages.log(f"no cached organism at {cached}: training one ({cfg.ar_steps} steps, a few minutes on 2 cores)")
            t0 = time.perf_counter()
            report = train_organism(out=cached, seed=cfg.seed, steps=cfg.ar_steps)
            stages.records.append(
                StageRecord(
                    "organism training",
                    "ran",
                    time.perf_counter() - t0,
                    "-",
                    {"accuracy": report.accuracy, "steps": report.steps, "out": str(cached)},
                )
            )
            source = "organism"
    meta = load_ar(source).meta
    record = stages.run(
        "ar", {"source": source, "hash": meta.source_hash}, lambda folder: {"source": source, "hash": meta.source_hash}
    )
    return source, record


def _train_organism(
    train_organism: Callable[..., Any], out: Path, steps: int, seed: int, config: Any
) -> dict[str, Any]:
    report = train_organism(out=out, seed=seed, steps=steps, config=config, progress=False)
    return {"accuracy": report.accuracy, "steps": report.steps}


def _mdm_stage(
    cfg: StudyConfig, stages: Stages, ar_source: str, ar_record: StageRecord, settings: Mapping[str, Any]
) -> StageRecord:
    from conversion.train import TrainConfig, train

    options = dict(settings["train"])

    def work(folder: Path) -> dict[str, Any]:
        out = folder / "model"
        resume = (out / "checkpoint" / "state.json").is_file() or (out / "checkpoint.old").is_dir()
        if resume:
            stages.log(f"[mdm] resuming the interrupted conversion from {out / 'checkpoint'}")
        elif out.exists():
            shutil.rmtree(out)
        result = train(TrainConfig(model=ar_source, out=str(out), seed=cfg.seed, resume=resume, **options))
        return {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "final_loss": result.final_loss,
            "seconds_budget": options.get("max_minutes", 0.0) * 60,
        }

    return stages.run("mdm", {"ar": ar_record.key, "train": options, "seed": cfg.seed}, work, keep_partial=True)


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
    return stages.run("samplers", parts, work)


def _compare_stage(
    cfg: StudyConfig, stages: Stages, ar_source: str, mdm_path: Path, upstream: str, settings: Mapping[str, Any]
) -> StageRecord:
    from analyses.compare import CompareOptions, compare, snapshots_of, track, write_report
    from probe import ProbedModel

    options = {"tasks": tuple(settings["tasks"]), "seed": cfg.seed, **settings["compare"]}

    def work(folder: Path) -> dict[str, Any]:
        ar = ProbedModel.from_checkpoint(ar_source, backend="torch", device=cfg.device)
        mdm = ProbedModel.from_checkpoint(mdm_path, backend="torch", device=cfg.device)
        opts = CompareOptions(**options)
        note = None
        try:
            result = compare(ar, mdm, opts, labels={"ar": ar_source, "mdm": str(mdm_path)}, log=stages.log)
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
                labels={"ar": ar_source, "mdm": str(mdm_path)},
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
            }
        }

    return stages.run("compare", {"mdm": upstream, "options": options, "device": cfg.device}, work)


# --- report -----------------------------------------------------------------------------------------


def summary_table(compare_data: Mapping[str, Any], sampler_rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Per task: pool accuracies, low-confidence and ARM sampling accuracy, Jaccard, early mass."""
    from analyses.compare import summary_rows

    rows = summary_rows(compare_data)
    by = {(r["task"], r["sampler"]): r for r in sampler_rows if r.get("fraction") in (1.0, None)}
    for row in rows:
        lc, arm = by.get((row["task"], "low-confidence")), by.get((row["task"], "ar (the ARM)"))
        row["MDM sampling acc"] = f"{lc['accuracy']:.2f}" if lc else "-"
        row["ARM greedy acc"] = f"{arm['accuracy']:.2f}" if arm else "-"
    return rows


def write_study_report(
    out: Path, cfg: StudyConfig, records: list[StageRecord], ar_source: str, mdm_path: Path
) -> dict[str, Any]:
    from analyses.compare import format_interval, report_html, table_html
    from analyses.generation import EvalRow, figure
    from conversion.report import training_figure

    compare_data = json.loads((out / "compare" / "report.json").read_text())
    sampler_rows = json.loads((out / "samplers" / "results.json").read_text())["rows"]
    mdm_info = next(r.info for r in records if r.name == "mdm")
    tokens = mdm_info.get("tokens_seen", 0)
    stage_rows = [{"stage": r.name, "status": r.status, "seconds": f"{r.seconds:.0f}", "key": r.key} for r in records]
    lines = [
        f"<p>Model <b>{html.escape(cfg.model)}</b>: ARM <code>{html.escape(ar_source)}</code>, converted by "
        f"{mdm_info.get('steps')} steps ({tokens:,} tokens) into <code>{html.escape(str(mdm_path))}</code>.</p>"
    ]
    if cfg.model == "smollm2":
        lines.append(
            f"<p><b>How little conversion this is:</b> {tokens:,} tokens on this machine's budget; published conversions "
            "used about 30 B (DiffuGPT), 65 B (DiffuLLaMA) and 580 B (Dream) tokens. Read the MDM side as a barely "
            "converted model.</p>"
        )
    if cfg.quick:
        lines.append("<p><b>Quick mode:</b> tiny training and pools; the numbers only show that the pipeline runs.</p>")
    if compare_data.get("note"):
        lines.append(f"<p><b>Note:</b> {html.escape(compare_data['note'])}</p>")
    lines += [
        "<h2>Stages</h2>",
        table_html(stage_rows),
        "<h2>Summary</h2>",
        table_html(summary_table(compare_data, sampler_rows)),
    ]
    extra = {
        "samplers: accuracy against NFE": figure([EvalRow(**r) for r in sampler_rows]),
        "conversion: training curves": training_figure(mdm_path / "train.jsonl", title="conversion"),
    }
    page = report_html(compare_data, title=f"ar2mdm study: {cfg.model}", extra_figures=extra, sections=lines)
    atomic_write_text(out / "report.html", page)
    summary = {
        "model": cfg.model,
        "ar": ar_source,
        "mdm": str(mdm_path),
        "conversion": mdm_info,
        "stages": [asdict(r) for r in records],
        "claims": {
            k: {"verdict": c["verdict"], "effect": c["effect"], "interval": c["interval"]}
            for k, c in compare_data["claims"].items()
        },
        "table": summary_table(compare_data, sampler_rows),
        "claims_text": {
            k: f"{c['claim']} -- {c['verdict'].upper()}: {c['effect']} = {format_interval(c['interval'], 3)}"
            for k, c in compare_data["claims"].items()
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def run_study(cfg: StudyConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the study; returns summary.json's content.

    `out` is claimed for the run (`common.outputs.claim_output`): locked against a second
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
    settings = _settings(cfg)
    t0 = time.perf_counter()
    ar_source, ar_record = _ar_stage(cfg, stages)
    mdm_record = _mdm_stage(cfg, stages, ar_source, ar_record, settings)
    mdm_path = out / "mdm" / "model"
    if cfg.model == "smollm2":
        log(
            f"[mdm] SmolLM2 conversion on this budget: {mdm_record.info.get('steps')} steps, "
            f"{mdm_record.info.get('tokens_seen', 0):,} tokens -- published conversions used 30-580 B tokens; "
            "this MDM is barely converted, and the comparison says what such a short conversion changes."
        )
    _samplers_stage(cfg, stages, ar_source, mdm_path, mdm_record.key, settings)
    _compare_stage(cfg, stages, ar_source, mdm_path, mdm_record.key, settings)
    summary = write_study_report(out, cfg, stages.records, ar_source, mdm_path)
    summary["seconds"] = time.perf_counter() - t0
    log(f"study done in {summary['seconds']:.0f} s: {out / 'report.html'}")
    return summary


def print_summary(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))  # the table is wide; a pipe reports 80 columns
    rows = summary["table"]
    if rows:
        table = Table(title=f"ARM vs MDM ({summary['model']}): common-correct pool per task")
        for col in rows[0]:
            table.add_column(col, justify="left" if col in ("task", "kind") else "right")
        for r in rows:
            table.add_row(*r.values())
        console.print(table)
    for key, text in summary["claims_text"].items():
        console.print(f"claim ({key}): {text}", markup=False, highlight=False)
