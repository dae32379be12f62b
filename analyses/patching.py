"""Activation patching: the one function behind every intervention experiment of the analyses.

A `Patch` names what one patched run changes and where the new values come from:

- components: nodes in canonical names (heads `L{l}.H{h}`, MLPs `L{l}.mlp`, neurons
  `L{l}.mlp.neuron{i}`) or edges `sender->receiver` (what one sender writes into one receiver);
- source: "corrupt" (each example's value on its corrupted input: noising, resample ablation; an
  edge carries its sender's corrupted value into that receiver only), "zero" (nodes: the output
  set to 0), or "mean" (nodes: the mean over every real token of reference examples,
  `reference_means`).

`patch_batch` runs patches on one batch and returns a metric per patch and example [P, B];
several patches can share one forward pass as stacked copies of the batch (`copies`). The
metric is any function of (logits of one copy [B, T, V], the batch) -> [B]; the default is the
logit difference at each example's read position (`probe.answer_logit_diff`). `patched_metrics`
streams a list of examples through it ([P, N]) and `baseline_logit_diffs` gives the unpatched
clean and corrupted logit differences. Everything else is a thin wrapper: exact edge and node attribution and
faithfulness (`analyses.circuits`, `analyses.attribution`), ablations, node patching and the
targeted ablation (`analyses.depth.ablation`), causal checks of units (`analyses.neurons`).

    >>> effects = patched_metrics(pm, items, [Patch(("L0.H1",)), Patch(("L1.mlp",), "zero")])  # doctest: +SKIP
    >>> effects.shape                                                                   # doctest: +SKIP
    torch.Size([2, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from analyses.batching import batches, corrupted_inputs
from ar2mdm.common.errors import UserError
from ar2mdm.tasks.base import Batch, Rendered
from probe.cache import Cache
from probe.lens import answer_logit_diff
from probe.model import ProbedModel
from probe.names import Name, parse

Source = Literal["corrupt", "zero", "mean"]
SOURCES: tuple[str, ...] = ("corrupt", "zero", "mean")
Metric = Callable[[Float[Tensor, "batch pos vocab"], Batch], Float[Tensor, " batch"]]


@dataclass(frozen=True)
class Patch:
    """One patched run: `components` (node names or `sender->receiver` edges) take their values
    from `source` ("corrupt", "zero" or "mean"; edges: "corrupt" only)."""

    components: tuple[str, ...]
    source: Source = "corrupt"


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """[B] logit difference correct - counterfactual at each example's read position."""
    return answer_logit_diff(logits, batch)


def component(pm: ProbedModel, name: str) -> Name:
    n = pm.shape.check(name)
    if n.kind not in ("head", "mlp", "neuron"):
        raise UserError(
            f"cannot ablate {name!r}: ablations act on heads (L{{l}}.H{{h}}), MLPs (L{{l}}.mlp) and neurons (L{{l}}.mlp.neuron{{i}})."
        )
    return n


def stored_name(n: Name) -> str:
    """The cache entry a component is read from (neurons live in their layer's vector)."""
    return f"L{n.layer}.mlp.neurons" if n.kind == "neuron" else str(n)


def _edge(name: str) -> tuple[str, str] | None:
    sender, sep, receiver = name.partition("->")
    return (sender, receiver) if sep else None


def _check(pm: ProbedModel, patches: Sequence[Patch], means: Mapping[str, Tensor] | None) -> None:
    for patch in patches:
        if patch.source not in SOURCES:
            raise UserError(f"unknown ablation method {patch.source!r}; use one of {', '.join(SOURCES)}.")
        for c in patch.components:
            if _edge(c) is not None:
                if patch.source != "corrupt":
                    raise UserError(f"edge {c!r}: an edge is patched from the corrupted run (source 'corrupt').")
                continue
            pm.shape.check(c)
            if patch.source == "mean" and (means is None or c not in means):
                raise UserError(
                    f"mean ablation needs a reference mean for {c!r}: pass means=reference_means(pm, reference_items, components)."
                )


def _stored_names(patches: Sequence[Patch]) -> list[str]:
    """The cache entries the corrupted run must hold for `patches`."""
    names = set()
    for patch in patches:
        if patch.source != "corrupt":
            continue
        for c in patch.components:
            edge = _edge(c)
            names.add(edge[0] if edge else stored_name(parse(c)))
    return sorted(names)


def _apply(iv, patch: Patch, source: Cache | None, means: Mapping[str, Tensor] | None, rows: Tensor | None) -> None:
    edges = [edge for edge in map(_edge, patch.components) if edge is not None]
    if edges:  # all at once: a circuit's complement is tens of thousands of edges
        assert source is not None
        iv.patch_edges(edges, source, pos=rows)
    for c in patch.components:
        if _edge(c) is not None:
            continue
        if patch.source == "zero":
            iv.zero(c, pos=rows)
        elif patch.source == "mean":
            assert means is not None
            iv.set(c, means[c], pos=rows)
        else:
            assert source is not None
            iv.patch(c, source, pos=rows)


def patch_batch(
    pm: ProbedModel,
    batch: Batch,
    patches: Sequence[Patch],
    metric: Metric = logit_diff,
    *,
    corrupt: Cache | None = None,
    means: Mapping[str, Float[Tensor, "*_shape"]] | None = None,
    copies: int = 1,
) -> Float[Tensor, "patches batch"]:
    """[P, B] `metric` with each patch of `patches` applied on `batch`'s clean input (in the
    metric's dtype). corrupt: the corrupted run's cache when the caller has it (else it is run
    here, for "corrupt" patches); copies: patches stacked per forward pass (rows of the batch
    repeated, each copy patched on its own rows only)."""
    _check(pm, patches, means)
    needed = _stored_names(patches)
    if corrupt is None and needed:
        _, corrupt = pm.run_with_cache(corrupted_inputs(batch), needed)
    B, T = batch.input_ids.shape
    out: list[Tensor] = []
    for start in range(0, len(patches), copies):
        chunk = patches[start : start + copies]
        c = len(chunk)
        inputs = {"input_ids": batch.input_ids.repeat(c, 1), "attention_mask": batch.attention_mask.repeat(c, 1)}
        source = corrupt
        if c > 1 and corrupt is not None:  # each copy reads the corrupted values of its own rows
            source = Cache({n: corrupt[n].repeat(c, *([1] * (corrupt[n].ndim - 1))) for n in _stored_names(chunk)})
        with pm.intervene() as iv:
            for j, patch in enumerate(chunk):
                rows = None
                if c > 1:
                    rows = torch.zeros(c * B, T, dtype=torch.bool)
                    rows[j * B : (j + 1) * B] = True
                _apply(iv, patch, source, means, rows)
            logits = pm(inputs)
        out += [metric(logits[j * B : (j + 1) * B], batch) for j in range(c)]
    return torch.stack(out)


@torch.no_grad()
def patched_metrics(
    pm: ProbedModel,
    items: Sequence[Rendered],
    patches: Sequence[Patch],
    metric: Metric = logit_diff,
    *,
    means: Mapping[str, Float[Tensor, "*_shape"]] | None = None,
    batch_size: int = 64,
) -> Float[Tensor, "patches examples"]:
    """[P, N] `metric` of every example with each patch applied (streamed over batches, on CPU).
    A patch without components gives the clean values."""
    _check(pm, patches, means)
    parts = [patch_batch(pm, batch, patches, metric, means=means).cpu() for batch in batches(pm, items, batch_size)]
    return torch.cat(parts, 1)


@torch.no_grad()
def baseline_logit_diffs(
    pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64
) -> tuple[Float[Tensor, " examples"], Float[Tensor, " examples"]]:
    """(clean [N], corrupted [N]) logit differences at each example's read position: the
    unpatched ends every patching effect is measured between."""
    clean, corrupt = [], []
    for batch in batches(pm, items, batch_size):
        clean.append(answer_logit_diff(pm(batch), batch).cpu())
        corrupt.append(answer_logit_diff(pm(corrupted_inputs(batch)), batch).cpu())
    return torch.cat(clean), torch.cat(corrupt)


@torch.no_grad()
def reference_means(
    pm: ProbedModel, items: Sequence[Rendered], components: Sequence[str], *, batch_size: int = 64
) -> dict[str, Float[Tensor, "*_shape"]]:
    """Each component's mean output over every real token of the clean `items` (streamed):
    [d_model] for heads and MLPs, a scalar for neurons."""
    parsed = [component(pm, c) for c in components]
    stored = sorted({stored_name(n) for n in parsed})
    sums: dict[str, Tensor] = {}
    count = 0.0
    for batch in batches(pm, items, batch_size):
        _, cache = pm.run_with_cache(batch, stored)
        mask = batch.attention_mask.to(torch.float64)
        count += float(mask.sum())
        for s in stored:
            x = cache[s].to(torch.float64)
            part = (x * mask.to(x.device)[..., None]).sum((0, 1)).cpu()
            sums[s] = sums[s] + part if s in sums else part
    out = {}
    for c, n in zip(components, parsed, strict=True):
        mean = sums[stored_name(n)] / count
        out[c] = (mean[n.neuron] if n.kind == "neuron" else mean).float()
    return out
