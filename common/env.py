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
