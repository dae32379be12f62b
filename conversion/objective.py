"""The training losses: the masked-diffusion loss that converts an ARM, and the AR baseline loss.

`diffusion_loss` is one MDLM-style step, written out in numbered steps:

1. decide which positions may be corrupted ("eligible"): real tokens (not padding), not the SFT
   prompt, and, with shift on, only positions whose left neighbour is a real token. With shift on
   the prediction for token i is read from logits[i - 1] (`ar2mdm.common.metadata.read_positions`),
   so position 0 has no logit to be read from: it is never noised and stays clean context; with
   per-document attention (`document_ids`) the same holds for the first token of every document,
   whose left neighbour lies in another document it cannot see;
2. sample a time t per sequence in [eps, 1] (antithetic across the batch if asked);
3. corrupt the eligible positions: absorbing (-> mask id) or uniform (-> random token), each with
   probability 1 - alpha(t);
4. run the model on x_t with the attention layout of the spec (for block diffusion on
   [x_t ; x_0] with the BD3-LM mask; the x_0 half repeats position ids 0..L-1);
5. read the logits that predict each loss position (shift rule; in block mode with shift on, the
   first token of a block is read from the clean x_0 copy of the token before it, which sees
   exactly the clean prefix the noisy block sees);
6. SUBS (absorbing only): the mask token's own logit is -inf, so the model never predicts "mask";
7. weighted cross-entropy on the loss positions, summed and divided by the number of eligible
   tokens (MDLM normalises by token count; in SFT that is the answer length).

Loss positions: for absorbing noise the masked positions (an unmasked token is known and is
"copied through" at zero loss: SUBS). For uniform noise every eligible position, since the model
cannot see which tokens were replaced; this x_0-prediction cross-entropy weighted by w(t) is a
surrogate, not the exact uniform-state ELBO of UDLM/DUO (use weighting "flat" for the plain
surrogate). CART weights are defined by masked-vs-unmasked context and apply to absorbing noise only.

All randomness of steps 2-3 (and the block sizes / annealed pattern of step 4) is drawn by
`draw_noise` from one `torch.Generator` (on the batch's device) in a fixed order: t, corruption,
block sizes, annealed pattern. The result, a `NoiseDraw`, can be drawn for a whole global batch
and cut into per-process rows (`NoiseDraw.rows`), so a run gives the same numbers on one process
or many. Tests and analyses bypass the draw by passing `t` or a whole `NoiseDraw`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import read_positions
from ar2mdm.common.modeling import output_size, param_dtype, position_ids
from ar2mdm.diffusion import noise as noise_mod
from ar2mdm.diffusion.attention import (
    AttentionSpec,
    anneal_allowed,
    anneal_ratio,
    build_mask,
    model_inputs,
    parse_attention,
    sample_block_sizes,
)


@dataclass(frozen=True)
class DiffusionOptions:
    """How the diffusion objective is set up (all strings are validated by `checked`).

    noise: "absorbing" | "uniform"; schedule: a name in `noise.SCHEDULES`;
    weighting: "elbo" | "flat" | "cart"; shift: read token i at logits[i - 1];
    antithetic: stratified t across the batch; attention: an attention spec string;
    eps: smallest t; cart_p: CART's geometric parameter.
    """

    noise: str = "absorbing"
    schedule: str = "linear"
    weighting: str = "elbo"
    shift: bool = True
    antithetic: bool = True
    attention: str = "bidirectional"
    eps: float = 1e-3
    cart_p: float = noise_mod.CART_P

    def checked(self) -> DiffusionOptions:
        """Self, after validating every field; raises UserError naming the bad one."""
        noise_mod.check_noise(self.noise)
        noise_mod.get_schedule(self.schedule)
        noise_mod.check_weighting(self.weighting)
        spec = parse_attention(self.attention)
        if self.noise == "uniform" and self.weighting == "cart":
            raise UserError(
                "weighting 'cart' weights masked tokens by their unmasked context and is defined "
                "for absorbing noise only; use 'elbo' or 'flat' with uniform noise."
            )
        if spec.kind == "causal":
            raise UserError(
                "attention 'causal' cannot train a diffusion model (masked tokens could not see "
                "their right context); use 'bidirectional', 'anneal:N' or 'block:B'."
            )
        if not 0.0 < self.eps < 1.0:
            raise UserError(f"eps must be in (0, 1), got {self.eps}.")
        if not 0.0 < self.cart_p < 1.0:
            raise UserError(f"cart_p must be in (0, 1), got {self.cart_p}.")
        return self

    @property
    def spec(self) -> AttentionSpec:
        return parse_attention(self.attention)


@dataclass
class LossOutput:
    """A loss and its statistics (all 0-dim tensors; only `loss` carries gradient).

    loss: weighted CE sum / n_tokens; n_tokens: eligible tokens (the normaliser);
    n_masked: corrupted positions; n_correct: corrupted positions whose argmax prediction is the
    clean token; ce_sum: unweighted CE summed over corrupted positions.
    """

    loss: Float[Tensor, ""]
    n_tokens: Int[Tensor, ""]
    n_masked: Int[Tensor, ""]
    n_correct: Int[Tensor, ""]
    ce_sum: Float[Tensor, ""]
    extra: dict[str, Shaped[Tensor, ""]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Fraction of corrupted positions predicted correctly (nan when none was corrupted)."""
        n = int(self.n_masked)
        return float(self.n_correct) / n if n else float("nan")


def eligible_positions(
    shape: Sequence[int],
    *,
    shift: bool,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    prompt_mask: Shaped[Tensor, "batch pos"] | None = None,
    device: torch.device | str | None = None,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch pos"]:
    """Bool [B, T]: positions that may be corrupted and carry loss (step 1 of the module doc)."""
    valid = (
        torch.ones(tuple(shape), dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.to(torch.bool)
    )
    eligible = valid.clone()
    if prompt_mask is not None:
        eligible &= ~prompt_mask.to(torch.bool)
    if shift:
        # Token i is read at logits[i - 1]: that position must exist and be a real token.
        left_valid = torch.zeros_like(valid)
        left_valid[:, 1:] = valid[:, :-1]
        if document_ids is not None:  # ... and in the same document (per-document attention)
            left_valid[:, 1:] &= document_ids[:, 1:] == document_ids[:, :-1]
        eligible &= left_valid
    return eligible


def _read_index(length: int, shift: bool, block_sizes: Tensor | None, batch: int, device: torch.device) -> Tensor:
    """Long [B, T]: index into the model's logits that predicts each token of x_0 (step 5).

    Position 0 under shift maps to -1 -> clamped to 0; it is never a loss position.
    """
    pos = torch.arange(length, device=device).expand(batch, length)
    src = read_positions(pos, shift)
    if shift and block_sizes is not None:
        # First token of a noisy block: read from the clean copy of its left neighbour (x_0 half).
        starts = (pos % block_sizes[:, None]) == 0
        src = torch.where(starts, src + length, src)
    return src.clamp(min=0)


@dataclass
class NoiseDraw:
    """Everything random about one diffusion loss evaluation.

    corruption: t [B], x_t [B, T], noised [B, T]. block_sizes: [B] for block specs (None: filled
    in by `diffusion_loss`, from the spec if it has one size). layout: [T, T] bool annealed
    attention pattern shared by the batch (None: drawn by `diffusion_loss` if needed).
    """

    corruption: noise_mod.Corruption
    block_sizes: Int[Tensor, " batch"] | None = None
    layout: Bool[Tensor, "pos pos"] | None = None

    def rows(self, index: slice) -> NoiseDraw:
        """The draw for a slice of the batch's rows (e.g. one process's share)."""
        c = self.corruption
        return NoiseDraw(
            corruption=noise_mod.Corruption(t=c.t[index], xt=c.xt[index], noised=c.noised[index]),
            block_sizes=None if self.block_sizes is None else self.block_sizes[index],
            layout=self.layout,
        )


def _eligible(
    opts: DiffusionOptions,
    x0: Tensor,
    attention_mask: Tensor | None,
    prompt_mask: Tensor | None,
    document_ids: Tensor | None,
) -> Tensor:
    """`eligible_positions` [B, T] of x0 [B, T] under the options' shift rule."""
    return eligible_positions(
        x0.shape,
        shift=opts.shift,
        attention_mask=attention_mask,
        prompt_mask=prompt_mask,
        device=x0.device,
        document_ids=document_ids,
    )


def draw_noise(
    x0: Int[Tensor, "batch pos"],
    options: DiffusionOptions,
    *,
    mask_id: int | None,
    vocab_size: int,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    prompt_mask: Shaped[Tensor, "batch pos"] | None = None,
    step: int = 0,
    generator: torch.Generator | None = None,
    exclude_ids: Sequence[int] = (),
    t: Float[Tensor, " batch"] | None = None,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> NoiseDraw:
    """Steps 1-3 (and the random parts of 4) for clean ids x0 [B, T]; see the module docstring.

    vocab_size / exclude_ids: the pool of uniform noise (the mask id is always excluded).
    t ([B]) fixes the times instead of sampling them. document_ids ([B, T], per-document
    attention) only changes which positions are eligible.
    """
    opts = options.checked()
    spec = opts.spec
    batch, length = x0.shape
    device = x0.device
    schedule = noise_mod.get_schedule(opts.schedule)
    if opts.noise == "absorbing" and mask_id is None:
        raise UserError("absorbing noise needs a mask token id (mask_id); the tokenizer has none.")

    # 1. Eligible positions: real, not prompt, readable under the shift rule.
    eligible = _eligible(opts, x0, attention_mask, prompt_mask, document_ids)
    # 2. One time per sequence.
    if t is None:
        t = noise_mod.sample_t(batch, eps=opts.eps, antithetic=opts.antithetic, generator=generator, device=device)
    t = t.to(device=device, dtype=torch.float32)
    # 3. Corrupt the eligible positions.
    if opts.noise == "absorbing":
        assert mask_id is not None
        corruption = noise_mod.absorbing(x0, t, schedule, mask_id, generator=generator, protect=~eligible)
    else:
        excluded = tuple(exclude_ids) + ((mask_id,) if mask_id is not None else ())
        corruption = noise_mod.uniform(
            x0, t, schedule, vocab_size, generator=generator, protect=~eligible, exclude_ids=excluded
        )
    # (4.) The random parts of the attention layout.
    block_sizes = layout = None
    if spec.kind == "block":
        block_sizes = sample_block_sizes(spec, batch, generator=generator, device=device)
    elif spec.kind == "anneal":
        layout = anneal_allowed(length, anneal_ratio(spec, step), generator=generator, device=device)
    return NoiseDraw(corruption=corruption, block_sizes=block_sizes, layout=layout)


def diffusion_loss(
    model: torch.nn.Module,
    x0: Int[Tensor, "batch pos"],
    options: DiffusionOptions,
    *,
    mask_id: int | None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    prompt_mask: Shaped[Tensor, "batch pos"] | None = None,
    step: int = 0,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    exclude_ids: Sequence[int] = (),
    t: Float[Tensor, " batch"] | None = None,
    draw: NoiseDraw | None = None,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> LossOutput:
    """The masked-diffusion loss of `model` on clean ids x0 [B, T] (see the module docstring).

    attention_mask: [B, T] 1 = token, 0 = padding (default all ones). prompt_mask: [B, T] True on
    SFT prompt tokens (never noised, not in the normaliser). step: training step (annealing).
    mask_id: the mask token (required for absorbing noise). vocab_size / exclude_ids: the pool of
    uniform noise (default: the model's output size). t ([B]) fixes the times; `draw` fixes all
    the randomness (its `noised` must lie in the eligible positions). Without `draw`, the noise is
    drawn by `draw_noise` from `generator`. document_ids: [B, T] document index of each token of
    packed rows (`attention.document_ids`) for per-document attention (None: attend across).
    """
    opts = options.checked()
    device = x0.device
    if attention_mask is None:
        attention_mask = torch.ones_like(x0)
    eligible = _eligible(opts, x0, attention_mask, prompt_mask, document_ids)

    # Steps 1-3: draw (or take) the noise.
    if draw is None:
        draw = draw_noise(
            x0,
            opts,
            mask_id=mask_id,
            attention_mask=attention_mask,
            prompt_mask=prompt_mask,
            step=step,
            generator=generator,
            exclude_ids=exclude_ids,
            t=t,
            vocab_size=vocab_size if vocab_size is not None else output_size(model),
            document_ids=document_ids,
        )
    elif bool((draw.corruption.noised & ~eligible).any()):
        raise UserError(
            "the given corruption noises positions that are not eligible (padding, prompt, or "
            "position 0 with shift on); see objective.eligible_positions."
        )
    corruption = draw.corruption
    t, xt, noised = corruption.t.to(device=device, dtype=torch.float32), corruption.xt, corruption.noised

    # 4. Forward pass with the spec's attention layout.
    logits, block_sizes = _forward(
        model, opts, x0, xt, attention_mask, draw, step=step, generator=generator, document_ids=document_ids
    )
    # 5-7. Weighted cross-entropy at the loss positions.
    return _weighted_loss(opts, logits, x0, t, noised, eligible, attention_mask, block_sizes, mask_id)


def _forward(
    model: torch.nn.Module,
    opts: DiffusionOptions,
    x0: Tensor,
    xt: Tensor,
    attention_mask: Tensor,
    draw: NoiseDraw,
    *,
    step: int,
    generator: torch.Generator | None,
    document_ids: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Step 4: logits [B, L or 2L, V] of the noised ids xt [B, L] under the spec's attention layout.

    Returns the logits and the block sizes [B] that the doubled-input layouts used (else None).
    """
    spec = opts.spec
    dtype = param_dtype(model)
    if not spec.doubles_input:
        kwargs = model_inputs(
            spec,
            attention_mask,
            step=step,
            layout=draw.layout,
            generator=generator,
            dtype=dtype,
            document_ids=document_ids,
        )
        return model(input_ids=xt, **kwargs).logits, None  # [B, L, V]
    block_sizes = draw.block_sizes
    if block_sizes is None:
        block_sizes = sample_block_sizes(spec, x0.shape[0], generator=generator, device=x0.device)
    block_sizes = block_sizes.to(x0.device)
    mask4 = build_mask(spec, attention_mask, block_sizes=block_sizes, dtype=dtype, document_ids=document_ids)
    pos = position_ids(attention_mask, document_ids)
    logits = model(
        input_ids=torch.cat([xt, x0], dim=1), attention_mask=mask4, position_ids=torch.cat([pos, pos], dim=1)
    ).logits  # [B, 2L, V]
    return logits, block_sizes


def _weighted_loss(
    opts: DiffusionOptions,
    logits: Tensor,
    x0: Tensor,
    t: Tensor,
    noised: Tensor,
    eligible: Tensor,
    attention_mask: Tensor,
    block_sizes: Tensor | None,
    mask_id: int | None,
) -> LossOutput:
    """Steps 5-7: pick the logits that predict each loss position, apply SUBS, weight the CE."""
    batch, length = x0.shape
    device = x0.device
    schedule = noise_mod.get_schedule(opts.schedule)
    # 5. Pick, for every loss position, the logits that predict it.
    loss_at = noised if opts.noise == "absorbing" else eligible
    src = _read_index(length, opts.shift, block_sizes, batch, device)
    rows, cols = loss_at.nonzero(as_tuple=True)  # [N] each
    picked = logits[rows, src[rows, cols]].float()  # [N, V]
    targets = x0[rows, cols]

    # 6. SUBS: the model may never predict the mask token itself.
    if opts.noise == "absorbing" and mask_id is not None and mask_id < picked.shape[-1]:
        never = torch.zeros(picked.shape[-1], dtype=torch.bool, device=device)
        never[mask_id] = True
        picked = picked.masked_fill(never, float("-inf"))

    # 7. Weighted cross-entropy, normalised by the number of eligible tokens.
    ce = F.cross_entropy(picked, targets, reduction="none")  # [N]
    if opts.weighting == "elbo":
        weight = noise_mod.elbo_weight(t, schedule)[rows]
    elif opts.weighting == "flat":
        weight = torch.ones_like(ce)
    else:
        cart = noise_mod.cart_weights(noised, context=attention_mask.to(torch.bool), p=opts.cart_p)
        weight = cart[rows, cols]
    n_tokens = eligible.sum()
    loss = (weight * ce).sum() / n_tokens.clamp(min=1)

    with torch.no_grad():
        on_noised = noised[rows, cols]
        correct = (picked.argmax(-1) == targets) & on_noised
        stats = {"n_masked": noised.sum(), "n_correct": correct.sum(), "ce_sum": (ce.detach() * on_noised).sum()}
    return LossOutput(loss=loss, n_tokens=n_tokens, **stats)


def ar_loss(
    model: torch.nn.Module, x0: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None
) -> LossOutput:
    """Plain next-token loss of a causal forward pass over x0 [B, T] (the AR baseline).

    Token i (i >= 1, real, with a real left neighbour) is predicted from logits[i - 1]; the loss is
    the mean CE over those tokens. n_masked/n_correct count the predicted tokens / top-1 hits.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(x0)
    logits = model(input_ids=x0, **model_inputs("causal", attention_mask)).logits
    targets_ok = eligible_positions(x0.shape, shift=True, attention_mask=attention_mask, device=x0.device)
    rows, cols = targets_ok.nonzero(as_tuple=True)
    picked = logits[rows, cols - 1].float()
    targets = x0[rows, cols]
    ce = F.cross_entropy(picked, targets, reduction="none")
    n = targets_ok.sum()
    with torch.no_grad():
        n_correct = (picked.argmax(-1) == targets).sum()
    return LossOutput(
        loss=ce.sum() / n.clamp(min=1), n_tokens=n, n_masked=n, n_correct=n_correct, ce_sum=ce.detach().sum()
    )


DEFAULT_T_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module,
    x0: Int[Tensor, "batch pos"],
    options: DiffusionOptions,
    *,
    mask_id: int | None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    prompt_mask: Shaped[Tensor, "batch pos"] | None = None,
    t_grid: Sequence[float] = DEFAULT_T_GRID,
    seed: int = 0,
    batch_size: int = 8,
    vocab_size: int | None = None,
    document_ids: Int[Tensor, "batch pos"] | None = None,
) -> dict[str, float]:
    """Deterministic held-out evaluation of x0 [M, T] at a fixed grid of times (document_ids
    [M, T]: per-document attention, as in training).

    For every t in `t_grid` (the same corruption every call, from `seed`), returns
    "ce@t": mean CE per corrupted token, "acc@t": the fraction of corrupted tokens whose argmax
    prediction is the clean token, "acc": the mean of acc@t over the grid, and "loss": the mean over the grid of the weighted loss,
    a midpoint estimate of the integral over t (with weighting "elbo" and the midpoints of equal
    bins, an estimate of the NLL bound per token). The annealed attention, if any, is evaluated at
    its final (bidirectional) layout.
    """
    was_training = model.training
    model.eval()
    spec = options.checked().spec
    step = spec.anneal_steps or 0
    device = x0.device
    result: dict[str, float] = {}
    weighted, accs = [], []
    try:
        for t_value in t_grid:
            gen = torch.Generator(device=device).manual_seed(seed)
            loss_sum, tok, ce_sum, masked, correct = 0.0, 0, 0.0, 0, 0
            for start in range(0, x0.shape[0], batch_size):
                chunk = x0[start : start + batch_size]
                am = None if attention_mask is None else attention_mask[start : start + batch_size]
                pm = None if prompt_mask is None else prompt_mask[start : start + batch_size]
                docs = None if document_ids is None else document_ids[start : start + batch_size]
                t = torch.full((chunk.shape[0],), float(t_value), device=device)
                out = diffusion_loss(
                    model,
                    chunk,
                    options,
                    mask_id=mask_id,
                    attention_mask=am,
                    prompt_mask=pm,
                    step=step,
                    generator=gen,
                    t=t,
                    vocab_size=vocab_size,
                    document_ids=docs,
                )
                loss_sum += float(out.loss) * int(out.n_tokens)
                tok += int(out.n_tokens)
                ce_sum += float(out.ce_sum)
                masked += int(out.n_masked)
                correct += int(out.n_correct)
            result[f"ce@{t_value:g}"] = ce_sum / masked if masked else float("nan")
            result[f"acc@{t_value:g}"] = correct / masked if masked else float("nan")
            accs.append(result[f"acc@{t_value:g}"])
            weighted.append(loss_sum / max(tok, 1))
    finally:
        model.train(was_training)
    result["loss"] = sum(weighted) / len(weighted)
    result["acc"] = sum(accs) / len(accs)
    return result
