"""Models larger than one device: layers spread over GPUs, CPU memory and disk, by accelerate.

A `Placement` is what the user asks for (`--device-map`, `--max-memory`, `--offload-folder`, or the
same keywords of the loaders); `dispatch` hands it to accelerate's big-model inference
(`infer_auto_device_map` + `dispatch_model`, as transformers' `from_pretrained(device_map=...)`
does), never a placement of ar2mdm's own. The hooks accelerate adds move each module's inputs to
the device its weights live on (loading offloaded weights from CPU memory or disk for the call) and
return outputs to the device the inputs came from, so the probe's hooks, caches, interventions,
gradients and the samplers' KV caches work on a dispatched model as on one device.

device_map: "auto" (accelerate's balanced map, filling devices in order when they are of unequal
size), "balanced", "balanced_low_0" (GPU 0 kept light for generation), "sequential" (fill GPU 0,
then 1, ..., then CPU, then disk), or a JSON file {module name: device} with devices 0, 1, ...,
"cuda:N", "cpu", "disk". max_memory: per device, e.g. "0=70GiB,1=70GiB,cpu=200GiB". offload_folder:
where modules mapped to "disk" are written (required when any is).

Raises UserError for a map, memory or folder that is not one, with what to write instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ar2mdm.common.errors import UserError

MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*", re.I)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True)
class Placement:
    """Where a model's modules go. device_map: a strategy name (MAP_STRATEGIES) or {module: device};
    max_memory: {device: bytes} (devices as accelerate names them: 0, 1, "cpu", "disk");
    offload_folder: the folder for modules mapped to "disk". An empty Placement means one device."""

    device_map: str | dict[str, int | str] | None = None
    max_memory: dict[int | str, int] | None = None
    offload_folder: Path | None = None

    def __bool__(self) -> bool:
        return self.device_map is not None


def parse_device_map(value: str | dict | None, option: str = "--device-map") -> str | dict[str, int | str] | None:
    """A `--device-map` value: a strategy (MAP_STRATEGIES), a dict, or the path of a JSON file holding one."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        return {str(k): _device_name(v, option) for k, v in value.items()}
    text = str(value).strip()
    if text.lower() in MAP_STRATEGIES:
        return text.lower()
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(
            f"{option} {text!r} is neither a strategy ({' | '.join(MAP_STRATEGIES)}) nor an existing JSON file "
            '{module name: device} (e.g. {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}).'
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{option} {path}: not a readable JSON file ({err}).") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{option} {path}: the file must hold one JSON object {{module name: device}}, not empty.")
    return {str(k): _device_name(v, f"{option} {path}") for k, v in raw.items()}


def _device_name(value: Any, option: str) -> int | str:
    """A device as accelerate names it: GPU index (int), "cpu", "disk", "mps", or "cuda:N" -> N."""
    if isinstance(value, bool):
        raise UserError(f"{option}: {value!r} is not a device; use 0, 1, ..., 'cuda:N', 'cpu' or 'disk'.")
    if isinstance(value, int) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text in ("cpu", "disk", "mps"):
        return text
    raise UserError(f"{option}: {value!r} is not a device; use 0, 1, ..., 'cuda:N', 'cpu' or 'disk'.")


def parse_size(text: str, option: str) -> int:
    """Bytes from "70GiB", "80GB", "512MiB" or a plain number of bytes."""
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise UserError(f"{option}: {text!r} is not a size; write e.g. 70GiB, 80GB or 512MiB.")
    return int(float(match[1]) * _UNITS[(match[2] or "B").lower()])


def parse_max_memory(value: str | dict | None, option: str = "--max-memory") -> dict[int | str, int] | None:
    """`--max-memory "0=70GiB,1=70GiB,cpu=200GiB"` (or a dict) as {device: bytes}."""
    if value is None or value == "":
        return None
    items = (
        value.items()
        if isinstance(value, dict)
        else (_split_pair(p, option) for p in str(value).split(",") if p.strip())
    )
    out: dict[int | str, int] = {}
    for device, size in items:
        out[_device_name(device, option)] = size if isinstance(size, int) else parse_size(size, f"{option} {device}")
    if not out:
        raise UserError(f"{option}: no device given; write e.g. 0=70GiB,1=70GiB,cpu=200GiB.")
    return out


def _split_pair(part: str, option: str) -> tuple[str, str]:
    device, sep, size = part.partition("=")
    if not sep:
        raise UserError(f"{option}: {part.strip()!r} is not DEVICE=SIZE; write e.g. 0=70GiB,1=70GiB,cpu=200GiB.")
    return device.strip(), size.strip()


def placement_options(
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    names: tuple[str, str] = ("device_map", "max_memory"),
) -> Placement:
    """The loaders' `device_map`, `max_memory` and `offload_folder` keywords (the CLI's flags), checked.
    device: the loader's `device`; a device other than the CPU together with a map is refused (the
    map says where every module goes). names: how the map and the memory were given, for the
    messages (the CLI passes its flags, "--device-map", "--max-memory")."""
    mapping = parse_device_map(device_map, names[0])
    if mapping is not None and device is not None and torch.device(device).type != "cpu":
        raise UserError(
            f"device={str(device)!r} and device_map={device_map!r} both say where the model goes: give one "
            "(--device for one device, --device-map to spread it)."
        )
    memory = parse_max_memory(max_memory, names[1])
    folder = Path(offload_folder).expanduser() if offload_folder not in (None, "") else None
    if mapping is None and (memory is not None or folder is not None):
        raise UserError("max_memory and offload_folder place a model only with a device_map (auto, balanced, ...).")
    if isinstance(mapping, dict) and "disk" in mapping.values() and folder is None:
        raise UserError(
            "the device map sends modules to 'disk': give an offload_folder (--offload-folder DIR) for them."
        )
    return Placement(mapping, memory, folder)


def torch_device(device: int | str) -> torch.device:
    """A device as accelerate names it (GPU index, "cpu", "mps", "cuda:N") as a torch device."""
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def main_device(model: torch.nn.Module) -> torch.device:
    """The device a model takes its inputs on and returns its outputs to.

    A dispatched model (it has `hf_device_map`): the first device of the map that is neither "cpu"
    nor "disk", else the CPU (accelerate's own rule, `dispatch_model`). Otherwise the device of the
    first parameter that is not on the meta device."""
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        on_devices = [d for d in device_map.values() if d not in ("cpu", "disk")]
        if not on_devices:
            return torch.device("cpu")
        return torch_device(on_devices[0])
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def offload_holder(model: torch.nn.Module, module: torch.nn.Module) -> torch.nn.Module:
    """The module of `model`'s device map that holds `module` (accelerate loads and offloads a mapped
    module's weights as a whole); `module` itself for a model that was not dispatched."""
    device_map = getattr(model, "hf_device_map", None)
    if not isinstance(device_map, dict):
        return module
    name = next((n for n, m in model.named_modules(remove_duplicate=False) if m is module), None)
    if name is None:
        return module
    keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".") or k.startswith(name + ".")]
    inside = [k for k in keys if k == "" or name == k or name.startswith(k + ".")]
    return model.get_submodule(max(inside, key=len)) if inside else module


@contextmanager
def weights_at_hand(module: torch.nn.Module, holder: torch.nn.Module | None = None) -> Iterator[torch.device]:
    """Within the block, `module`'s weights are real tensors on the device it runs on, even when
    accelerate offloaded them to CPU memory or disk (then they are meta tensors between calls);
    yields that device. holder: the mapped module above it (`offload_holder`), for maps whose hooks
    sit on whole blocks. Read what you need and copy it: offloaded weights go back after the block
    (`accelerate.utils.align_module_device` on every offloaded module among them)."""
    from contextlib import ExitStack

    candidates = list(module.modules()) + ([] if holder is None or holder is module else [holder])
    hooks = [m for m in candidates if getattr(getattr(m, "_hf_hook", None), "offload", False)]
    with ExitStack() as stack:
        if hooks:
            from accelerate.utils import align_module_device

            for m in hooks:
                stack.enter_context(align_module_device(m))
        device = next((p.device for p in module.parameters() if p.device.type != "meta"), None)
        if device is None:
            hook = next((getattr(m, "_hf_hook", None) for m in candidates if hasattr(m, "_hf_hook")), None)
            raw = getattr(hook, "execution_device", None)
            device = torch_device("cpu" if raw is None else raw)
        yield device


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether accelerate placed this model's modules (hooks that move tensors between devices)."""
    return isinstance(getattr(model, "hf_device_map", None), dict)


def dispatch(model: torch.nn.Module, placement: Placement, *, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Spread `model` (loaded on the CPU) as `placement` asks, with accelerate; returns it.

    A strategy becomes a map by `accelerate.infer_auto_device_map` (with `get_balanced_memory` for
    auto / balanced), never splitting a decoder layer (the model's `_no_split_modules`); then
    `accelerate.dispatch_model` places it, with hooks even when every module lands on one device,
    so the path is the same on one machine as on several GPUs. The map is kept on
    `model.hf_device_map`."""
    if not placement:
        return model
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    mapping = placement.device_map
    if isinstance(mapping, str):
        memory = placement.max_memory
        if mapping != "sequential":
            memory = get_balanced_memory(
                model,
                max_memory=memory,
                no_split_module_classes=no_split,
                dtype=dtype,
                low_zero=mapping == "balanced_low_0",
            )
        mapping = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
        if "disk" in mapping.values() and placement.offload_folder is None:
            raise UserError(
                "the model does not fit the devices' memory and would be offloaded to disk: give --offload-folder DIR "
                "(or more --max-memory)."
            )
    _check_covers(model, mapping)
    if placement.offload_folder is not None:
        placement.offload_folder.mkdir(parents=True, exist_ok=True)
    model = dispatch_model(
        model,
        device_map=mapping,
        offload_dir=str(placement.offload_folder) if placement.offload_folder else None,
        force_hooks=True,
    )
    model.hf_device_map = dict(mapping)
    return model


def _check_covers(model: torch.nn.Module, mapping: dict[str, int | str]) -> None:
    """UserError unless every parameter and buffer falls under a module of the map, and every module
    the map names exists (tied weights, such as GPT-2's lm_head, are listed under each name)."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    keys = set(mapping)

    def covered(name: str) -> bool:
        parts = name.split(".")
        return "" in keys or any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))

    missing = [n for n in names if not covered(n)]
    modules = {n for n, _ in model.named_modules(remove_duplicate=False)}
    unknown = sorted(k for k in keys if k and k not in modules)
    if missing or unknown:
        what = f"no device for {missing[:3]}" if missing else f"no module called {unknown[:3]}"
        top = sorted({n.split(".")[0] + ("." + n.split(".")[1] if "." in n else "") for n in names})[:6]
        raise UserError(f"the device map does not fit the model: {what}; its modules start with {top}.")
