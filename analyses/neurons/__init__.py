"""How specialised single units are: MLP neurons and attention heads across tasks.

- `metrics`: concentration and selectivity metrics (pure functions, hand-checked);
- `profile`: `profile_units` (attribution and activation of every unit per task, streamed),
  `UnitProfile`, `compare_profiles` (two models with bootstrap intervals);
- `causal`: `causal_check` (ablating a task's top units against random units from the same
  layers) and `vocab_projection` (what a neuron writes, through the unembedding).

Everything is importable from `analyses.neurons` itself.
"""

from analyses.neurons.causal import CausalCheck, Projection, causal_check, vocab_projection
from analyses.neurons.metrics import (
    SHARES,
    Moments,
    excess_kurtosis,
    gini,
    hoyer,
    normalised_entropy,
    selectivity,
    selectivity_index,
    units_for_share,
)
from analyses.neurons.profile import (
    On,
    UnitKind,
    UnitProfile,
    compare_profiles,
    profile_units,
    unit_attributions,
    unit_names,
)

__all__ = [
    "SHARES",
    "CausalCheck",
    "Moments",
    "On",
    "Projection",
    "UnitKind",
    "UnitProfile",
    "causal_check",
    "compare_profiles",
    "excess_kurtosis",
    "gini",
    "hoyer",
    "normalised_entropy",
    "profile_units",
    "selectivity",
    "selectivity_index",
    "unit_attributions",
    "unit_names",
    "units_for_share",
    "vocab_projection",
]
