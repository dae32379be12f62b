"""Measurements on top of `probe` and `sampling`.

- `generation`: sampler accuracy / NFE / tokens/s, generative perplexity.
- `circuits` (+ `graph`, `circuit_plots`): edge attribution (exact, EAP, EAP-IG), circuits,
  faithfulness, Jaccard, node importance.
- `depth`: layer distribution of important components, logit lens, targeted ablations.
- `neurons`: unit specialisation metrics and causal checks.
- `compare`: ARM vs MDM on a common-correct pool; the reference study's claims with intervals.
- `study`: the whole path from an AR checkpoint to report.html, in cached stages.

Modules are imported on demand (`from analyses.compare import compare`); nothing heavy loads here.
"""
