"""Log-likelihoods of continuations: exact for ARMs, the Monte-Carlo ELBO for MDMs.

What lm-evaluation-harness's `loglikelihood` asks for: log p(a | c) of a continuation a (L tokens)
after a context c, and whether greedy decoding would produce a.

- ARM: exact. One causal forward over c + a; log p(a | c) = sum_i log p(a_i | c, a_<i), read where
  the checkpoint's shift rule says; greedy iff every a_i is the argmax at its position.
- MDM (absorbing noise): the likelihood is intractable; the protocol Dream and LLaDA report
  through the harness is the Monte-Carlo estimate of the ELBO in its lower-variance form (LLaDA,
  Nie et al. 2025, Eq. 6 and Algorithm 3; the same bound as RADD's any-order form):

      log p(a | c) >= E_{l ~ U{1..L}} E_{M subset of [L], |M| = l} [ (L / l) sum_{i in M} log p(a_i | c, a_M masked) ]

  Each sample masks l of the L continuation tokens (l drawn stratified across the samples: sample
  k takes t_k = (u + k) / n with one u ~ U[0, 1), l = 1 + floor(L t_k)) at positions of a random
  permutation, runs one bidirectional forward, and scores the masked tokens with the checkpoint's
  aligned logits (shift rule; the mask id excluded, SUBS). The estimate is the mean of the
  samples' values; its spread is the standard error std / sqrt(n) (conservative under the
  stratification). The bound holds for any model, whatever schedule it was trained with; for
  L = 1 it is exact (one mask, weight 1). `mdm_elbo_exact` enumerates every subset (2^L - 1
  forwards) as the independent truth the estimate converges to. "Greedy" for an MDM: filling the
  masked continuation by low-confidence decoding at temperature 0, one token per call, gives a.

Random draws are keyed by (seed, the request's tokens), so batching and order never change a
request's estimate.
Block-diffusion and uniform-noise checkpoints are refused (their ELBO has another form).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
from jaxtyping import Float
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import read_positions
from ar2mdm.common.modeling import device_of, param_dtype, position_ids, right_pad
from ar2mdm.common.seeding import derive_seed
from ar2mdm.sampling import ModelContext, build_sampler, make_canvas, run
from ar2mdm.sampling.base import align, mdm_forward_kwargs

Pair = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


@dataclass(frozen=True)
class LogLikelihood:
    """One continuation's log-likelihood (nats).

    logprob: the value (ARM: exact; MDM: the mean of the ELBO samples, a lower bound in
    expectation). stderr: its Monte-Carlo standard error (0 for an ARM). samples: ELBO samples
    (0 for an ARM). greedy: whether greedy decoding gives the continuation (None if not checked).
    """

    logprob: float
    stderr: float = 0.0
    samples: int = 0
    greedy: bool | None = None


def _device(model: torch.nn.Module) -> torch.device:
    return device_of(model)


def _check_pair(context: Sequence[int], continuation: Sequence[int], ctx: ModelContext) -> None:
    if not continuation:
        raise UserError("loglikelihood got an empty continuation; there is nothing to score.")
    if not context:
        raise UserError("loglikelihood needs at least one context token (the harness passes BOS/EOS for an empty one).")
    limit = ctx.context_length
    if limit is not None and len(continuation) >= limit:
        raise UserError(
            f"a continuation of {len(continuation)} tokens does not fit the model's context of {limit} tokens."
        )


def _fit(context: Sequence[int], continuation: Sequence[int], ctx: ModelContext) -> list[int]:
    """The context, cut from the left so that context + continuation fit the model's context."""
    limit = ctx.context_length
    keep = len(context) if limit is None else min(len(context), limit - len(continuation))
    return list(context[len(context) - keep :])


@torch.no_grad()
def ar_loglikelihoods(
    model: torch.nn.Module, ctx: ModelContext, pairs: Sequence[Pair], *, batch_size: int = 16
) -> list[LogLikelihood]:
    """Exact log p(continuation | context) and greediness of an ARM for each (context ids,
    continuation ids) pair; batches are right-padded (positions from the attention mask).

    Raises UserError for an empty context or continuation, or a continuation longer than the
    model's context (a context too long for it is cut from the left, as the harness does)."""
    if ctx.kind != "ar":
        raise UserError(f"ar_loglikelihoods needs an ARM; this checkpoint is a {ctx.kind!r}.")
    out: list[LogLikelihood] = []
    device = _device(model)
    for start in range(0, len(pairs), batch_size):
        rows, spans = [], []
        for context, continuation in pairs[start : start + batch_size]:
            _check_pair(context, continuation, ctx)
            head = _fit(context, continuation, ctx)
            rows.append(head + list(continuation))
            spans.append((len(head), len(continuation)))
        ids, am = right_pad(rows, ctx.pad_id)
        ids, am = ids.to(device), am.to(device)
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for b, (head, n) in enumerate(spans):
            where = torch.arange(head, head + n, device=device)
            read = read_positions(where, True)  # an ARM reads token i at logits[i - 1]
            target = ids[b, where]
            scores = logp[b, read].gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((logp[b, read].argmax(-1) == target).all())
            out.append(LogLikelihood(float(scores.double().sum()), greedy=greedy))
    return out


def _mdm_checks(ctx: ModelContext) -> None:
    if ctx.kind != "mdm" or ctx.mask_id is None:
        raise UserError("the MDM log-likelihood needs an MDM checkpoint with a mask token.")
    if ctx.noise != "absorbing":
        raise UserError(
            f"the MDM log-likelihood is the absorbing-noise ELBO; this checkpoint was trained with {ctx.noise!r} noise."
        )
    if ctx.block_size is not None:
        raise UserError(
            f"this is a block-diffusion checkpoint (block size {ctx.block_size}); its likelihood factorises over "
            "blocks and ar2mdm does not estimate it yet. Use generate_until tasks, or a bidirectional MDM."
        )


def _masked_logprobs(
    model: torch.nn.Module, ctx: ModelContext, row: Sequence[int], start: int, masks: Tensor, targets: Tensor
) -> Float[Tensor, "rows n"]:
    """log p(target_i) at every continuation position for each mask pattern: masks [R, L] bool
    (True = masked), row = context + continuation ids, the continuation starting at `start`.
    Entries at unmasked positions are 0."""
    device = _device(model)
    R, L = masks.shape
    ids = torch.tensor(row, dtype=torch.long, device=device).repeat(R, 1)
    span = ids[:, start : start + L]
    ids[:, start : start + L] = torch.where(masks.to(device), torch.full_like(span, ctx.placeholder), span)
    am = torch.ones_like(ids)
    logits = align(model(**mdm_forward_kwargs(ctx, ids, am, param_dtype(model))).logits, ctx)
    logp = torch.log_softmax(logits[:, start : start + L], dim=-1)
    picked = logp.gather(-1, targets.to(device)[None, :, None].expand(R, L, 1)).squeeze(-1).double()
    return torch.where(masks.to(device), picked, torch.zeros_like(picked)).cpu()


@torch.no_grad()
def mdm_elbo_samples(
    model: torch.nn.Module,
    ctx: ModelContext,
    context: Sequence[int],
    continuation: Sequence[int],
    *,
    samples: int,
    seed: int = 0,
    batch_size: int = 16,
) -> Float[Tensor, " samples"]:
    """The `samples` Monte-Carlo ELBO values [n] of log p(continuation | context) (module docstring);
    their mean is the estimate. Draws come from a generator seeded by `seed` alone."""
    _mdm_checks(ctx)
    _check_pair(context, continuation, ctx)
    if samples < 1:
        raise UserError(f"the MDM log-likelihood needs at least one Monte-Carlo sample, got {samples}.")
    head = _fit(context, continuation, ctx)
    L = len(continuation)
    gen = torch.Generator().manual_seed(seed)
    u = float(torch.rand((), generator=gen))
    lengths = [1 + min(L - 1, int(L * (u + k) / samples)) for k in range(samples)]
    masks = torch.zeros(samples, L, dtype=torch.bool)
    for k, n_masked in enumerate(lengths):
        masks[k, torch.randperm(L, generator=gen)[:n_masked]] = True
    targets = torch.tensor(list(continuation), dtype=torch.long)
    values = []
    for s in range(0, samples, batch_size):
        part = masks[s : s + batch_size]
        scored = _masked_logprobs(model, ctx, head + list(continuation), len(head), part, targets)
        values.append(scored.sum(-1) * L / part.sum(-1).double())
    return torch.cat(values)


@torch.no_grad()
def mdm_elbo_exact(
    model: torch.nn.Module, ctx: ModelContext, context: Sequence[int], continuation: Sequence[int]
) -> float:
    """The ELBO's expectation computed exactly, by enumerating all 2^L - 1 mask subsets (L <= 12):
    (1/L) sum_l C(L, l)^-1 sum_{|M| = l} (L / l) sum_{i in M} log p(a_i | ...). For tests and
    validation of `mdm_elbo_samples`."""
    _mdm_checks(ctx)
    _check_pair(context, continuation, ctx)
    L = len(continuation)
    if L > 12:
        raise UserError(f"exact enumeration takes 2^L - 1 forwards; L = {L} is too many (at most 12).")
    head = _fit(context, continuation, ctx)
    targets = torch.tensor(list(continuation), dtype=torch.long)
    total = 0.0
    for n_masked in range(1, L + 1):
        subsets = list(combinations(range(L), n_masked))
        masks = torch.zeros(len(subsets), L, dtype=torch.bool)
        for r, subset in enumerate(subsets):
            masks[r, list(subset)] = True
        scored = _masked_logprobs(model, ctx, head + list(continuation), len(head), masks, targets)
        total += float(scored.sum()) * (L / n_masked) / len(subsets) / L
    return total


@torch.no_grad()
def mdm_greedy(model: torch.nn.Module, ctx: ModelContext, pairs: Sequence[Pair], *, batch_size: int = 16) -> list[bool]:
    """Whether low-confidence decoding at temperature 0 (one token per call) fills the masked
    continuation of each (context, continuation) pair with exactly the continuation."""
    _mdm_checks(ctx)
    sampler = build_sampler("low-confidence", temperature=0.0)
    device = _device(model)
    out: list[bool] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        heads = [_fit(c, a, ctx) for c, a in chunk]
        lengths = [len(a) for _, a in chunk]
        canvas, am = make_canvas(
            heads, lengths, mask_id=ctx.placeholder, pad_id=ctx.pad_id, context_length=ctx.context_length
        )
        result = run(sampler, model, canvas.to(device), am.to(device), ctx)
        out += [result.generated(b) == list(a) for b, (_, a) in enumerate(chunk)]
    return out


def mdm_loglikelihoods(
    model: torch.nn.Module,
    ctx: ModelContext,
    pairs: Sequence[Pair],
    *,
    samples: int = 32,
    seed: int = 0,
    batch_size: int = 16,
    greedy: bool = True,
) -> list[LogLikelihood]:
    """The MC ELBO estimate with its standard error for each pair, and greediness when `greedy`.

    A pair's draws come from a generator keyed by (seed, its tokens): the same request gets the
    same estimate in any batch, order or run."""
    out = []
    for context, continuation in pairs:
        key = derive_seed("elbo", seed, " ".join(map(str, context)), " ".join(map(str, continuation)))
        values = mdm_elbo_samples(model, ctx, context, continuation, samples=samples, seed=key, batch_size=batch_size)
        spread = float(values.std(unbiased=True)) / math.sqrt(samples) if samples > 1 else float("nan")
        out.append(LogLikelihood(float(values.mean()), spread, samples))
    if greedy:
        flags = mdm_greedy(model, ctx, pairs, batch_size=batch_size)
        out = [LogLikelihood(x.logprob, x.stderr, x.samples, g) for x, g in zip(out, flags, strict=True)]
    return out
