"""Turning AR checkpoints into masked diffusion models.

- `checkpoints`: loading any AR source (HF folder, .gguf, the built-in names) and any checkpoint
  (`load_any`); `mdm`: the mask token, saving and loading MDM folders.
- `data`: corpora -> packed, held-out-split training blocks; SFT rows.
- `objective`: the diffusion loss (each step numbered) and the AR baseline loss.
- `train`: the training loop on accelerate (one process, DDP, FSDP); `runfolder`: a run's folder
  (checkpoints, log, resume / overwrite); `config`: options from defaults < file < flags.
- `organism`: the small model organism trained from scratch on the task mixture.
- `report`: the training curves.

`conversion.errors`, `.metadata`, `.noise`, `.attention` and `.sampling` are kept so that older
imports work; the code lives in `common`, `diffusion` and `sampling`.
"""

import common  # noqa: F401  (offline flags before transformers is imported)
