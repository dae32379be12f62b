"""The pair of models and the common-correct pool every comparison is measured on.

`check_pair` refuses what cannot be compared (not an ARM and an MDM, different graphs, different
tokenizers) and warns about what can but should be read with care (special tokens that differ,
an MDM that is not the ARM's own conversion). `task_examples` draws candidate examples (the
organism's held-out sets for an organism conversion, else the built-in tasks aligned under the
tokenizer); `common_pool` keeps those both models render aligned and answer correctly.

"Correct" is a criterion (`CRITERIA`), read at the first answer token's read position:
- "ld" (the default, as before): the logit difference answer - counterfactual is > 0. A forced
  choice between two candidates: a model can prefer the answer to the counterfactual while a third
  token tops both (a barely converted MDM on IOI: LD > 0 on 94% of examples, the answer its top
  token on none). The circuits explain this logit difference;
- "top1": the answer (any id of the correct set) is the model's most likely token there (an MDM's
  mask token left out: it never writes it).
Both accuracies are reported for both models whichever criterion builds the pool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analyses.batching import batches
from ar2mdm.common.errors import CheckpointError, TaskError, UserError
from ar2mdm.common.families import FAMILIES
from ar2mdm.tasks import Example, render
from ar2mdm.tasks.base import Rendered
from probe.lens import answer_logit_diff
from probe.model import ProbedModel

MIN_POOL = 4  # fewer common-correct examples than this: the task is reported, not analysed

PoolCriterion = Literal["ld", "top1"]
# criterion -> (its name in table headers, what it means)
CRITERIA: dict[str, tuple[str, str]] = {
    "ld": ("LD>0", "logit difference answer - counterfactual > 0, a forced choice between the two"),
    "top1": ("top-1", "the answer is the model's most likely token at the read position"),
}


def check_criterion(criterion: str) -> PoolCriterion:
    """`criterion` if it is one of `CRITERIA`, else a UserError naming them."""
    if criterion not in CRITERIA:
        choices = "; ".join(f"{k} ({v[1]})" for k, v in CRITERIA.items())
        raise UserError(f"pool criterion {criterion!r} is unknown; choose one of: {choices}.")
    return criterion  # type: ignore[return-value]


def criterion_label(criterion: str | None) -> str:
    """A criterion's name in table headers ("LD>0", "top-1"); reports written before the pool
    had a criterion (None) used LD > 0."""
    return CRITERIA[criterion or "ld"][0]


def check_pair(ar: ProbedModel, mdm: ProbedModel) -> list[str]:
    """Check that `ar` and `mdm` are an ARM and an MDM that can be compared; return warnings.

    Errors (CheckpointError): the kinds are not ARM and MDM; the graphs differ (layers, heads, KV
    heads, MLP width); the tokenizers disagree on any token's id (the MDM may add only its mask
    token). Warnings: special tokens that differ, and an MDM whose recorded source (its weights'
    sha256) is not this ARM, i.e. not the ARM's own conversion.
    """
    if ar.config.kind != "ar":
        raise CheckpointError(f"--ar must be an autoregressive checkpoint; this one is kind {ar.config.kind!r}.")
    if mdm.config.kind != "mdm":
        raise CheckpointError(
            "--mdm must be a masked diffusion checkpoint (a folder written by `ar2mdm convert`, or a "
            "published MDM such as Dream or LLaDA: docs/FORMATS.md); "
            f"this one is kind {mdm.config.kind!r}."
        )
    differ = ar.shape.differences(mdm.shape, ("AR", "MDM"))
    if differ:
        raise CheckpointError(
            f"the models differ in architecture ({differ}): edge overlap needs the same graph. "
            "Compare an ARM with its own conversion."
        )
    warnings = tokenizer_warnings(ar, mdm)
    published = FAMILIES.get(mdm.meta.source_format.removeprefix("gguf:"))
    if published is not None:
        sources = " or ".join(published.ar_sources) or "none (trained as an MDM from scratch)"
        warnings.append(
            f"the MDM is a published {published.title} checkpoint (AR source: {sources}), not ar2mdm's "
            "conversion of --ar: differences mix its authors' conversion recipe and data with the change "
            "of objective; --ar should be that AR source."
        )
    src, own = mdm.meta.source_hash, ar.meta.source_hash
    if src and own and src != own:
        warnings.append(
            f"the MDM was converted from {mdm.meta.source or 'another model'} (weights sha256 {src[:12]}...), but "
            f"--ar's weights hash to {own[:12]}...: this is not the ARM's own conversion, so every difference "
            "below mixes the conversion with the difference between the two source models."
        )
    return warnings


def tokenizer_warnings(ar: ProbedModel, mdm: ProbedModel) -> list[str]:
    """CheckpointError if the vocabularies disagree; warnings for differing special tokens.

    Every token of the ARM must have the same id in the MDM (else token-level comparisons read
    different tokens). The MDM may add its mask token, and special (added) tokens such as Dream's
    `<|beginoftext|>`: those cannot occur in task text, so they are a warning. A regular token only
    the MDM has is an error (the two would split the same text differently).
    """
    ta, tb = ar.tokenizer, mdm.tokenizer
    if ta is None or tb is None or not hasattr(ta, "get_vocab") or not hasattr(tb, "get_vocab"):
        return []
    va, vb = ta.get_vocab(), tb.get_vocab()
    moved = sorted(t for t, i in va.items() if vb.get(t) != i)
    new_tokens = set(vb) - set(va) - {getattr(tb, "mask_token", None)}
    special_b = set(getattr(tb, "all_special_tokens", []) or []) | {
        str(t) for t in (getattr(tb, "added_tokens_decoder", {}) or {}).values() if getattr(t, "special", False)
    }
    added = sorted(new_tokens - special_b)
    added_special = sorted(new_tokens & special_b)
    if moved or added:
        example = (
            f"{moved[0]!r}: {va[moved[0]]} in the ARM, {vb.get(moved[0])} in the MDM"
            if moved
            else f"{added[0]!r} only in the MDM"
        )
        counts = [
            f"{len(moved)} of the ARM's {len(va)} tokens have another id in the MDM" if moved else "",
            f"{len(added)} regular tokens exist only in the MDM" if added else "",
        ]
        raise CheckpointError(
            f"--ar and --mdm use different tokenizers ({'; '.join(c for c in counts if c)}; e.g. {example}). "
            "Token-level comparisons need one vocabulary: compare an MDM with the ARM it was converted "
            "from (Dream-v0 with Qwen2.5, DiffuLLaMA with LLaMA-2, DiffuGPT with GPT-2, ...)."
        )
    extra = (
        [
            f"the MDM's tokenizer adds special tokens the ARM lacks ({', '.join(added_special[:5])}); they never occur in task text."
        ]
        if added_special
        else []
    )
    differ = [
        f"{role} {getattr(ta, role + '_token', None)!r} vs {getattr(tb, role + '_token', None)!r}"
        for role in ("bos", "eos", "pad", "unk")
        if getattr(ta, role + "_token_id", None) != getattr(tb, role + "_token_id", None)
    ]
    return extra + ([f"the tokenizers' special tokens differ (ARM vs MDM: {', '.join(differ)})."] if differ else [])


def task_examples(mdm: ProbedModel, tasks: Sequence[str], n: int, seed: int = 0) -> dict[str, list[Example]]:
    """n candidate examples per task: the organism's held-out sets for an organism conversion
    (prompts its training never saw), else the built-in tasks aligned under this tokenizer."""
    from ar2mdm.tasks import get_task

    tok = mdm.tokenizer
    from conversion.organism import eval_examples, is_organism

    if mdm.meta is not None and is_organism(mdm.meta.source):
        examples = eval_examples(n, eval_seed=seed)
        return {t: examples[t] for t in tasks}
    out = {}
    for t in tasks:
        try:
            out[t] = get_task(t, tok).generate_aligned(n, tok, seed, modes=("ar", "mdm"), mask_id=mdm.config.mask_id)
        except TaskError as err:
            out[t] = []
            print(f"{t}: no aligned examples for this tokenizer ({err})")
    return out


def rendered_for(pm: ProbedModel, example: Example) -> Rendered:
    cfg = pm.config
    return render(example, pm.tokenizer, cfg.kind, shift=cfg.shift, mask_id=cfg.mask_id)


@dataclass
class Pool:
    """One task's common-correct pool: the same examples rendered for each model."""

    task: str
    ar: list[Rendered]
    mdm: list[Rendered]
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ar)


def read_answers(
    logits: Float[Tensor, "batch pos vocab"], items: Sequence[Rendered], *, exclude: int | None = None
) -> tuple[Float[Tensor, " batch"], Bool[Tensor, " batch"]]:
    """(logit difference [B], top-1 [B]) of each example at its first read position: the logit
    difference over the candidate sets (`probe.lens.answer_logit_diff`), and whether the most
    likely token there (token `exclude` left out: an MDM's mask) is one of the correct ids."""
    ld = answer_logit_diff(logits, items).detach().float().cpu()
    pos = torch.tensor([int(r.read_positions[0]) for r in items], device=logits.device)
    rows = logits[torch.arange(len(items), device=logits.device), pos].float()
    if exclude is not None and 0 <= exclude < rows.shape[-1]:
        rows[:, exclude] = -math.inf
    best = rows.argmax(-1).cpu()
    top1 = torch.tensor([int(b) in set(r.correct_ids.tolist()) for b, r in zip(best, items, strict=True)])
    return ld, top1


@torch.no_grad()
def answer_reads(pm: ProbedModel, items: Sequence[Rendered], *, batch_size: int = 64) -> dict[str, Tensor]:
    """{"ld": logit differences [N], "top1": bool [N]} of `pm` on clean `items` (`read_answers`,
    one forward pass per batch; an MDM's mask token is never its top-1)."""
    exclude = pm.config.mask_id if pm.config.kind == "mdm" else None
    lds, tops = [], []
    for batch in batches(pm, items, batch_size):
        ld, top1 = read_answers(pm(batch), batch.items, exclude=exclude)
        lds.append(ld)
        tops.append(top1)
    return {"ld": torch.cat(lds), "top1": torch.cat(tops)}


def correct_by(reads: dict[str, Tensor], criterion: str) -> Bool[Tensor, " examples"]:
    """Which examples `reads` (`answer_reads`) count as correct under `criterion`."""
    return reads["ld"] > 0 if check_criterion(criterion) == "ld" else reads["top1"].bool()


def accuracies(role: str, reads: dict[str, Tensor]) -> dict[str, float]:
    """{"accuracy_{role}_ld", "accuracy_{role}_top1"}: the share correct under each criterion."""
    return {f"accuracy_{role}_{c}": float(correct_by(reads, c).float().mean()) for c in CRITERIA}


def common_pool(
    ar: ProbedModel,
    mdm: ProbedModel,
    task: str,
    examples: Sequence[Example],
    pool_size: int,
    *,
    batch_size: int = 64,
    require_correct: bool = True,
    criterion: str = "ld",
) -> Pool:
    """Examples both models render aligned and (require_correct) both answer correctly under
    `criterion` ("ld" or "top1", `CRITERIA`), at most `pool_size`, in the order drawn.

    stats: "drawn", "aligned", "pool", "criterion"; "accuracy_ar" / "accuracy_mdm" and
    "both_correct" under the criterion; and for each criterion c, "accuracy_ar_c",
    "accuracy_mdm_c" and "both_correct_c" (accuracies over the aligned examples)."""
    criterion = check_criterion(criterion)
    rows_ar, rows_mdm = [], []
    for ex in examples:
        try:
            ra, rm = rendered_for(ar, ex), rendered_for(mdm, ex)
        except TaskError:
            continue
        bad = any(
            len(r.counterfactual_ids) == 0 or set(r.correct_ids.tolist()) & set(r.counterfactual_ids.tolist())
            for r in (ra, rm)
        )
        if not bad:
            rows_ar.append(ra)
            rows_mdm.append(rm)
    stats: dict[str, Any] = {"drawn": len(examples), "aligned": len(rows_ar), "criterion": criterion}
    if not rows_ar:
        nan = {f"accuracy_{m}{c}": math.nan for m in ("ar", "mdm") for c in ("", "_ld", "_top1")}
        return Pool(task, [], [], {**stats, "pool": 0, **nan})
    reads_ar = answer_reads(ar, rows_ar, batch_size=batch_size)
    reads_mdm = answer_reads(mdm, rows_mdm, batch_size=batch_size)
    both = {c: correct_by(reads_ar, c) & correct_by(reads_mdm, c) for c in CRITERIA}
    keep = both[criterion] if require_correct else torch.ones(len(rows_ar), dtype=torch.bool)
    idx = keep.nonzero().squeeze(1)[:pool_size].tolist()
    stats.update(
        pool=len(idx),
        accuracy_ar=float(correct_by(reads_ar, criterion).float().mean()),
        accuracy_mdm=float(correct_by(reads_mdm, criterion).float().mean()),
        both_correct=int(both[criterion].sum()),
        **accuracies("ar", reads_ar),
        **accuracies("mdm", reads_mdm),
        **{f"both_correct_{c}": int(b.sum()) for c, b in both.items()},
    )
    return Pool(task, [rows_ar[i] for i in idx], [rows_mdm[i] for i in idx], stats)
