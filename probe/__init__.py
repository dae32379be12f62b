"""The hooking layer and the inputs to probe with.

`ProbedModel` wraps an AR or MDM checkpoint behind canonical component names (`probe.names`):
`run_with_cache` records activations, `intervene` edits nodes and edges, `run_with_grads` takes
gradients w.r.t. node outputs and receiver inputs, `probe.lens` reads the residual stream through
the unembedding. `tasks` holds the task suites (IOI, Greater-Than, induction, Countdown,
infilling, sudoku) that render clean/corrupted pairs for AR or MDM reading.
"""

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from probe.cache import Cache, DiskCache
from probe.decompose import Decomposition
from probe.interventions import Interventions
from probe.lens import Attribution, LensCurve, answer_logit_diff, direct_logit_attribution, logit_lens
from probe.model import GradResult, ProbeConfig, ProbedModel

__all__ = [
    "Attribution",
    "Cache",
    "Decomposition",
    "DiskCache",
    "GradResult",
    "Interventions",
    "LensCurve",
    "ProbeConfig",
    "ProbedModel",
    "answer_logit_diff",
    "direct_logit_attribution",
    "logit_lens",
]
