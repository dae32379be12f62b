"""Held-out evaluation of the model organism: greedy accuracy per task, the IOI logit difference
and the clean - corrupt logit-difference gap per task, for an organism being trained
(`conversion.organism`) or any organism checkpoint, AR or MDM (`evaluate_checkpoint`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ar2mdm.common.errors import UserError
from ar2mdm.tasks import Example, Task
from ar2mdm.tasks.evaluate import greedy_accuracy, logit_metrics
from conversion.organism_data import build_tasks, held_out_sets, is_organism


def ioi_logit_diff(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, examples: Sequence[Example]) -> float:
    """Mean logit(IO) - logit(S) at the last prompt position (AR reading)."""
    model.eval()
    with torch.no_grad():
        return float(logit_metrics(model, tokenizer, list(examples), batch_size=64)["mean_logit_diff"])


def ld_gaps(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, eval_sets: Mapping[str, Sequence[Example]]
) -> dict[str, float]:
    """Per task: mean clean minus mean corrupted logit difference over its examples (AR reading,
    first answer token; `ar2mdm.tasks.evaluate.logit_metrics`). Tasks without counterfactuals are left out."""
    model.eval()
    out: dict[str, float] = {}
    for name, exs in eval_sets.items():
        if not exs or not all(ex.counterfactual for ex in exs):
            continue
        m = logit_metrics(model, tokenizer, list(exs), batch_size=64, corrupted=True)
        out[name] = round(m["mean_logit_diff"] - m["corrupted_mean_logit_diff"], 4)
    return out


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    tasks: Mapping[str, Task],
    eval_sets: Mapping[str, Sequence[Example]],
    n: int | None = None,
) -> dict[str, float]:
    """Held-out greedy accuracy per task on the first `n` (default all) evaluation examples.

    Greedy decoding from the AR prompt until <eos> (or the reference length + 4 tokens), checked by
    `task.check` (`ar2mdm.tasks.evaluate.greedy_accuracy`).
    """
    model.eval()
    return {
        name: greedy_accuracy(model, tokenizer, tasks[name], eval_sets[name][:n], batch_size=64) for name in eval_sets
    }


def evaluate_checkpoint(
    source: str | Path, *, n: int = 200, eval_seed: int = 0, steps: int | None = None
) -> dict[str, float]:
    """Held-out accuracy per task of an organism checkpoint, AR or MDM, on the organism's eval sets.

    An AR checkpoint is scored by greedy decoding (`evaluate`); an MDM (a folder with ar2mdm.json
    of kind "mdm") by confidence-ordered filling of the masked answer span
    (`ar2mdm.tasks.evaluate.mdm_fill_accuracy`, one token per model call unless `steps` is given).
    The evaluation sets are the ones `train_organism` held out (same `eval_seed`), so an MDM
    converted with `--data tasks` is scored on prompts it never saw.

    Raises UserError, before the model is loaded, when `source` is not an organism: "organism",
    a folder `train_organism` wrote, or an MDM converted from one (`not_an_organism`); and
    CheckpointError for a source that cannot be loaded.
    """
    from ar2mdm.tasks.evaluate import mdm_fill_accuracy
    from conversion.checkpoints import load_any

    why = not_an_organism(source)
    if why is not None:
        raise UserError(
            f"{source} is not a model organism: {why}. `ar2mdm organism eval` scores the organism's held-out "
            "task sets, which only an organism reads: pass 'organism', a folder `ar2mdm organism train` wrote, or "
            f"an MDM converted from one. Score any other checkpoint with `ar2mdm eval --model {source}`."
        )
    loaded = load_any(source)
    is_mdm = loaded.meta.kind == "mdm"
    tasks = build_tasks(loaded.tokenizer)
    eval_sets = held_out_sets(build_tasks(), n, eval_seed)
    if not is_mdm:
        return evaluate(loaded.model, loaded.tokenizer, tasks, eval_sets)
    return {
        name: mdm_fill_accuracy(
            loaded.model, loaded.tokenizer, tasks[name], exs, loaded.meta, steps=steps, batch_size=64
        )
        for name, exs in eval_sets.items()
    }


def not_an_organism(source: str | Path) -> str | None:
    """Why `source` is not an organism checkpoint, or None when it is one: "organism", a folder
    `train_organism` wrote (`organism_data.is_organism`), or an MDM whose ar2mdm.json names such a
    source. Reads the checkpoint's metadata only (nothing is loaded); a source that does not exist
    passes, for the loader to report."""
    from ar2mdm.common.metadata import META_FILE, ModelMeta, checkpoint_kind
    from conversion.checkpoints import KNOWN_NAMES

    if is_organism(source):
        return None
    path = Path(str(source)).expanduser()
    if str(source) in KNOWN_NAMES:
        return f"{source!r} is a built-in model, not the organism"
    if not path.exists():
        return None
    if checkpoint_kind(source) == "ar":
        return "it holds no report.json of `ar2mdm organism train` (its task options)"
    if not (path / META_FILE).is_file():
        return "it is a published MDM, not a conversion of an organism"
    origin = ModelMeta.load(path).source
    if is_organism(origin):
        return None
    return f"it is an MDM converted from {origin or 'an unrecorded source'}, which is not an organism"
