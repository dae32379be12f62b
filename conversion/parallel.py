"""How a training run spreads over processes: one, DDP, or FSDP (accelerate's, or our own FSDP2 on
CPU), and the collectives that keep the processes in step.

`make_accelerator` builds the run's Accelerator (accelerate's refusals become UserErrors);
`parallelism` names how this process trains and refuses launches that would not train as asked;
`shard_on_cpu` shards a model with torch's `fully_shard` over gloo (accelerate never applies FSDP
on CPU); `no_sync` is the context of an accumulation micro-step; `any_process` tells every process
whether any of them raised a flag (they must take the same decision at the same step).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ar2mdm.common.errors import UserError
from ar2mdm.common.options import parse_bool


def make_accelerator(device: str = "auto") -> Accelerator:
    """The run's Accelerator on `device`: "auto" (accelerate's choice: this process's GPU when
    there is one), "cpu" (even where a GPU is visible) or "cuda".

    Raises UserError for "cuda" where torch sees no GPU, and for launches accelerate refuses.
    """
    # bf16 is our own autocast, not Accelerator(mixed_precision=...): accelerate's state is a
    # process-wide singleton that refuses a second run with another precision (notebooks, tests).
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda, but torch sees no CUDA device here (check CUDA_VISIBLE_DEVICES and that the "
            "installed torch is a CUDA build); use --device cpu or auto."
        )
    _forget_other_device(device)
    if _fsdp_version(os.environ) == "1" and (device == "cpu" or _uses_cpu(os.environ) or not _has_accelerator()):
        # accelerate's FSDP1 plugin needs an accelerator device (it raises RuntimeError on a CPU-only
        # machine, with a text that changed between releases); decided here by the condition itself.
        raise UserError(_FSDP_CPU_HELP.format(what="FSDP1 cannot run on CPU: this process sees no GPU"))
    return Accelerator(cpu=device == "cpu")


def _has_accelerator() -> bool:
    """Whether torch sees an accelerator device (CUDA, XPU, MPS, ...) in this process."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def _fsdp_version(env: Any) -> str | None:
    """The FSDP version a launch asks for ("1" or "2"), or None without FSDP (ACCELERATE_USE_FSDP)."""
    if not _flag(env, "ACCELERATE_USE_FSDP"):
        return None
    return str(env.get("FSDP_VERSION", "1")).strip() or "1"


def _uses_cpu(env: Any) -> bool:
    return _flag(env, "ACCELERATE_USE_CPU")


def _forget_other_device(device: str) -> None:
    """Drop accelerate's process-wide state when an earlier run in this (single) process chose
    another device: accelerate keeps the first choice for the life of the process (a notebook that
    converts on the GPU, then on the CPU)."""
    from accelerate.state import AcceleratorState, PartialState

    if not PartialState._shared_state:
        return
    state = PartialState()
    if device == "cpu":
        same = state.device.type == "cpu"
    else:  # auto or cuda: the state is on the CPU while a GPU is visible (an earlier --device cpu)
        same = state.device.type != "cpu" or not torch.cuda.is_available()
    if same:
        return
    if state.num_processes > 1:
        raise UserError(
            f"this process already trains on {state.device} with {state.num_processes} processes; "
            f"--device {device} needs a new launch."
        )
    AcceleratorState._reset_state(reset_partial_state=True)


_FSDP_CPU_HELP = (
    "{what}. On a CPU-only machine, launch FSDP as version 2, which ar2mdm shards itself: "
    "ACCELERATE_USE_CPU=true accelerate launch --use_fsdp --fsdp_version 2 --num_processes N "
    "--num_machines 1 ... ar2mdm convert ...; or use DDP (--multi_gpu instead of --use_fsdp)."
)


def offload_params() -> bool:
    """Whether this launch asked FSDP to keep sharded parameters in CPU memory (`fsdp_offload_params`)."""
    return _flag(os.environ, "FSDP_OFFLOAD_PARAMS")


def _flag(env: Any, name: str) -> bool:
    """Environment variable `name` as a yes/no value (`ar2mdm.common.options.parse_bool`); unset is no."""
    value = env.get(name)
    return False if value is None or not str(value).strip() else parse_bool(value, f"environment variable {name}")


def parallelism(distributed_type: DistributedType, num_processes: int, env: dict[str, str] | None = None) -> str:
    """How this process trains: "none", "ddp", "fsdp" (accelerate's), or "fsdp-cpu" (our FSDP2).

    Raises UserError for launches that would not train as asked: FSDP1 on CPU (accelerate would
    silently fall back to DDP), and processes started by a launcher (WORLD_SIZE > 1) that
    accelerate did not join into one group (on a CPU-only machine without ACCELERATE_USE_CPU=true,
    each process would train alone and all of them would write the same output folder).
    """
    env = dict(os.environ) if env is None else env
    launched = int(env.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes == 1:
        raise UserError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate sees this one "
            "alone, so each would train by itself into the same folder. On a CPU-only machine, set "
            "ACCELERATE_USE_CPU=true for the launch (`accelerate launch --cpu` starts one process); "
            "on GPUs, check that they are visible (CUDA_VISIBLE_DEVICES)."
        )
    wants_fsdp = _flag(env, "ACCELERATE_USE_FSDP")
    if distributed_type == DistributedType.FSDP:
        return "fsdp"
    if wants_fsdp and distributed_type == DistributedType.MULTI_CPU:
        version = _fsdp_version(env)
        if version != "2":
            raise UserError(
                _FSDP_CPU_HELP.format(
                    what=f"FSDP version {version} cannot run on CPU (accelerate would silently use DDP)"
                )
            )
        return "fsdp-cpu"
    if wants_fsdp and num_processes > 1:
        raise UserError(
            f"FSDP was asked for but accelerate set up {distributed_type}, not FSDP; "
            "relaunch without --use_fsdp, or on a supported device."
        )
    return "ddp" if num_processes > 1 else "none"


def shard_on_cpu(model: torch.nn.Module, offload: bool | None = None) -> torch.nn.Module:
    """FSDP2 over the CPU (gloo) process group: every decoder layer one unit, the rest the root.

    Rank 0's weights are broadcast first, so every process shards the same model. offload: apply
    FSDP2's CPUOffloadPolicy (the launch's `fsdp_offload_params`, read from FSDP_OFFLOAD_PARAMS when
    None), as accelerate applies it on GPUs; on the CPU the shards already live in CPU memory, so
    this runs the offloading code path (`conversion/configs/fsdp2_cpu_offload.yaml`) with the same
    results.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    if offload is None:
        offload = offload_params()
    options = {"offload_policy": CPUOffloadPolicy(pin_memory=False)} if offload else {}

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in layer_classes:
            fully_shard(module, **options)
    fully_shard(model, **options)
    return model


@contextmanager
def no_sync(accelerator: Accelerator, model: torch.nn.Module, parallel: str) -> Iterator[None]:
    """Context of a gradient-accumulation micro-step that must not reduce gradients yet."""
    if parallel != "fsdp-cpu":
        with accelerator.no_sync(model):
            yield
        return
    model.set_requires_gradient_sync(False)  # FSDP2: accumulate unsharded, reduce-scatter later
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process if `flag` is true on any of them (a collective: all must call)."""
    if accelerator.num_processes == 1:
        return flag
    raised = torch.tensor([float(flag)], device=accelerator.device)
    return float(accelerator.reduce(raised, reduction="sum")) > 0
