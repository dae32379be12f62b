"""A conversion run's folder: its checkpoint, its log, and what a new run may do with it.

`conversion.train` claims the output folder (`ar2mdm.common.outputs.claim_output`: a lock for the
run's duration, and a refusal of any folder that is not an earlier conversion run), then asks
`plan_run` what to do with what is there:

    empty folder                         start at step 0
    an earlier run, --overwrite          remove its files, start at step 0
    an earlier run, --resume
        with a complete checkpoint       continue from it (same options; `steps` may grow)
        finished at >= steps             nothing to do (its MDM is there)
        finished, no checkpoint, more
        steps asked                      error: nothing to continue from; --overwrite
        damaged ar2mdm.json or
        checkpoint, nothing else         error naming the file: --overwrite
        no checkpoint at all             start at step 0 (a run killed before its first
                                         checkpoint, a diverged run, a failed start)
    an earlier run, neither flag         error that says which of the two to pass

So there is always a command that moves on, and nothing is removed without --overwrite.

Files: `checkpoint/` (model.safetensors, optimizer.safetensors + optimizer.json keyed by
parameter name, state.json written last), swapped in atomically (`checkpoint.old` is the previous
one while the new one moves in); `train.jsonl`, one JSON record per logged step, appended one
whole line at a time (`ar2mdm.common.jsonl`: a crash can only tear its last line, which a resume drops
before appending again; a line damaged anywhere else is a UserError naming it). A checkpoint
holds what training changes: every weight (and buffer) of a full conversion, only the trained
parameters when some are frozen (a LoRA conversion, `conversion.lora`: its frozen weights are
rebuilt from the source on resume).

`StopSignals` turns the first Ctrl-C (SIGINT) or SIGTERM during training into a request that
the loop honours at the end of the step: it writes a checkpoint and raises `TrainingInterrupted`,
whose message says what was kept and how to resume. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from ar2mdm.common.errors import CheckpointError, UserError
from ar2mdm.common.jsonl import (
    Records,
    append_record,
    damaged_line,
    read_json,
    read_records,
    rewrite_records,
    sync_file,
)
from ar2mdm.common.metadata import META_FILE, ModelMeta

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train.jsonl"
STATE_FORMAT = 2  # 2: optimizer state keyed by parameter name; 1 (read too): by parameter index
# Gathered, unsharded state dicts (on the main process; CPU tensors), whatever the wrapping.
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
# The same without frozen parameters: what a checkpoint holds.
TRAINED_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# Options that do not change what is trained: they may differ between a run and its resume. (A
# resume on another device continues the same run with that device's rounding and its own random
# stream for the noise draws; compile and the fused optimizer change rounding only.)
RESUMABLE_CHANGES = {
    "device",
    "compile",
    "peak_tflops",
    "max_minutes",
    "snapshot_every",
    "steps",
    "out",
    "resume",
    "overwrite",
    "eval_every",
    "eval_blocks",
    "save_every",
    "log_every",
}

# Options added after runs were written, with the value those runs had (they resume unchanged).
ADDED_OPTIONS: dict[str, Any] = {"lora": ""}


# --- what to do with the folder ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a run does with its folder. action: "fresh" (step 0; `clear` first removes the earlier
    run's files), "resume" (from `checkpoint`), or "done" (the finished MDM `meta` is already
    there). note: a line to show the user."""

    action: Literal["fresh", "resume", "done"]
    clear: bool = False
    checkpoint: Path | None = None
    meta: ModelMeta | None = None
    note: str | None = None


def plan_run(folder: Path, config: dict[str, Any], *, has_run: bool, resume: bool, overwrite: bool, steps: int) -> Plan:
    """Decide what to do with `folder` (see the module docstring). config: the run's options
    (`TrainConfig.to_json()`); has_run: the folder holds an earlier run's files."""
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite starts it over: pass one of them.")
    if not has_run:
        return Plan("fresh", note=f"nothing to resume in {folder}: starting at step 0." if resume else None)
    if overwrite:
        return Plan("fresh", clear=True, note=f"--overwrite: removing the earlier run in {folder}, starting at step 0.")
    ckpt = checkpoint_to_read(folder / CHECKPOINT_DIR)
    ckpt_step = checkpoint_step(ckpt) if ckpt is not None else None
    final, damaged = _final_meta(folder)
    final_step = int(final.extra.get("steps", -1)) if final is not None else None
    if not resume:
        held = ", ".join(
            x
            for x in (
                f"a checkpoint at step {ckpt_step}" if ckpt is not None else "no checkpoint",
                f"its MDM at step {final_step}" if final is not None else None,
                f"a damaged {META_FILE}" if damaged is not None else None,
            )
            if x
        )
        raise UserError(
            f"{folder} already holds a conversion run ({held}). Continue it with --resume (same options; "
            "--steps may grow), start it over with --overwrite, or choose another --out."
        )
    if (
        final is not None
        and final_step is not None
        and final_step >= steps
        and (ckpt_step is None or ckpt_step <= final_step)
    ):
        _check_same_options(final.extra.get("options", {}), config, f"{folder / META_FILE}")
        return Plan(
            "done", meta=final, note=f"{folder} already holds the finished MDM (step {final_step}); nothing to do."
        )
    if ckpt is not None:
        note = None
        if damaged is not None:
            note = (
                f"{damaged} Resuming from the checkpoint at step {ckpt_step} writes the MDM and its {META_FILE} again."
            )
        return Plan("resume", checkpoint=ckpt, note=note)
    if damaged is not None:
        raise UserError(
            f"{damaged} The run has no training checkpoint ({CHECKPOINT_DIR}/) to continue from, so its MDM cannot "
            f"be written again: start over with --overwrite, or restore {folder / META_FILE}."
        )
    if final is not None:
        raise UserError(
            f"{folder} holds an MDM finished at step {final_step} but no checkpoint (save_every was 0), so it cannot "
            f"be continued to step {steps}. Start over with --overwrite (and --save-every N to allow resuming), "
            "or choose another --out."
        )
    return Plan(
        "fresh",
        clear=True,
        note=f"{folder} holds no checkpoint (save_every was 0, or the run stopped before its first one): starting at step 0.",
    )


def _final_meta(folder: Path) -> tuple[ModelMeta | None, str | None]:
    """(the run's finished MDM's metadata or None, why its ar2mdm.json is unreadable or None)."""
    if not (folder / META_FILE).is_file():
        return None, None
    try:
        return ModelMeta.load(folder), None
    except CheckpointError as err:  # a hand edit or a disk error: ar2mdm.json is written atomically
        return None, str(err)


def _check_same_options(saved: dict[str, Any], now: dict[str, Any], where: str) -> None:
    saved = {**ADDED_OPTIONS, **saved}
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed == ["source_hash"]:  # recorded by LoRA runs, whose checkpoints lack the frozen weights
        raise UserError(
            f"cannot resume {where}: the source model's weights changed since this LoRA checkpoint was written "
            f"(sha256 {str(saved.get('source_hash'))[:12]}..., now {str(now['source_hash'])[:12]}...); it holds only "
            "the adapters and the mask row, so it needs the same source. Restore it, or start over with --overwrite."
        )
    changed = [k for k in changed if k != "source_hash"]  # with other changes, those are the news
    if changed:
        raise UserError(
            f"cannot resume {where}: options {changed} differ from the run's "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); resume with the same options, "
            "or start over with --overwrite."
        )


# --- checkpoints ---------------------------------------------------------------------------------


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's AcceleratedOptimizer wrapper (if any)."""
    return getattr(optimizer, "optimizer", optimizer)


def save_checkpoint(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    step: int,
    tokens_seen: int,
    ckpt_dir: Path,
) -> None:
    """Write model, optimizer and step into a temp folder, then swap it in (all processes call).

    Both state dicts are gathered in full (collectives: every process must call), so a checkpoint
    is the same whatever the wrapping (plain, DDP, FSDP1/2) and number of processes. Frozen
    parameters are left out (they are the source's; `load_checkpoint` checks the rest is there).
    """
    state_dict = get_model_state_dict(model, options=TRAINED_STATE)
    # torch keeps the second name of a frozen tied parameter (a tied head under LoRA): drop it too
    frozen = _parameter_names(accelerator.unwrap_model(model), trained=False)
    state_dict = {k: v for k, v in state_dict.items() if k not in frozen}
    opt_state = get_optimizer_state_dict(model, inner_optimizer(optimizer), options=FULL_STATE)
    if accelerator.is_main_process:
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=ckpt_dir.parent))
        # Clones: tied weights share storage, which safetensors refuses; strict reload needs all keys.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, tmp / "model.safetensors")
        tensors, meta = _flatten_optimizer(opt_state)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        state = {"format": STATE_FORMAT, "step": step, "tokens_seen": tokens_seen, "config": config}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # last: marks completeness
        _swap_in(tmp, ckpt_dir)
    accelerator.wait_for_everyone()


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temp folders of checkpoint saves that were killed."""
    for stale in folder.glob(".checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`; at every instant `final` or `final.old` is a complete checkpoint."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_to_read(ckpt_dir: Path) -> Path | None:
    """The complete checkpoint folder (`checkpoint`, else `checkpoint.old`), or None."""
    for folder in (ckpt_dir, ckpt_dir.with_name(ckpt_dir.name + ".old")):
        if (folder / "state.json").is_file():
            return folder
    return None


def _damaged_checkpoint(folder: Path) -> str:
    """What to do about a damaged file of checkpoint `folder` (the end of its UserError)."""
    return (
        f"The checkpoint in {folder} cannot be resumed from (it is written whole, so a disk error or an edit "
        "damaged it): start the run over with --overwrite."
    )


def _state(folder: Path) -> dict[str, Any]:
    path = folder / "state.json"
    state = read_json(path, remedy=_damaged_checkpoint(folder), what="the checkpoint's state")
    try:
        int(state["step"]), int(state["tokens_seen"])
        dict(state["config"])
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{path} is damaged (it lacks a valid step, tokens_seen or config). {_damaged_checkpoint(folder)}"
        ) from None
    return state


def checkpoint_step(folder: Path) -> int:
    """The step of the checkpoint in `folder` (UserError if its state.json is damaged)."""
    return int(_state(folder)["step"])


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, or a UserError saying it is damaged."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing. {_damaged_checkpoint(path.parent)}") from None
    except Exception as err:  # safetensors' own error: a truncated or overwritten file
        raise UserError(f"{path} is damaged ({err}). {_damaged_checkpoint(path.parent)}") from None


def load_checkpoint(folder: Path, model: torch.nn.Module, config: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """Load the weights of checkpoint `folder` into `model` (unwrapped); return (step,
    tokens_seen, full optimizer state dict keyed by parameter name, for `set_optimizer_state_dict`).

    Raises UserError when the checkpoint was written by another format or with options that
    change the trajectory (`RESUMABLE_CHANGES` may differ)."""
    state = _state(folder)
    if state.get("format") not in (1, STATE_FORMAT):
        raise UserError(f"{folder} was written by another ar2mdm version (format {state.get('format')}).")
    _check_same_options(state["config"], config, str(folder))
    weights = _load_tensors(folder / "model.safetensors")
    frozen = _parameter_names(model, trained=False)
    result = model.load_state_dict(weights, strict=False)
    # Everything, or with frozen weights (the source's, already in place) the trained parameters.
    required = set(model.state_dict()) if not frozen else _parameter_names(model, trained=True)
    lacking = sorted(required.intersection(result.missing_keys))
    if result.unexpected_keys or lacking:
        raise UserError(
            f"{folder} does not fit the model being trained (unexpected {sorted(result.unexpected_keys)[:3]}, "
            f"missing {lacking[:3]}); resume with the options it was written with, or start over with --overwrite."
        )
    tensors = _load_tensors(folder / "optimizer.safetensors")
    meta = read_json(folder / "optimizer.json", remedy=_damaged_checkpoint(folder), what="the optimizer's state")
    try:
        opt_state = _unflatten_optimizer(tensors, meta)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(
            f"{folder / 'optimizer.json'} does not fit {folder / 'optimizer.safetensors'}. {_damaged_checkpoint(folder)}"
        ) from None
    if state["format"] == 1:  # keyed by index into model.parameters(): the optimizer's order
        names = [name for name, _ in model.named_parameters()]
        opt_state = {
            "state": {names[int(i)]: v for i, v in opt_state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in opt_state["param_groups"]],
        }
    return int(state["step"]), int(state["tokens_seen"]), opt_state


def _parameter_names(model: torch.nn.Module, *, trained: bool) -> set[str]:
    """Names (tied aliases included) of the parameters of `model` that train (trained=True) or
    that are frozen (False)."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad == trained}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest.

    Tensor names are "<parameter>.<state key>" (state keys such as exp_avg hold no dot)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        rest[str(pid)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                rest[str(pid)][key] = value
    return tensors, {"state": rest, "param_groups": state_dict["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {pid: dict(rest) for pid, rest in meta["state"].items()}
    for name, value in tensors.items():
        pid, key = name.rsplit(".", 1)
        state.setdefault(pid, {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --- the log -------------------------------------------------------------------------------------


LOG_REMEDY = (
    "Delete that line (the log only records the curves; training resumes from checkpoint/), or start the run "
    "over with --overwrite."
)


class RunLog:
    """The run's append-only JSONL log (`ar2mdm.common.jsonl`), on the main process.

    On resume (keep_until: the checkpoint's step) the log is rewritten as the whole records up to
    that step, so a torn last line and the records of steps the resumed run repeats are dropped
    before anything is appended; a damaged line before the last is a UserError naming it. torn:
    what was dropped from the end, or None."""

    def __init__(self, path: Path, *, keep_until: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.history: list[dict[str, Any]] = []
        self.torn: str | None = None
        if not enabled:
            return
        if path.exists():
            found = _read(path)
            self.history = [r for r in found.records if r["step"] <= keep_until]
            self.torn = found.torn
            rewrite_records(path, self.history)
        elif keep_until == 0:
            rewrite_records(path, [])

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (one whole line, one write)."""
        if not self.enabled:
            return
        self.history.append(record)
        append_record(self.path, record)

    def sync(self) -> None:
        """Force the log to disk (called at checkpoints)."""
        if self.enabled:
            sync_file(self.path)


def _read(path: Path) -> Records:
    """The whole records of a run's log; each must carry an integer step."""
    found = read_records(path, remedy=LOG_REMEDY)
    for lineno, record in zip(found.lines, found.records, strict=True):
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise damaged_line(path, lineno, f"no integer step, got {step!r}", LOG_REMEDY)
    return found


def last_record(history: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The last record of `kind` ("train", "eval", "stop") in a log's records, or None."""
    return next((r for r in reversed(history) if r.get("kind") == kind), None)


def read_log(folder: Path) -> list[dict[str, Any]]:
    """The whole records of `folder/train.jsonl` (empty if there is none; a torn last line is
    left out, a damaged earlier line is a UserError naming it). Reads only: the file is left as
    it is."""
    return _read(folder / LOG_FILE).records


# --- signals -------------------------------------------------------------------------------------


class StopSignals:
    """Context manager: the first SIGINT / SIGTERM sets `requested` instead of killing the run.

    The training loop checks `requested` at the end of every step. A second SIGINT raises
    KeyboardInterrupt at once (the user insists); the previous handlers come back on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
