"""Small rules about Hugging Face models that every part of the toolkit applies the same way.

- `position_ids`: positions that skip padding, so a padded row gets the positions it has alone
  (left padding would otherwise shift them on absolute-position models such as GPT-2); every
  path that batches text uses it (probe backends, samplers, the objective, task metrics).
- `pad_id`: the id that fills padded positions: the tokenizer's pad token, else its EOS, else 0.
  Its value never reaches a real token (attention masks keep padding out), so any id would do;
  one rule keeps batches identical wherever they are built.
- `param_dtype`, `output_size`, `device_of`: what a model computes in, how many logits it
  returns, where it lives.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ar2mdm.common.errors import UserError


def right_pad(rows: list[list[int]], pad: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Token rows of any lengths as one right-padded batch on the CPU: (ids [B, T], attention mask
    [B, T], 1 on real tokens), T the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    am = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        am[b, : len(r)] = 1
    return ids, am


def position_ids(
    attention_mask: Int[Tensor, "batch pos"], document_ids: Int[Tensor, "batch pos"] | None = None
) -> Int[Tensor, "batch pos"]:
    """Position ids [B, T] that skip padding: cumsum(mask) - 1, clamped at 0 (left padding safe).

    With `document_ids` [B, T] (per-document attention on packed rows) the positions restart at
    0 at the first token of every document.

    >>> position_ids(torch.tensor([[0, 0, 1, 1, 1]])).tolist()
    [[0, 0, 0, 1, 2]]
    """
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if document_ids is None:
        return pos
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(-1).values
    return pos - first


def pad_id(tokenizer: Any) -> int:
    """The id padding is filled with: pad token, else EOS, else 0 (see the module docstring)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    return 0


def param_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs go to: its first parameter's, or for a model accelerate dispatched
    over several devices (or offloaded), the main device of its map (`ar2mdm.common.placement`)."""
    from ar2mdm.common.placement import main_device

    return main_device(model)


def output_size(model: torch.nn.Module) -> int | None:
    """Rows of the model's output head (its logits' last dimension); the config's vocab_size
    without an HF head; None for a model with neither."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    config = getattr(model, "config", None)
    return None if config is None else int(config.vocab_size)


# Names a user may give for a parameter dtype (`--dtype`), the field's usual spellings.
DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}  # fmt: skip


def parse_dtype(name: str | torch.dtype, option: str = "--dtype") -> torch.dtype:
    """The torch dtype a `--dtype` value names (fp32 | bf16 | fp16 and their long spellings:
    float32, bfloat16, float16, half, torch.bfloat16, ...).

    option: how the value was given, for the message (`--dtype`, `dtype=` in `--model_args`, the
    `dtype` keyword of a library call). Raises UserError for any other name, listing the accepted ones.

    >>> parse_dtype("bf16")
    torch.bfloat16
    """
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        raise UserError(f"{option} {name!r} is not a dtype ar2mdm loads models in; use fp32, bf16 or fp16.")
    return DTYPE_NAMES[key]


def parse_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """The torch device a `--device` value names (cpu, cuda, cuda:N, mps), checked to exist here.

    option: how the value was given, for the message. Raises UserError for a malformed name, or a CUDA device this machine does not have (saying
    how many it has), before any model is loaded.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"{option} {name!r} is not a device name; use cpu, cuda or cuda:N.") from None
    cpu = f"{option} cpu" if option.startswith("--") else "device='cpu'"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index >= count:
            have = f"has {count} CUDA device(s)" if count else "has no CUDA device (or torch is a CPU build)"
            raise UserError(f"{option} {name}: this machine {have}. Use {cpu}, or run on a GPU machine.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{option} {name}: MPS is not available here. Use {cpu}.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{option} {name!r}: ar2mdm runs on cpu, cuda or mps.")
    return device


def loading_options(
    dtype: str | torch.dtype, device: str | torch.device, trust_remote_code: bool | str | int = False
) -> tuple[torch.dtype, torch.device, bool]:
    """The `dtype`, `device` and `trust_remote_code` keywords of a library loader, checked as the
    CLI checks its flags: the CLI's spellings are accepted (`"bf16"`, `"cuda:0"`, `"no"`), anything
    else is a UserError naming the keyword and the accepted values (never a TypeError from torch,
    and never a refusal such as `trust_remote_code="no"` read as consent)."""
    from ar2mdm.common.options import parse_bool

    return (
        parse_dtype(dtype, "dtype="),
        parse_device(device, "device="),
        parse_bool(trust_remote_code, "trust_remote_code"),
    )


def kv_cache_kwargs(model: torch.nn.Module, cache: Any) -> dict[str, Any]:
    """{name: cache} for a forward call that reuses `cache`: transformers >= 5.24 names the
    argument `cache` (`past_key_values` is deprecated there), earlier 5.x `past_key_values`."""
    import inspect

    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        params = {}
    return {"cache" if "cache" in params else "past_key_values": cache}


def returned_kv_cache(out: Any) -> Any:
    """The KV cache a forward returned (`out.cache`, or `out.past_key_values` before 5.24)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def is_moe_block(module: torch.nn.Module) -> bool:
    """Whether `module` is a transformers mixture-of-experts block: a router `gate` and its
    `experts` (Qwen3-MoE's SparseMoeBlock, GLM-4-MoE's MoE, ...; `probe.moe` reads them)."""
    experts = getattr(module, "experts", None)
    return isinstance(getattr(module, "gate", None), torch.nn.Module) and isinstance(experts, torch.nn.Module)
