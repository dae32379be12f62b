"""Where in depth a model does a task: layer distribution, logit lens, targeted ablations.

- `distribution`: the layer distribution of the top-K components of any score map (mass per
  layer, early-third mass, centre of mass) and `compare_depth` of two models with paired
  bootstrap intervals;
- `lens`: `lens_profile`, the logit lens by layer over examples;
- `ablation`: ablations by depth (zero / mean / corrupt), exact node patching and DLA node scores,
  and `targeted_ablation` of a region's top-K against random and region controls.

Everything is importable from `analyses.depth` itself.

    >>> scores = {"L0.H1": 3.0, "L1.mlp": -1.0, "L2.H0": 2.0}
    >>> d = layer_distribution(scores, n_layers=3, k=2)
    >>> d.top, [round(m, 2) for m in d.mass], round(d.early_mass, 2)
    (('L0.H1', 'L2.H0'), [0.6, 0.0, 0.4], 0.6)
"""

from analyses.depth.ablation import (
    AblationResult,
    TargetedAblation,
    ablate,
    ablated_logit_diffs,
    dla_scores,
    layer_components,
    node_patching_scores,
    random_matched,
    region_matched,
    summarise_ablation,
    targeted_ablation,
)
from analyses.depth.distribution import (
    REGIONS,
    DepthComparison,
    LayerDistribution,
    Region,
    Weight,
    centre_of_mass,
    compare_depth,
    early_mass,
    layer_distribution,
    layer_of,
    mean_scores,
    region,
    top_components,
)
from analyses.depth.lens import LensProfile, lens_profile
from analyses.patching import SOURCES as METHODS
from analyses.patching import Source as Method
from analyses.patching import baseline_logit_diffs, reference_means

__all__ = [
    "METHODS",
    "REGIONS",
    "AblationResult",
    "DepthComparison",
    "LayerDistribution",
    "LensProfile",
    "Method",
    "Region",
    "TargetedAblation",
    "Weight",
    "ablate",
    "ablated_logit_diffs",
    "baseline_logit_diffs",
    "centre_of_mass",
    "compare_depth",
    "dla_scores",
    "early_mass",
    "layer_components",
    "layer_distribution",
    "layer_of",
    "lens_profile",
    "mean_scores",
    "node_patching_scores",
    "random_matched",
    "reference_means",
    "region",
    "region_matched",
    "summarise_ablation",
    "targeted_ablation",
    "top_components",
]
