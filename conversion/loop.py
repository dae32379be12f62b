"""The one training loop of ar2mdm: `fit`.

Everything ar2mdm trains runs through it: the conversion of an ARM into an MDM
(`conversion.train`: the diffusion objective on accelerate, one process or many) and the model
organism trained from scratch (`conversion.organism`: a weighted next-token loss on the task
mixture). What every optimizer step shares lives here, in this order:

1. the step's learning rate (`Trainer.lr`, from the step and the time spent so far), set on
   every parameter group;
2. the step's forward and backward passes (`Trainer.gradients`: any number of accumulation
   micro-steps, any split over processes), which return the step's loss;
3. a stop on a NaN or infinite loss (`Trainer.diverged` makes the error);
4. gradient clipping (and a stop on a non-finite gradient norm), the optimizer step, and the
   gradients cleared;
5. the caller's bookkeeping (`Trainer.after_step`: logging, evaluation, checkpoints, snapshots,
   progress), which may end the run (a time budget, Ctrl-C).

Time: `Clock.train_seconds` counts steps 1-4 only (evaluation and checkpoints excluded, the
organism's budget); `Clock.wall_seconds` counts everything since the loop began (the conversion's
`--max-minutes`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class StepOutput:
    """What one optimizer step's forward and backward passes report. loss: the step's loss (over
    every process); tokens: real tokens trained on; stats: anything else to log."""

    loss: float
    tokens: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Clock:
    """Time since the loop began (`wall_seconds`) and time spent inside steps (`train_seconds`)."""

    began: float = field(default_factory=time.perf_counter)
    train_seconds: float = 0.0

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.began


@runtime_checkable
class Trainer(Protocol):
    """What a training run gives `fit` (see the module docstring)."""

    def lr(self, step: int, clock: Clock) -> float: ...

    def gradients(self, step: int) -> StepOutput: ...

    def diverged(self, what: str, value: float, step: int) -> Exception: ...

    def after_step(self, done: int, out: StepOutput, lr: float, grad_norm: float, clock: Clock) -> bool: ...


def fit(
    trainer: Trainer,
    optimizer: torch.optim.Optimizer,
    parameters: Callable[[], Iterable[Float[Tensor, "*_shape"]]],
    *,
    start: int = 0,
    steps: int | None = None,
    clip: float = 0.0,
    clip_grad_norm: Callable[
        [Iterable[Float[Tensor, "*_shape"]], float], Float[Tensor, ""]
    ] = torch.nn.utils.clip_grad_norm_,
) -> int:
    """Run optimizer steps start, start + 1, ... until `steps` (None: until `after_step` says
    stop); return the number of steps done. `parameters()` gives what is clipped (the model's
    parameters, wrapped or not); `clip` 0 turns clipping off (the gradient norm is then NaN);
    `clip_grad_norm` is accelerate's under accelerate. Raises `trainer.diverged(...)` on a
    non-finite loss or gradient norm, before the optimizer step (the last checkpoint is intact).
    """
    done, clock = start, Clock()
    while steps is None or done < steps:
        began = time.perf_counter()
        lr = trainer.lr(done, clock)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = trainer.gradients(done)
        if not math.isfinite(out.loss):
            raise trainer.diverged("loss", out.loss, done)
        grad_norm = float("nan")
        if clip > 0:
            grad_norm = float(clip_grad_norm(parameters(), clip))
            if not math.isfinite(grad_norm):
                raise trainer.diverged("gradient norm", grad_norm, done)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.train_seconds += time.perf_counter() - began
        done += 1
        if trainer.after_step(done, out, lr, grad_norm, clock):
            break
    return done
