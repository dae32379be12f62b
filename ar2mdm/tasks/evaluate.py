"""Scoring a plain Hugging Face model on task examples.

Two views of "does the model do the task":

- `logit_metrics`: one forward pass per batch; at the read position of the first answer token
  (AR: the last prompt token; MDM: the first mask, or the token before it with shift on) compare
  the candidate sets. For sets C (correct) and K (counterfactual),

      logit_diff = logsumexp(logits[C]) - logsumexp(logits[K])
      prob_diff  = sum(softmax(logits)[C]) - sum(softmax(logits)[K])

  For singletons (IOI: C = {IO}, K = {S}) logit_diff is the plain logit difference; for
  Greater-Than sets it is the log-odds of "some correct digit" against "some incorrect digit" and
  prob_diff is the metric of Hanna et al. An example counts as correct when logit_diff > 0.
- `greedy_accuracy`: generate the answer greedily (AR, causal) and apply the task's exact checker.

Batches are right-padded with `collate` for scoring (positions stay where `render` put them) and
left-padded for generation (every row's next token is then at the last column); both give the
same numbers as running one example at a time. Put the model in eval mode first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ar2mdm.common.errors import TaskError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.common.modeling import device_of, kv_cache_kwargs, pad_id, position_ids, returned_kv_cache
from ar2mdm.tasks.base import Example, Mode, Rendered, Task, Tokenizer, collate, continuation_ids, encode_prompt, render

# The least mean clean - corrupted logit difference a task should show before its circuits are
# attributed: below it, attribution measures a tiny effect (reports flag such tasks "small!").
LD_GAP_TARGET = 1.0


def _device(model: torch.nn.Module) -> torch.device:
    return device_of(model)


def set_scores(
    logits: Float[Tensor, " vocab"], correct: Int[Tensor, " _correct"], counter: Int[Tensor, " _counter"]
) -> tuple[float, float]:
    """(logit_diff, prob_diff) of one logit vector [V] for candidate id sets (module docstring)."""
    lp = logits.float()
    probs = torch.softmax(lp, dim=-1)
    diff = torch.logsumexp(lp[correct], 0) - torch.logsumexp(lp[counter], 0)
    pdiff = probs[correct].sum() - probs[counter].sum()
    return float(diff), float(pdiff)


def _as_rendered(
    items: Sequence[Example | Rendered], tokenizer: Tokenizer, mode: Mode, meta: ModelMeta | None
) -> list[Rendered]:
    if mode == "mdm" and meta is None and any(isinstance(x, Example) for x in items):
        raise TaskError("mode='mdm' needs the checkpoint's ModelMeta (meta=...) for shift and mask_id.")
    shift = meta.shift if meta is not None else True
    mask_id = meta.mask_id if meta is not None else None
    out = []
    for x in items:
        r = x if isinstance(x, Rendered) else render(x, tokenizer, mode, shift=shift, mask_id=mask_id)
        if len(r.counterfactual_ids) == 0:
            raise TaskError(
                f"{r.example.task}: example {r.example.prompt!r} has no counterfactual answer; "
                "logit metrics need one (set Example.counterfactual)."
            )
        out.append(r)
    return out


@torch.no_grad()
def logit_metrics(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    examples_or_rendered: Sequence[Example | Rendered],
    *,
    mode: Mode = "ar",
    meta: ModelMeta | None = None,
    batch_size: int = 16,
    corrupted: bool = False,
) -> dict[str, Any]:
    """Logit and probability differences at the first answer token's read position.

    Examples are rendered in `mode` (for "mdm", `meta` supplies shift and mask_id); `Rendered`
    items are used as they are. Returns per-example tensors "logit_diff" [N] and "prob_diff" [N],
    and floats "accuracy" (fraction with logit_diff > 0), "mean_logit_diff", "mean_prob_diff",
    and "n". With `corrupted=True` the same keys prefixed "corrupted_" are added for the
    corrupted inputs (read at the same positions, against the same candidate sets).
    """
    if batch_size < 1:
        raise TaskError(f"batch_size must be >= 1, got {batch_size}.")
    rendered = _as_rendered(examples_or_rendered, tokenizer, mode, meta)
    if not rendered:
        raise TaskError("logit_metrics got no examples.")
    device = _device(model)
    pad = pad_id(tokenizer)
    sources = ("clean", "corrupted") if corrupted else ("clean",)
    diffs: dict[str, list[float]] = {s: [] for s in sources}
    pdiffs: dict[str, list[float]] = {s: [] for s in sources}
    for start in range(0, len(rendered), batch_size):
        batch = collate(rendered[start : start + batch_size], pad)
        mask = batch.attention_mask.to(device)
        for source in sources:
            ids = batch.input_ids if source == "clean" else batch.corrupted_ids
            logits = model(input_ids=ids.to(device), attention_mask=mask, position_ids=position_ids(mask)).logits
            for b, r in enumerate(batch.items):
                pos = int(r.read_positions[0])
                d, p = set_scores(logits[b, pos].cpu(), r.correct_ids, r.counterfactual_ids)
                diffs[source].append(d)
                pdiffs[source].append(p)
    out: dict[str, Any] = {"n": len(rendered)}
    for source in sources:
        prefix = "" if source == "clean" else "corrupted_"
        ld = torch.tensor(diffs[source])
        pd = torch.tensor(pdiffs[source])
        out[prefix + "logit_diff"] = ld
        out[prefix + "prob_diff"] = pd
        out[prefix + "accuracy"] = float((ld > 0).float().mean())
        out[prefix + "mean_logit_diff"] = float(ld.mean())
        out[prefix + "mean_prob_diff"] = float(pd.mean())
    return out


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    *,
    batch_size: int = 16,
) -> list[str]:
    """Greedy causal continuations of `prompts`, cut at EOS and at the first newline.

    `max_new_tokens` is one limit or one per prompt. Prompts are left-padded with explicit
    position ids and decoded with the KV cache; the result equals generating one prompt at a time.
    """
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise TaskError(f"got {len(prompts)} prompts but {len(limits)} max_new_tokens values.")
    device = _device(model)
    pad = pad_id(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        lims = limits[start : start + batch_size]
        B, T = len(chunk), max(len(c) for c in chunk)
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, c in enumerate(chunk):
            ids[b, T - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[b, T - len(c) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = position_ids(mask)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        generated: list[list[int]] = [[] for _ in range(B)]
        done = [lim <= 0 for lim in lims]
        for step in range(max(lims)):
            nxt = out.logits[:, -1].argmax(-1)
            for b in range(B):
                if done[b]:
                    continue
                tok = int(nxt[b])
                if eos is not None and tok == eos:
                    done[b] = True
                    continue
                generated[b].append(tok)
                if len(generated[b]) >= lims[b] or "\n" in tokenizer.decode([tok]):
                    done[b] = True
            if all(done) or step == max(lims) - 1:
                break
            mask = torch.cat([mask, mask.new_ones((B, 1))], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **kv_cache_kwargs(model, returned_kv_cache(out)),
            )
        for g in generated:
            texts.append(tokenizer.decode(g).split("\n", 1)[0])
    return texts


def greedy_accuracy(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    margin: int = 4,
) -> float:
    """Fraction of `examples` whose greedy AR continuation passes `task.check`.

    Each example is generated from its AR prompt until a newline, EOS, or `max_new_tokens`
    (default: the reference answer's token length + `margin`).
    """
    if not examples:
        raise TaskError("greedy_accuracy got no examples.")
    prompts = [ex.ar_prompt if ex.ar_prompt is not None else ex.prompt for ex in examples]
    if max_new_tokens is None:
        limits: int | list[int] = [
            len(continuation_ids(tokenizer, p, ex.answer, "answer")) + margin
            for p, ex in zip(prompts, examples, strict=True)
        ]
    else:
        limits = max_new_tokens
    texts = greedy_generate(model, tokenizer, prompts, limits, batch_size=batch_size)
    return sum(task.check(ex, t) for ex, t in zip(examples, texts, strict=True)) / len(examples)


def mdm_fill_accuracy(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: Task,
    examples: Sequence[Example],
    meta: ModelMeta,
    *,
    steps: int | None = None,
    batch_size: int = 16,
) -> float:
    """Fraction of `examples` an MDM solves by confidence-ordered filling of the answer span.

    Each example is rendered in place ("mdm": prompt, masks of the reference answer's length,
    suffix); the masks are filled by low-confidence decoding (`sampling`, one token per model
    call unless `steps` says otherwise), the filled span is decoded and passed to `task.check`.
    """
    from ar2mdm.sampling import ConfidenceSampler, ModelContext, run

    if not examples:
        raise TaskError("mdm_fill_accuracy got no examples.")
    if meta.kind != "mdm" or meta.mask_id is None:
        raise TaskError("mdm_fill_accuracy needs an MDM checkpoint's metadata (kind 'mdm' with a mask_id).")
    device = _device(model)
    solved = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        rendered = [render(ex, tokenizer, "mdm", shift=meta.shift, mask_id=meta.mask_id) for ex in chunk]
        batch = collate(rendered, pad_id(tokenizer))
        filled = run(
            ConfidenceSampler("low-confidence", steps=steps),
            model,
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            ModelContext.from_meta(meta, tokenizer, model),
        ).ids
        for row, r in enumerate(rendered):
            answer = tokenizer.decode(filled[row, r.answer_positions].tolist())
            solved += bool(task.check(r.example, answer))
    return solved / len(examples)
