"""What every `ar2mdm` subcommand shares: the typer apps, plugin loading, the error handling that
turns bad input into one line and exit 2 (Ctrl-C into exit 130 with what was kept), progress
printing, and the option help texts read from the registries."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator
from typing import Annotated

import torch
import typer
from rich.console import Console

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from analyses.attribution import methods_for
from ar2mdm.common.errors import TrainingInterrupted, UserError
from ar2mdm.common.plugins import load_plugins
from ar2mdm.sampling import SAMPLERS
from ar2mdm.tasks import task_names
from probe.backends import BACKENDS


def load_cli_plugins() -> UserError | None:
    """Import $AR2MDM_PLUGINS and the `ar2mdm.plugins` entry points before the help texts below
    read the registries (ar2mdm.common.plugins); a failure is reported when a command runs."""
    try:
        load_plugins()
    except UserError as err:
        return err
    return None


PLUGIN_ERROR = load_cli_plugins()

app = typer.Typer(
    name="ar2mdm",
    help="Convert autoregressive LMs into masked diffusion LMs and study what changes inside them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: it wraps to the terminal (80 columns too), puts a long flag's text on the
    # next line instead of a one-word column, and reads no markup or emoji codes in the texts
    # ("block:B:" stays text); tests/test_cli_help.py renders every command at COLUMNS=80.
    rich_markup_mode=None,
)
organism_app = typer.Typer(
    help="The model organism: a small decoder trained from scratch on the task mixture.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(organism_app, name="organism")
console = Console(stderr=True)


@app.callback()
def _main() -> None:
    if PLUGIN_ERROR is not None:
        fail(PLUGIN_ERROR)


def plain(message: str) -> None:
    """Progress lines on stderr, printed as they are (no rich markup: they hold [brackets])."""
    console.print(message, markup=False, highlight=False)


def fail(err: UserError) -> None:
    console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False)
    raise typer.Exit(code=2)


INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)


@contextlib.contextmanager
def errors(kept: str) -> Iterator[contextlib.ExitStack]:
    """Bad input -> one clear line, exit 2 (never a traceback); Ctrl-C -> what was kept, exit 130.

    kept: what an interrupted run of this command leaves and how to go on (shown after Ctrl-C).
    Yields an ExitStack for resources held while the command runs (a claimed output folder)."""
    try:
        with contextlib.ExitStack() as stack:
            yield stack
    except TrainingInterrupted as err:
        command = " ".join(shlex.quote(a) for a in ["ar2mdm", *sys.argv[1:]])
        resume = command if "--resume" in sys.argv else f"{command} --resume"
        console.print(f"[bold yellow]interrupted:[/] {err}", highlight=False)
        console.print(f"resume with: {resume}", markup=False, highlight=False)
        raise typer.Exit(code=INTERRUPTED) from None
    except UserError as err:
        fail(err)
    except KeyboardInterrupt:
        console.print(f"[bold yellow]interrupted:[/] {kept}", highlight=False)
        raise typer.Exit(code=INTERRUPTED) from None


# The registries: a new sampler, task, backend or attribution class appears here by itself.
SAMPLER_HELP = SAMPLERS.choices()
BACKEND_HELP = f"Probe backend: {BACKENDS.choices()} | auto."
METHOD_HELP = f"Edge attribution method of the circuits: {' | '.join(methods_for('edge'))}."
TASK_HELP = "; ".join(f"{', '.join(task_names(kind))} ({kind})" for kind in ("local", "global") if task_names(kind))
CACHE_HELP = (
    "threshold / factor: prefix | dual | none. prefix reuses the keys/values left of the block being decoded, "
    "dual (Fast-dLLM DualCache) also those right of it; both are exact for block-diffusion checkpoints "
    "(block:B: earlier blocks never see later ones) and approximate for bidirectional MDMs (reused keys were "
    "computed while the block was masked; per-step drift in docs/results/sampling.md). none recomputes every "
    "call (exact). The other MDM samplers take no cache (every call exact); ar's KV cache is exact. [default: prefix]"
)


DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Parameter dtype of the loaded models: fp32 | bf16 | fp16 (bf16 halves memory: a 7B model needs about 15 GiB).",
    ),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="Where the models run: cpu | cuda | cuda:N (weights stream straight there).")
]
DeviceMapOption = Annotated[
    str,
    typer.Option(
        "--device-map",
        help="Spread each model over devices, CPU memory and disk (accelerate's big-model inference) instead of --device: auto | balanced | balanced_low_0 | sequential | FILE.json {module: device}.",
    ),
]
MaxMemoryOption = Annotated[
    str,
    typer.Option(
        "--max-memory", help="With --device-map: the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB."
    ),
]
OffloadFolderOption = Annotated[
    str, typer.Option("--offload-folder", help="With --device-map: the folder for modules placed on 'disk'.")
]
KvReceiversOption = Annotated[
    str,
    typer.Option(
        "--kv-receivers",
        help="grouped (one k/v receiver per key/value head) | per-query (one per query head on grouped-query models, as TransformerLens's ungrouped graph and the reference EAP-IG code; k/v weights grow n_heads / n_kv_heads-fold).",
    ),
]
TrustOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code/--no-trust-remote-code",
        help="Run code shipped in a checkpoint folder (only for sources you trust). Published diffusion LMs (Dream, LLaDA, ...: docs/FORMATS.md) load without it.",
    ),
]


def load_options(
    dtype: str,
    device: str,
    trust_remote_code: bool,
    device_map: str = "",
    max_memory: str = "",
    offload_folder: str = "",
) -> dict:
    """The checked keyword arguments of every loader (`load_any`, `ProbedModel.from_checkpoint`):
    dtype, device, trust_remote_code, and with --device-map the placement (`ar2mdm.common.placement`)."""
    from ar2mdm.common.modeling import parse_device, parse_dtype
    from ar2mdm.common.placement import placement_options

    out = {"dtype": parse_dtype(dtype), "device": parse_device(device), "trust_remote_code": trust_remote_code}
    flags = ("--device-map", "--max-memory")  # the flags' own names in the messages
    placement_options(device_map or None, max_memory or None, offload_folder or None, device=out["device"], names=flags)
    if device_map:
        out.update(device_map=device_map, max_memory=max_memory or None, offload_folder=offload_folder or None)
    return out


def probe_options(dtype: str, device: str, trust_remote_code: bool, kv_receivers: str, *placement: str) -> dict:
    """`load_options` plus the probe's own: `ProbedModel.from_checkpoint(..., ungroup_kv=)`.
    placement: --device-map, --max-memory, --offload-folder."""
    if kv_receivers not in ("grouped", "per-query"):
        raise UserError(f"--kv-receivers must be grouped or per-query, got {kv_receivers!r}.")
    return {**load_options(dtype, device, trust_remote_code, *placement), "ungroup_kv": kv_receivers == "per-query"}


def reserve_for_attribution(sources: list[str], batch: int, dtype: torch.dtype, trust_remote_code: bool) -> dict:
    """{"max_memory": ...} for `--device-map auto` before an analysis: each GPU's free memory less the
    EAP-IG share predicted for the pair at `batch` x 128 tokens (`analyses.device_memory`); {} on a
    machine without GPUs (the map is then all CPU and there is nothing to reserve)."""
    from analyses.device_memory import auto_max_memory, free_gpu_memory
    from conversion.checkpoints import model_config

    free = free_gpu_memory()
    if not free:
        return {}
    configs = [model_config(s, trust_remote_code=trust_remote_code) for s in sources]
    return {"max_memory": auto_max_memory(configs, free, batch=batch, seq_len=128, dtype=dtype)}


def refuse_earlier_results(claim, overwrite: bool) -> None:
    """An eval/compare folder that holds an earlier run's results is replaced only with --overwrite
    (the caller clears it right before writing the new results)."""
    if claim.previous is not None and not overwrite:
        raise UserError(
            f"{claim.folder} holds the results of an earlier `ar2mdm {claim.command}`; pass --overwrite to "
            "replace them, or choose another --out."
        )


def floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}.") from None


def names_option(text: str, what: str) -> list[str]:
    """Comma-separated names, each once, in order; UserError for a repeated one."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{what} names {', '.join(repeated)} more than once; give each once.")
    return names


def ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers, got {text!r}.") from None
