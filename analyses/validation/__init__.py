"""Validation of the attribution methods against models whose circuits are known.

- `groundtruth`: hand-set GPT-2 models with exactly known circuits (`GroundTruth`, `ground_truths`);
- `scoring`: ROC AUC and precision at K of each method's edge and node scores against the known
  circuit (ACDC's protocol, Conmy et al. 2023), `score_methods`, `write_validation`;
- `planted`: a planted shift and a planted non-shift (ARM/MDM pairs whose claim (b) answer is
  certain by construction) run through `analyses.compare.compare` (`python -m
  analyses.validation.planted`).

Regenerate docs/results/validation.md's numbers with
`.venv/bin/python -m analyses.validation --out docs/results/validation`.
"""

from ar2mdm.common import env  # noqa: F401  (process settings before transformers is imported: common.env)
