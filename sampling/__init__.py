"""Samplers for AR and masked diffusion checkpoints, each a small state machine.

Every sampler has the interface of `base.Sampler` (`init_state`, `step`, `done`) over one shared
`State`, so NFE counting, tracing, batching and seeding are the same for all of them; `run` is the
driver. Build one by name with `build_sampler`:

=================  ==========================================================  ==================
name               what it does                                                checkpoints
=================  ==========================================================  ==================
ar                 greedy / temperature / top-k / top-p with a KV cache        ARM
ancestral          MDLM reverse process, prediction reused when nothing moved  absorbing MDM
uniform            reverse process of uniform-state noise                      uniform MDM
low-confidence     commit the k most probable tokens per step (LLaDA)          absorbing MDM
margin             ... ranked by top-1 minus top-2 probability (Dream)         absorbing MDM
entropy            ... ranked by minus entropy (Dream)                         absorbing MDM
threshold          top-1 plus all above tau per step, prefix KV cache          absorbing MDM
remask             ReMDM: decoded tokens may return to the mask                absorbing MDM
arpc               BlockGen predictor / AR scoring / corrector                 absorbing MDM
=================  ==========================================================  ==================
"""

from __future__ import annotations

import inspect
from typing import Any

from common.errors import UserError
from sampling.ancestral import AncestralSampler, UniformSampler, unmask_probability
from sampling.ar import ARSampler, filter_logits
from sampling.arpc import ARPCSampler
from sampling.base import (
    ModelContext,
    Sampler,
    SampleResult,
    State,
    TraceStep,
    make_canvas,
    run,
)
from sampling.confidence import ConfidenceSampler, confidence_fill
from sampling.remask import RemaskSampler
from sampling.threshold import ThresholdSampler, threshold_commit

_MAKERS_CLS = {
    "ar": ARSampler, "ancestral": AncestralSampler, "uniform": UniformSampler, "low-confidence": ConfidenceSampler,
    "margin": ConfidenceSampler, "entropy": ConfidenceSampler, "threshold": ThresholdSampler,
    "remask": RemaskSampler, "arpc": ARPCSampler,
}
SAMPLERS = ("ar", "ancestral", "uniform", "low-confidence", "margin", "entropy", "threshold", "remask", "arpc")


def sampler_options(name: str) -> tuple[str, ...]:
    """The option names sampler `name` accepts."""
    cls = _MAKERS_CLS.get(name)
    if cls is None:
        raise UserError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.")
    params = inspect.signature(cls.__init__).parameters
    return tuple(p for p in params if p not in ("self", "rule"))


def build_sampler(name: str, *, strict: bool = True, **options: Any) -> Sampler:
    """The sampler called `name` with `options` (keyword arguments of its class). None-valued
    options are dropped so callers can pass every CLI flag through; with strict=False options the
    sampler does not take are dropped too (one set of flags for several samplers)."""
    opts = {k: v for k, v in options.items() if v is not None}
    if not strict:
        accepted = set(sampler_options(name))
        opts = {k: v for k, v in opts.items() if k in accepted}
    makers: dict[str, Any] = {
        "ar": ARSampler,
        "ancestral": AncestralSampler,
        "uniform": UniformSampler,
        "low-confidence": lambda **o: ConfidenceSampler("low-confidence", **o),
        "margin": lambda **o: ConfidenceSampler("margin", **o),
        "entropy": lambda **o: ConfidenceSampler("entropy", **o),
        "threshold": ThresholdSampler,
        "remask": RemaskSampler,
        "arpc": ARPCSampler,
    }
    if name not in makers:
        raise UserError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.")
    try:
        return makers[name](**opts)
    except TypeError as err:
        raise UserError(f"sampler {name!r} does not take these options: {err}.") from None


__all__ = [
    "SAMPLERS", "ARPCSampler", "ARSampler", "AncestralSampler", "ConfidenceSampler", "ModelContext",
    "RemaskSampler", "SampleResult", "Sampler", "State", "ThresholdSampler", "TraceStep", "UniformSampler",
    "build_sampler", "confidence_fill", "sampler_options", "filter_logits", "make_canvas", "run", "threshold_commit",
    "unmask_probability",
]
