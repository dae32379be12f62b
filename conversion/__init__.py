"""Turning AR checkpoints into masked diffusion models.

- `checkpoints`: loading any AR source (HF folder, .gguf, the built-in names) and any checkpoint
  (`load_any`); `mdm`: the mask token, saving and loading MDM folders.
- `data`: corpora -> packed, held-out-split training blocks; SFT rows.
- `objective`: the diffusion loss (each step numbered) and the AR baseline loss.
- `train`: the training loop on accelerate (one process, DDP, FSDP); `runfolder`: a run's folder
  (checkpoints, log, resume / overwrite); `config`: options from defaults < file < flags.
- `organism`: the small model organism trained from scratch on the task mixture.
- `report`: the training curves.

The floors it stands on (errors, metadata, noise, attention, samplers, tasks) are `ar2mdm.common`,
`ar2mdm.diffusion`, `ar2mdm.sampling` and `ar2mdm.tasks`.
"""

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
