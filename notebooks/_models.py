"""The models the notebooks run on: taken from the cache, or made there once and reused.

Every notebook starts from an AR checkpoint and most from an MDM converted from it.

- `ar_source(AR)`: "organism" is the model organism `ar2mdm organism train` keeps in the cache.
  On a machine where it was never trained (a fresh clone, CI) a *small* organism is trained
  instead (`conversion.organism.train_organism` with `QUICK_ORGANISM`, a few hundred steps, about
  a minute on one core) into `cache_dir()/notebooks/organism-<key>`. Any other value (an HF
  folder, "smollm2", a .gguf file) is returned as it is.
- `mdm_source(ar, MDM)`: MDM, if given; else the AR checkpoint converted by
  `conversion.train.train` (SFT on the organism's task mixture, `QUICK_CONVERSION`) into
  `cache_dir()/notebooks/mdm-<key>`.
- `pools(ar, mdm, tasks, n)`: per task, the examples both models solve (`analyses.compare.
  common_pool`), or every aligned example when they share too few (quick models often do).
- `scratch(name)`: `cache_dir()/notebooks/<name>`, for anything else a notebook writes.

A key is a hash of everything the folder depends on (the settings, and for the MDM the AR
weights' sha256), so a changed setting makes a new folder and an unchanged one is reused: only
the first notebook that needs a model pays for it. The quick models solve few tasks; the
notebooks say so where it matters. Nothing is written inside the repository; the cache is
`$AR2MDM_CACHE` if set (`ar2mdm.common.env.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ar2mdm.common.env import cache_dir

if TYPE_CHECKING:
    from analyses.compare import Pool
    from probe import ProbedModel

# Without ipywidgets tqdm draws text progress bars in a notebook, which is all we need.
warnings.filterwarnings("ignore", message="IProgress not found")

# A smaller organism than the default (6 layers, d_model 128, MLP 384, batch 64): 3 layers (so
# depth analyses still have an early, middle and late third), MLP 256, batch 32, a few minutes.
QUICK_ORGANISM: dict[str, Any] = {
    "n_layers": 3,
    "d_model": 128,
    "n_heads": 4,
    "n_kv_heads": 4,
    "d_mlp": 256,
    "lr": 2e-3,
    "mixture": {"ioi": 8, "greater_than": 2, "induction": 8, "countdown": 8, "infilling": 2, "sudoku": 4},
    "eval_examples": 32,
    "eval_every": 0,
}
ORGANISM_STEPS = 300

# SFT on a few hundred examples per task written to a JSONL file: `data="tasks"` would render the
# whole 18,000-example mixture first (about a minute here) for a run this short.
QUICK_CONVERSION: dict[str, Any] = {
    "sft": True,
    "steps": 100,
    "seq_len": 96,
    "batch_size": 16,
    "lr": 1e-3,
    "warmup": 10,
    "log_every": 5,
}
EXAMPLES_PER_TASK = 300


def _key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def scratch(name: str) -> Path:
    """`cache_dir()/notebooks/<name>`: where the notebooks keep what they make."""
    return cache_dir() / "notebooks" / name


def ar_source(ar: str = "organism", *, steps: int = ORGANISM_STEPS, seed: int = 0) -> str:
    """A loadable AR source: `ar` itself, or a quick organism when "organism" is not trained yet."""
    from conversion.checkpoints import organism_folder

    if ar != "organism" or (organism_folder() / "config.json").is_file():
        return ar
    from conversion.organism import OrganismConfig, train_organism

    folder = scratch(f"organism-{_key({'config': QUICK_ORGANISM, 'steps': steps, 'seed': seed})}")
    if not (folder / "config.json").is_file():  # train_organism writes the folder atomically
        print(f"No trained organism in {organism_folder()}: training a small one ({steps} steps) into {folder}.")
        config = OrganismConfig(**QUICK_ORGANISM, threads=torch.get_num_threads())
        report = train_organism(out=folder, seed=seed, steps=steps, config=config, progress=False)
        print(f"done in {report.wall_seconds:.0f} s; held-out accuracy {report.accuracy}")
    return str(folder)


def mdm_source(ar: str, mdm: str | None = None, *, seed: int = 0) -> str:
    """`mdm` if given, else `ar` converted into an MDM (trained on first use, then cached)."""
    if mdm is not None:
        return mdm
    from ar2mdm.common.metadata import META_FILE
    from conversion.checkpoints import load_ar
    from conversion.organism import task_examples
    from conversion.train import TrainConfig, train

    ar_hash = load_ar(ar).meta.source_hash
    parts = {"ar": ar_hash, "train": QUICK_CONVERSION, "examples_per_task": EXAMPLES_PER_TASK, "seed": seed}
    folder = scratch(f"mdm-{_key(parts)}")
    if (folder / META_FILE).is_file():  # ar2mdm.json is written last: the folder is complete
        return str(folder)
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier run
    data = scratch(f"mdm-{_key(parts)}-data") / "sft.jsonl"  # beside the run: its folder holds only the run
    data.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": ex.prompt, "answer": ex.answer, "suffix": ex.suffix} for ex in task_examples(EXAMPLES_PER_TASK, seed)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"Converting {ar} into an MDM ({QUICK_CONVERSION['steps']} steps) in {folder}.")
    train(TrainConfig(model=ar, data=str(data), out=str(folder), seed=seed, **QUICK_CONVERSION))
    return str(folder)


def pools(
    ar: ProbedModel, mdm: ProbedModel, tasks: Sequence[str], n: int, *, minimum: int = 8, seed: int = 0
) -> dict[str, Pool]:
    """{task: analyses.compare.Pool} for two `ProbedModel`s: the common-correct pool of at most n
    examples, or, when it holds fewer than `minimum`, every aligned example (at most n). Tasks
    with no aligned example are left out, with a message."""
    from analyses.compare import common_pool, task_examples

    examples = task_examples(mdm, tasks, n, seed)
    out = {}
    for task in tasks:
        pool = common_pool(ar, mdm, task, examples[task], n)
        if len(pool) < minimum:
            print(
                f"{task}: both models solve only {len(pool)} of {pool.stats['aligned']} aligned examples "
                f"(ARM {pool.stats['accuracy_ar']:.2f}, MDM {pool.stats['accuracy_mdm']:.2f}); using every aligned example."
            )
            pool = common_pool(ar, mdm, task, examples[task], n, require_correct=False)
        if len(pool) == 0:
            print(f"{task}: no example renders aligned for both models; left out.")
            continue
        out[task] = pool
    return out
