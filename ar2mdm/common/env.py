"""Process-wide settings and the toolkit's cache folder.

ar2mdm never switches the network off: what the user set for huggingface_hub, transformers and
datasets (`HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_HOME`, ...) is theirs, and hub ids are downloaded
when the user has a network (`ar2mdm.common.hub`). The cache directory holds everything the
toolkit derives (the SmolLM2 HF folder, text corpora, the trained organism); it is never inside the
repo. Models fetched by hub id live in the user's HF cache, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cache_dir() -> Path:
    """Root of the toolkit's cache: $AR2MDM_CACHE, else $XDG_CACHE_HOME/ar2mdm, else ~/.cache/ar2mdm."""
    explicit = os.environ.get("AR2MDM_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "ar2mdm"
    root.mkdir(parents=True, exist_ok=True)
    return root


def fingerprint() -> dict[str, str | int]:
    """What decides whether floating-point results repeat bit for bit: library versions, the
    CPU model and the instruction set torch's kernels dispatch to (AVX2, AVX512, ...), and the
    thread count (reductions split across threads sum in another order)."""
    import platform

    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
