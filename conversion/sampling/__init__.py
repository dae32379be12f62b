"""Samplers for masked diffusion models, each a small state machine (`init_state`, `step`, `done`).

So far: confidence-ordered filling (`confidence`), the LLaDA "low-confidence" remasking rule in
its simplest form. Every sampler reads predictions through `conversion.metadata.read_positions`
(the checkpoint's shift) and never changes a position that was not masked at the start.
"""

from conversion.sampling.confidence import FillState, confidence_fill, done, init_state, step

__all__ = ["FillState", "confidence_fill", "done", "init_state", "step"]
