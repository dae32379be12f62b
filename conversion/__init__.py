"""Make and run masked diffusion models from autoregressive checkpoints.

Modules: `checkpoints` (load AR sources, save/load MDMs), `data` (corpora -> packed blocks),
`organism` (the small from-scratch model organism), `cli` (the `ar2mdm` command).
"""

from conversion import _env  # noqa: F401  (sets offline flags before transformers is imported)
