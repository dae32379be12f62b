"""The controls a comparison is read against: the null pair and the seed floor.

A difference between an ARM and its MDM means something only beside what the same instrument
reports where there is none, and beside the difference that training seeds alone make:

- **the null pair**: each model against itself. Its circuits are attributed a second time, from
  scratch, on the same pool, and the pair goes through the same statistics as the main one
  (paired bootstrap, pooled claims, verdicts). It must give Jaccard 1.0, every effect 0 and the
  verdict "no difference"; anything else is run-to-run noise of the instrument
  (`CompareOptions.null_pair`). Unit profiles are deterministic and are reused, so the null of
  claim (c) checks its statistics only.
- **the seed floor**: the ARM against an ARM' trained alike with another seed, and the MDM
  against an MDM' converted alike with another seed: how different two models of one recipe
  already are. Every claim's effect is computed for the floor pairs too, and "holds" needs the
  effect to clear the floor (`analyses.statistics.floor_bound`). Optional for a user's pair
  (`compare(..., twins={"ar": ARM', "mdm": MDM'})`, CLI `--ar-seed-twin` / `--mdm-seed-twin`);
  the report says when it is missing.

Pairs are named by the roles they join: "main" (ar, mdm), "null_ar" (ar, ar attributed again),
"null_mdm", "floor_ar" (ar, ar_twin), "floor_mdm" (mdm, mdm_twin). Each pair's statistics read as
the main pair's: the Jaccard of the top-K edges (paired bootstrap over the pool) and the
difference of early-layer mass, second model minus first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.compare.pool import Pool, answer_reads, correct_by, tokenizer_warnings
from analyses.depth import compare_depth
from analyses.graph import Graph
from analyses.statistics import Interval, jaccard_bootstrap
from ar2mdm.common.errors import CheckpointError
from probe.model import ProbedModel

TWIN_ROLES = ("ar_twin", "mdm_twin")
# pair name -> (first role, second role); "X_rerun" is role X attributed a second time
CONTROL_PAIRS = {
    "null_ar": ("ar", "ar_rerun"),
    "null_mdm": ("mdm", "mdm_rerun"),
    "floor_ar": ("ar", "ar_twin"),
    "floor_mdm": ("mdm", "mdm_twin"),
}
PAIR_LABELS = {
    "main": "ARM vs MDM",
    "null_ar": "ARM vs itself",
    "null_mdm": "MDM vs itself",
    "floor_ar": "ARM vs ARM' (seed)",
    "floor_mdm": "MDM vs MDM' (seed)",
}


@dataclass
class PairStats:
    """One pair's statistics on one task: the Jaccard of the top-K edges and the early-layer
    mass difference (second - first), each with its interval and [n_boot] bootstrap replicates
    (paired: the same resamples as every other pair of the task)."""

    jaccard: Interval
    jaccard_reps: Float[Tensor, " boot"]
    early_mass_diff: Interval
    early_reps: Float[Tensor, " boot"]

    def to_dict(self) -> dict[str, Any]:
        return {"jaccard": self.jaccard, "early_mass_diff": self.early_mass_diff}


def pair_stats(
    a: Graph,
    b: Graph,
    nodes_a: Mapping[str, Float[Tensor, " examples"]],
    nodes_b: Mapping[str, Float[Tensor, " _examples"]],
    n_layers: int,
    k_edges: int,
    k_nodes: int,
    *,
    task: str,
    n_boot: int,
    seed: int,
) -> PairStats:
    """The statistics of a pair of models on one pool: graphs with per-example scores
    (`attribute(..., per_example=True)`) and per-example node scores. Raises UserError (from
    `jaccard_bootstrap`) when the graphs cover different examples or edges."""
    if a.examples is None or b.examples is None:
        raise ValueError("pair_stats needs per-example scores: attribute(..., per_example=True)")
    jac, jac_reps = jaccard_bootstrap(a.examples, b.examples, k_edges, n_boot=n_boot, seed=seed)
    depth = compare_depth(nodes_a, nodes_b, n_layers, k_nodes, task=task, n_boot=n_boot, seed=seed)
    return PairStats(jac, jac_reps, depth.early_mass_diff, depth.samples["early_mass_diff"])


def check_twins(ar: ProbedModel, mdm: ProbedModel, twins: Mapping[str, ProbedModel]) -> list[str]:
    """Check each seed twin against the model it is a twin of; return warnings.

    twins: {"ar": ARM', "mdm": MDM'} (either may be missing). Errors (CheckpointError): an
    unknown role, a twin of another kind or graph, another tokenizer, another mask id or shift
    (its examples would read differently). Warning: a twin with the very weights of its model
    (the floor is then 0 by construction: train it with another seed).
    """
    warnings = []
    for role, twin in twins.items():
        if role not in ("ar", "mdm"):
            raise CheckpointError(f"seed twins are given for 'ar' or 'mdm', got {role!r}.")
        model = ar if role == "ar" else mdm
        flag = f"--{role}-seed-twin"
        if twin.config.kind != model.config.kind:
            raise CheckpointError(
                f"{flag} must be a {model.config.kind.upper()} like --{role}; this checkpoint is kind {twin.config.kind!r}."
            )
        differ = twin.shape.differences(model.shape, (flag, f"--{role}"))
        if differ:
            raise CheckpointError(
                f"{flag} has another architecture than --{role} ({differ}): a seed twin is the same recipe "
                "with another seed."
            )
        if (twin.config.mask_id, twin.config.shift) != (model.config.mask_id, model.config.shift):
            raise CheckpointError(
                f"{flag} reads examples differently from --{role} (mask id {twin.config.mask_id}, shift "
                f"{twin.config.shift} vs {model.config.mask_id}, {model.config.shift}): convert it with the same recipe."
            )
        try:
            warnings += tokenizer_warnings(model, twin)
        except CheckpointError as err:
            raise CheckpointError(f"{flag}: {err}") from None
        if _same_weights(model, twin):
            warnings.append(
                f"{flag} has the same weights as --{role}: its seed floor is 0 by construction; train the twin with another seed."
            )
    return warnings


def _same_weights(a: ProbedModel, b: ProbedModel) -> bool:
    pa, pb = a.model.state_dict(), b.model.state_dict()
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def with_twins(
    pool: Pool, twins: Mapping[str, ProbedModel], *, batch_size: int, require_correct: bool, criterion: str = "ld"
) -> Pool:
    """The pool restricted to the examples every seed twin answers correctly too (under the
    pool's `criterion`, `analyses.compare.pool.CRITERIA`; all kept when `require_correct` is
    False), so every pair is measured on the same examples. The share of the pool each twin
    answers correctly (under the criterion) and the size before the restriction go into stats."""
    if not twins or len(pool) == 0:
        return pool
    keep = torch.ones(len(pool), dtype=torch.bool)
    stats = dict(pool.stats, pool_before_twins=len(pool))
    for role, twin in twins.items():
        ok = correct_by(answer_reads(twin, pool.ar if role == "ar" else pool.mdm, batch_size=batch_size), criterion)
        stats[f"{role}_twin_correct_on_pool"] = float(ok.float().mean())
        if require_correct:
            keep &= ok
    idx = keep.nonzero().squeeze(1).tolist()
    stats["pool"] = len(idx)
    return Pool(pool.task, [pool.ar[i] for i in idx], [pool.mdm[i] for i in idx], stats)
