"""Process-wide settings every entry point needs before transformers or datasets are imported.

No machine this toolkit targets can reach a model or dataset hub, and a silent network attempt
turns into a long hang or a confusing error. We set the offline flags once, here, unless the user
has already chosen otherwise. The cache directory holds everything the toolkit downloads or
derives (the SmolLM2 HF folder, text corpora, the trained organism); it is never inside the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

for _flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_flag, "1")
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
