"""Stable seeds derived from parts, so that separate random streams never overlap and a run is
the same on every machine.

    >>> derive_seed(0, 5) == derive_seed(0, 5), derive_seed(0, 5) != derive_seed(0, 6)
    (True, True)
    >>> derive_seed("train", "ioi", 0, 3)  # a labelled stream: the CRC-32 of "train/ioi/0/3"
    3075449203
"""

from __future__ import annotations

import zlib

import numpy as np


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed for the stream named by `parts`.

    Numeric streams (integer parts only, e.g. (seed, step) or (seed, step, rank)) are mixed by
    numpy's SeedSequence, which keeps neighbouring integers' streams apart. Labelled streams
    (a string among the parts, e.g. ("train", task, seed, chunk)) are keyed by the CRC-32 of the
    parts joined with "/". Both are pure functions of the parts, on every platform.
    """
    if any(isinstance(p, str) for p in parts):
        return zlib.crc32("/".join(map(str, parts)).encode())
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
