"""The study's options (`StudyConfig`, checked) and what each stage runs with, per model
(`settings`): the organism's recipe, and the route of a pretrained ARM (SmolLM2, a hub id or an HF
folder: conversion on SOTU within the time budget). `analyses.app.study` runs the stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ar2mdm.common.errors import UserError
from ar2mdm.common.hub import parse_hub_id
from conversion.organism_data import TASK_NAMES as ORGANISM_TASKS

MODELS = ("organism", "smollm2")  # the built-in names; a hub id or an HF folder takes SmolLM2's route


@dataclass
class StudyConfig:
    """out: the study folder. model: "organism" (the embedded default), "smollm2", or any pretrained
    ARM by hub id ("org/name[@revision]") or HF folder, which takes SmolLM2's route (conversion on
    SOTU within the budget, no seed floor).
    budget: minutes for the whole study on this machine (SmolLM2: the conversion gets 40%, the
    comparison's pool is sized from it; with `power`, whether the larger pool fits).
    ar_steps: organism training steps when no organism is cached. convert_steps: conversion
    steps (organism; SmolLM2 runs until its share of the budget is spent). pool_size: at most this
    many common-correct examples per task. n: examples per task for the sampler evaluation.
    device: "cpu" or "cuda", for training and analyses. quick: tiny settings
    everywhere (tests, a smoke run; the numbers mean nothing). force: rerun every stage.
    seed_floor: (organism) also train an ARM' and convert an MDM' alike with seed + 1, the seed
    floor every claim is read against (`analyses.compare.controls`); SmolLM2 has none (one
    published ARM), and its report says so. block_sizes: (organism) also convert the ARM with
    block diffusion at each block size B (`--attention block:B`, same recipe) and compare the
    ARM with each MDM and the full-length one (`analyses.compare.compare_series`, stage
    "blocks": Jaccard with the ARM, early mass and accuracy against block size).
    power: after the comparison, compute the pool each task needs for a Jaccard interval of
    +/-`POWER_HALF_WIDTH` (organism) or that claim (a) needs for +/-`CLAIM_A_HALF_WIDTH`
    (SmolLM2) (`analyses.statistics.pool_for_width`) and, when the comparison at that
    pool fits in what is left of `budget` minutes (estimated from the first comparison's time,
    linear in the pool), rerun it there (stage "compare_power", which the report then reads);
    either way summary.json says what was needed and what was done ("power").
    experts: (organism) an organism whose MLPs are mixtures of this many experts (top-2; a
    Mixtral, `conversion.organism_model`), cached in its own folder beside the dense organism;
    the comparison then reports routing (`analyses.compare.routing`). 0: the dense organism."""

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
    seed_floor: bool = True
    block_sizes: tuple[int, ...] = ()
    power: bool = False
    experts: int = 0

    def checked(self) -> StudyConfig:
        if self.model not in MODELS and parse_hub_id(self.model) is None and not Path(self.model).expanduser().is_dir():
            raise UserError(
                f"--model must be one of {', '.join(MODELS)}, a hub id (org/name[@revision]) or an HF model folder; "
                f"got {self.model!r}, which is none of these."
            )
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.block_sizes):
            raise UserError(f"block sizes must be positive integers, got {list(self.block_sizes)}.")
        if self.experts and (self.model != "organism" or self.experts < 2):
            raise UserError(
                f"--experts {self.experts}: a mixture-of-experts organism needs --model organism and at least 2 experts."
            )
        if self.block_sizes and self.model != "organism":
            raise UserError("--block-sizes converts the organism at each block size; use it with --model organism.")
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


# --- settings per model -----------------------------------------------------------------------------


def settings(cfg: StudyConfig) -> dict[str, Any]:
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
