"""How much memory loading a checkpoint takes, known before a byte of weights is read.

A checkpoint's parameter count is exact from the safetensors headers (or the GGUF tensor table),
so the memory a load needs can be predicted and printed first, and a load that cannot fit on the
chosen device refused with a clear message instead of dying half way.

The rule, `predict_load_bytes`, is what the streamed loader does: parameters are materialised
once, in the target dtype (from_pretrained builds the model on the meta device and fills each
parameter from the memory-mapped file), so the resident cost is the parameter bytes, plus one
tensor in flight while it is converted to the target dtype, plus a fixed overhead for buffers,
the tokenizer and the allocator. `benchmarks/bench_load_memory.py` measures the peak on random
replicas of three sizes and prints measured / predicted; docs/FORMATS.md keeps the figures.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import safetensors_header

GiB = 2**30
# Fixed cost of a load besides the parameters: rotary tables, the tokenizer, allocator slack.
# Measured +15 to +31 MiB over the parameter bytes on the replicas of benchmarks/bench_load_memory.py
# (docs/FORMATS.md, "Memory"); 64 MiB keeps the rule an upper bound.
LOAD_OVERHEAD_BYTES = 64 * 2**20
# Loads below this are not worth a line on stderr.
ANNOUNCE_ABOVE_BYTES = 1 * GiB

SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
    "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


@dataclass(frozen=True)
class WeightsSummary:
    """What the weight files hold, from their headers alone.

    n_params: elements of every tensor (int). file_bytes: bytes of tensor data on disk.
    largest: elements of the largest single tensor (the embedding or LM head, usually).
    """

    n_params: int
    file_bytes: int
    largest: int


def safetensors_summary(files: list[Path]) -> WeightsSummary:
    """Parameter count, data bytes and largest tensor of safetensors `files`, reading headers only.

    Raises CheckpointError for a file whose header cannot be read (check_safetensors reports
    truncation in detail first on every load path).
    """
    n_params = file_bytes = largest = 0
    for file in files:
        try:
            header = safetensors_header(file)
        except (OSError, ValueError, struct.error) as err:
            raise CheckpointError(f"{file}: the safetensors header cannot be read ({err}).") from None
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in entry["shape"]:
                numel *= int(dim)
            n_params += numel
            largest = max(largest, numel)
            file_bytes += numel * SAFETENSORS_DTYPE_BYTES.get(entry["dtype"], 4)
    return WeightsSummary(n_params=n_params, file_bytes=file_bytes, largest=largest)


def dtype_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of a floating dtype (4 for float32, 2 for bfloat16/float16)."""
    return torch.empty((), dtype=dtype).element_size()


def predict_load_bytes(n_params: int, dtype: torch.dtype, largest: int = 0, file_bytes: int | None = None) -> int:
    """Predicted peak memory (bytes) of holding a model of `n_params` parameters in `dtype`.

    n_params * bytes(dtype) + LOAD_OVERHEAD_BYTES, plus, when the files hold another dtype than
    `dtype` (`file_bytes`, the tensor bytes on disk, says; unknown counts as another), one float32
    copy of the `largest` tensor (its conversion in flight). Activations of a forward pass come on
    top (see `activation_bytes`).

    >>> round(predict_load_bytes(7_615_616_512, torch.bfloat16, file_bytes=2 * 7_615_616_512) / 2**30, 2)
    14.25
    """
    same = file_bytes is not None and file_bytes == n_params * dtype_bytes(dtype)
    return n_params * dtype_bytes(dtype) + (0 if same else 4 * largest) + LOAD_OVERHEAD_BYTES


def activation_bytes(batch: int, seq: int, vocab: int, dtype: torch.dtype) -> int:
    """The largest activation of a forward pass: the logits [batch, seq, vocab] (bytes).

    At 7B scale with a 152k vocabulary the logits of a batch of 8 x 256 tokens alone are 0.6 GiB
    in bf16; the residual stream is 40x smaller.
    """
    return batch * seq * vocab * dtype_bytes(dtype)


def describe(n_params: int, dtype: torch.dtype, largest: int = 0, file_bytes: int | None = None) -> str:
    """One line: parameters and predicted memory, e.g. '7.62 B parameters: about 14.2 GiB in bfloat16'."""
    need = predict_load_bytes(n_params, dtype, largest, file_bytes) / GiB
    count = f"{n_params / 1e9:.2f} B" if n_params >= 1e9 else f"{n_params / 1e6:.1f} M"
    return f"{count} parameters: about {need:.1f} GiB in {str(dtype).removeprefix('torch.')}"


def check_fits(
    n_params: int,
    dtype: torch.dtype,
    device: str | torch.device,
    largest: int,
    what: str,
    file_bytes: int | None = None,
) -> None:
    """Announce a large load on stderr; refuse one that cannot fit in the free memory of a CUDA device.

    Raises CheckpointError before loading when the device is CUDA and its free memory is below the
    prediction, naming the need, what is free and what to do (a smaller dtype, another device).
    """
    need = predict_load_bytes(n_params, dtype, largest, file_bytes)
    device = torch.device(device)
    if need >= ANNOUNCE_ABOVE_BYTES:
        print(f"ar2mdm: loading {what} ({describe(n_params, dtype, largest, file_bytes)}) on {device}", file=sys.stderr)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        if need > free:
            raise CheckpointError(
                f"{what} needs about {need / GiB:.1f} GiB ({describe(n_params, dtype, largest, file_bytes)}) but "
                f"{device} has {free / GiB:.1f} GiB free. Load it in bf16 (--dtype bf16), free the "
                "GPU, or use a larger one."
            )
