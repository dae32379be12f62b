"""Samplers for AR and masked diffusion checkpoints, each a small state machine.

Every sampler has the interface of `base.Sampler` (`init_state`, `step`, `done`) over one shared
`State`, so NFE counting, tracing, batching and seeding are the same for all of them; `run` is the
driver. Every `Sampler` subclass with a `name` registers itself in `SAMPLERS`; `build_sampler`
builds one by name, and the CLI, the generation evals and the study read the registry. The
built-in ones:

=================  ==========================================================  ==================
name               what it does                                                checkpoints
=================  ==========================================================  ==================
ar                 greedy / temperature / top-k / top-p with a KV cache        ARM
ancestral          MDLM reverse process, prediction reused when nothing moved  absorbing MDM
uniform            reverse process of uniform-state noise                      uniform MDM
low-confidence     commit the k most probable tokens per step (LLaDA)          absorbing MDM
margin             ... ranked by top-1 minus top-2 probability (Dream)         absorbing MDM
entropy            ... ranked by minus entropy (Dream)                         absorbing MDM
threshold          top-1 plus all above tau per step; prefix / dual KV cache   absorbing MDM
factor             Fast-dLLM factor rule: n with (n+1)(1-c_n) < f per step     absorbing MDM
remask             ReMDM: decoded tokens may return to the mask                absorbing MDM
arpc               BlockGen predictor / AR scoring / corrector                 absorbing MDM
=================  ==========================================================  ==================

Caches: `ar` keeps an exact KV cache (causal attention). `threshold` and `factor` take
`cache="prefix" | "dual" | "none"` and `refresh` (`ar2mdm.sampling.cache`: every cache exact on
block-diffusion checkpoints, prefix and dual approximate on bidirectional MDMs); every other MDM
sampler runs the whole canvas at each call (exact).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from ar2mdm.common.errors import UserError
from ar2mdm.common.options import parse_bool
from ar2mdm.sampling.ancestral import AncestralSampler, UniformSampler, unmask_probability
from ar2mdm.sampling.ar import ARSampler, filter_logits
from ar2mdm.sampling.arpc import ARPCSampler
from ar2mdm.sampling.base import (
    SAMPLERS,
    BudgetSampler,
    ModelContext,
    Sampler,
    SampleResult,
    State,
    TraceStep,
    check_options,
    run,
)
from ar2mdm.sampling.cache import CACHES, WindowCache, drift
from ar2mdm.sampling.canvas import check_prompts, make_canvas
from ar2mdm.sampling.confidence import (
    ConfidenceSampler,
    EntropySampler,
    LowConfidenceSampler,
    MarginSampler,
    confidence_fill,
)
from ar2mdm.sampling.remask import RemaskSampler
from ar2mdm.sampling.threshold import FactorSampler, ThresholdSampler, factor_commit, threshold_commit


def sampler_options(name: str) -> tuple[str, ...]:
    """The option names sampler `name` accepts (its class's keyword arguments)."""
    params = inspect.signature(SAMPLERS.get(name).__init__).parameters
    return tuple(p for p, v in params.items() if p not in ("self", "rule") and v.kind is not v.VAR_KEYWORD)


def takes_steps(name: str) -> bool:
    """Whether sampler `name` takes a budget of model calls (`steps`); others decide their own."""
    return "steps" in sampler_options(name)


def build_sampler(name: str, *, strict: bool = True, **options: Any) -> Sampler:
    """The sampler called `name` with `options` (keyword arguments of its class). None-valued
    options are dropped so callers can pass every CLI flag through; with strict=False options the
    sampler does not take are dropped too (one set of flags for several samplers). Yes/no options
    given as strings ("no", "off") are read by `ar2mdm.common.options.parse_bool`, never by truthiness."""
    cls = SAMPLERS.get(name)
    opts = {k: v for k, v in options.items() if v is not None}
    if not strict:
        accepted = set(sampler_options(name))
        opts = {k: v for k, v in opts.items() if k in accepted}
    hints = typing.get_type_hints(cls.__init__)
    # yes/no options from strings (`--model_args stop_at_eos=no`, a config) read by the one rule
    opts = {k: parse_bool(v, k) if hints.get(k) is bool else v for k, v in opts.items()}
    try:
        return cls(**opts)
    except TypeError as err:
        raise UserError(f"sampler {name!r} does not take these options: {err}.") from None


def refuse_unused_options(names: list[str] | tuple[str, ...], options: dict[str, Any], *, flags: bool = True) -> None:
    """Every sampler option given (not None) must be taken by at least one of the samplers `names`:
    an option none of them takes would be dropped without a word (`eval --samplers low-confidence
    --tau 0.5`). flags: name them as command-line flags (--tau) rather than keywords (tau).

    Raises UserError naming the unused options and what each chosen sampler takes.
    """
    given = {k for k, v in options.items() if v is not None}
    taken = {name: set(sampler_options(name)) for name in names}
    unused = sorted(given - set().union(*taken.values())) if taken else sorted(given)
    if not unused:
        return
    shown = (lambda k: "--" + k.replace("_", "-")) if flags else (lambda k: k)
    takes = "; ".join(f"{n} takes {', '.join(shown(o) for o in sorted(t)) or 'no options'}" for n, t in taken.items())
    elsewhere = "; ".join(
        f"{shown(k)} is taken by {', '.join(n for n in SAMPLERS if k in sampler_options(n)) or 'no sampler'}"
        for k in unused
    )
    raise UserError(
        f"{', '.join(shown(k) for k in unused)} {'is' if len(unused) == 1 else 'are'} not an option of "
        f"{'the sampler' if len(names) == 1 else 'any of the samplers'} {', '.join(names)} ({takes}; {elsewhere}): "
        f"drop {'it' if len(unused) == 1 else 'them'}, or choose a sampler that takes {'it' if len(unused) == 1 else 'them'}."
    )


__all__ = [
    "SAMPLERS",
    "BudgetSampler",
    "ARPCSampler",
    "ARSampler",
    "AncestralSampler",
    "CACHES",
    "ConfidenceSampler",
    "EntropySampler",
    "FactorSampler",
    "LowConfidenceSampler",
    "MarginSampler",
    "ModelContext",
    "RemaskSampler",
    "SampleResult",
    "Sampler",
    "State",
    "ThresholdSampler",
    "TraceStep",
    "UniformSampler",
    "WindowCache",
    "build_sampler",
    "refuse_unused_options",
    "check_options",
    "drift",
    "factor_commit",
    "confidence_fill",
    "filter_logits",
    "check_prompts",
    "make_canvas",
    "run",
    "sampler_options",
    "takes_steps",
    "threshold_commit",
    "unmask_probability",
]
