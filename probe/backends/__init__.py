"""Backends: the only code that knows how a hook is attached to a model.

The core (`probe.engine`) speaks in *sites*: a fixed list of points in each block, in forward
order (`SITE_ORDER`), each with one shape convention. A backend runs one forward pass and, at each
site the core asks for, calls the core's function with the tensor there and substitutes what it
returns (None: leave the tensor as it is). Backends never see canonical names, caches or
interventions, and nothing outside `probe/` ever sees a backend's hook names.

| backend  | how it attaches                                          | works for                     |
|----------|----------------------------------------------------------|-------------------------------|
| "torch"  | forward hooks on the HF modules (`probe.layout`)          | every layout the probe reads  |
| "nnsight"| the same modules through an nnsight trace                 | every layout the probe reads  |
| "tl"     | hook points of a TransformerLens 4 `TransformerBridge`    | architectures TL has an adapter for |

`choose` picks one: an explicit name, or "auto" (see `probe.backends.choose`). Every `Backend`
subclass registers itself in `BACKENDS` by its name; the built-in ones are imported here (their
libraries, nnsight and TransformerLens, only when a backend is created).
"""

from __future__ import annotations

from probe.backends import nnsight_backend, tl_bridge, torch_hooks  # noqa: F401  (register them)
from probe.backends.base import (
    BACKENDS,
    SITE_ORDER,
    Backend,
    Logits,
    Mask,
    Mask4D,
    Site,
    SiteFn,
    SiteFns,
    TokenIds,
    choose,
    create,
)

__all__ = [
    "BACKENDS",
    "SITE_ORDER",
    "Backend",
    "Logits",
    "Mask",
    "Mask4D",
    "Site",
    "SiteFn",
    "SiteFns",
    "TokenIds",
    "choose",
    "create",
]
