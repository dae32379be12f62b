"""What every sampler shares: the canvas, the state, the model call, randomness, the driver.

A sampler is a small state machine. `init_state(model, ids, attention_mask, ctx)` takes a
*canvas*: right-padded token ids [B, T] in which the positions to generate hold the mask id
(prompt before them, an optional suffix after them, padding at the end of the row). `step`
advances the state by one model call (or reuses the last prediction when nothing changed),
`done` says when every generated position is final. Because all samplers keep the same `State`,
the things users want from every sampler are done once, here:

* NFE: every forward pass of any model goes through `State.forward`, which counts it (per model
  role: "mdm", "ar") -- so NFE is the number of model calls by construction.
* Reading predictions: `aligned_logits` returns logits [B, T, V] where row i predicts the token at
  position i, applying the checkpoint's shift (`ar2mdm.common.metadata.read_positions`); with
  absorbing noise the mask token gets -inf (SUBS: the model never predicts "mask").
* Attention: a bidirectional MDM runs with its own masking (2D padding mask, is_causal False);
  a block-diffusion MDM runs with the block-causal inference layout (a query sees its own and
  earlier blocks; blocks counted from position 0, as in training).
* Randomness (`ar2mdm.sampling.rng`): one `torch.Generator` per row, seeded from (seed, row id), so a row's output does
  not depend on what else is in the batch (batched equals one-by-one) and the same seed gives the
  same output. Gumbel noise is drawn in float64.
* Blocks (semi-autoregressive decoding): `block_ids` numbers the generated positions of each row;
  samplers finish the lowest unfinished block before touching the next one.
* Trace: optionally, each step records which positions were committed, the confidences of the
  still-masked positions, and the provisional full decode (argmax everywhere still masked).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta, read_positions
from ar2mdm.common.modeling import pad_id, param_dtype, position_ids
from ar2mdm.common.registry import Registry
from ar2mdm.diffusion.attention import block_inference_mask
from ar2mdm.diffusion.noise import get_schedule
from ar2mdm.sampling.rng import RowRandom

# --- what a sampler needs to know about the checkpoint ---------------------------------------------


@dataclass(frozen=True)
class ModelContext:
    """The facts of a checkpoint that decide how to sample from it (from its `ModelMeta`).

    kind: "ar" or "mdm". noise: "absorbing" or "uniform" (MDM). shift: read rule. mask_id: the
    mask token (absorbing MDMs; also marks positions to generate on a canvas). block_size: the
    block-diffusion block size, None for a bidirectional MDM. schedule: the training schedule
    (ancestral time grids). pad_id / eos_id: from the tokenizer. exclude_ids: ids never drawn as
    uniform noise or proposed by uniform sampling (special tokens), as in training.
    ar_source: where the AR model the MDM came from can be loaded (ARPC's default scorer).
    """

    kind: str = "mdm"
    noise: str = "absorbing"
    shift: bool = True
    mask_id: int | None = None
    block_size: int | None = None
    schedule: str = "linear"
    pad_id: int = 0
    eos_id: int | None = None
    exclude_ids: tuple[int, ...] = ()
    context_length: int | None = None
    ar_source: str | None = None

    @property
    def placeholder(self) -> int:
        """The id that marks positions to generate on a canvas (the mask id; -1 for an ARM)."""
        return self.mask_id if self.mask_id is not None else -1

    @classmethod
    def from_meta(cls, meta: ModelMeta, tokenizer: Any = None, model: Any = None) -> ModelContext:
        """Build the context of a loaded checkpoint (`Loaded.meta`, its tokenizer and model)."""
        eos = getattr(tokenizer, "eos_token_id", None)
        specials = tuple(int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ())
        config = getattr(model, "config", None)
        ctx_len = None
        if config is not None:
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            ctx_len = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
        return cls(
            kind=meta.kind,
            noise=meta.noise or "absorbing",
            shift=meta.shift,
            mask_id=meta.mask_id,
            block_size=meta.block_size,
            schedule=meta.schedule or "linear",
            pad_id=pad_id(tokenizer),
            eos_id=None if eos is None else int(eos),
            exclude_ids=specials,
            context_length=None if ctx_len is None else int(ctx_len),
            ar_source=meta.source or None,
        )


def propose(
    logits: Float[Tensor, "batch pos vocab"],
    where: Bool[Tensor, "batch pos"],
    temperature: float,
    state: State,
    rule: str | None = "low-confidence",
) -> tuple[Int[Tensor, "batch pos"], Float[Tensor, "batch pos"]]:
    """Draw a token for every position in `where` [B, T] from aligned `logits` [B, T, V], and
    score it under `rule` (see `confidences`; None skips scoring).

    Only the selected positions are touched (for a 50k vocabulary the full [B, T, V] work in
    float64 would dominate a step). Returns (tokens [B, T] -- the current ids elsewhere --,
    confidence [B, T] float64 -- NaN elsewhere). Temperature 0 takes the argmax; otherwise a
    Gumbel-max draw in float64, keyed by (seed, row, step, position).
    """
    rows, cols = where.nonzero(as_tuple=True)
    tokens = state.ids.clone()
    conf = torch.full(where.shape, float("nan"), dtype=torch.float64, device=where.device)
    if rows.numel() == 0:
        return tokens, conf
    picked = logits[rows, cols].double()  # [N, V]
    if temperature > 0:
        noisy = picked / temperature + state.rng.gumbel_at(rows, cols, picked.shape[-1], key=state.steps)
        chosen = noisy.argmax(-1)
    else:
        chosen = picked.argmax(-1)
    tokens[rows, cols] = chosen
    if rule is not None:
        conf[rows, cols] = confidences(picked[None], chosen[None], rule)[0]
    return tokens, conf


def provisional(logits: Float[Tensor, "batch pos vocab"], state: State) -> Int[Tensor, "batch pos"] | None:
    """The full decode a trace records: argmax wherever still masked (None without a trace)."""
    if state.trace is None:
        return None
    return torch.where(state.masked, logits.argmax(-1), state.ids)


# --- state -----------------------------------------------------------------------------------------


@dataclass
class TraceStep:
    """One step of a run. committed: [B, T] positions given a token this step; remasked: [B, T]
    positions turned back into masks; confidence: [B, T] the score each still-masked position
    had (NaN elsewhere); provisional: [B, T] the full decode at this step (argmax where masked)."""

    step: int
    nfe: int
    committed: Bool[Tensor, "batch pos"]
    remasked: Bool[Tensor, "batch pos"]
    confidence: Float[Tensor, "batch pos"]
    provisional: Int[Tensor, "batch pos"]


@dataclass
class State:
    """Everything about a run in progress.

    ids: current tokens [B, T] (masks where not yet decided). attention_mask: [B, T].
    gen: [B, T] positions being generated (fixed for the run). masked: [B, T] still-masked ones.
    blocks: [B, T] block number of every generated position (-1 elsewhere).
    nfe: model calls by role. row_nfe: [B] calls made while each row was unfinished (what a row
    would have cost alone). steps: calls to `step`. scratch: per-sampler data (cached
    predictions, KV caches, step counters).
    """

    ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    gen: Bool[Tensor, "batch pos"]
    masked: Bool[Tensor, "batch pos"]
    blocks: Int[Tensor, "batch pos"]
    ctx: ModelContext
    rng: RowRandom
    nfe_by: dict[str, int] = field(default_factory=dict)
    row_nfe: Int[Tensor, " batch"] | None = None
    steps: int = 0
    trace: list[TraceStep] | None = None
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return sum(self.nfe_by.values())

    def forward(self, model: torch.nn.Module, role: str = "mdm", **kwargs: Any) -> Any:
        """Call `model(**kwargs)` and count it: the only way samplers run a model."""
        self.nfe_by[role] = self.nfe_by.get(role, 0) + 1
        live = self.masked.any(1).long()
        self.row_nfe = live if self.row_nfe is None else self.row_nfe + live
        return model(**kwargs)

    def current_block(self) -> Int[Tensor, " batch"]:
        """[B] the lowest block number that still has a masked position (-1 when the row is done)."""
        big = torch.iinfo(torch.long).max
        b = torch.where(self.masked, self.blocks, torch.full_like(self.blocks, big)).min(1).values
        return torch.where(b == big, torch.full_like(b, -1), b)

    def active(self) -> Bool[Tensor, "batch pos"]:
        """[B, T] masked positions of each row's current block."""
        cur = self.current_block()
        return self.masked & (self.blocks == cur[:, None]) & (cur[:, None] >= 0)

    def finish_after_eos(self) -> Bool[Tensor, " batch"]:
        """End rows at their first decided end-of-sequence token: where a row's first generated
        EOS has no undecided position before it, every generated position after it becomes EOS
        (the masked ones decided without a model call; tokens already committed there lie past the
        end of the text). Returns [B] the rows it changed. No-op without an eos id."""
        eos = self.ctx.eos_id
        if eos is None:
            return torch.zeros(self.ids.shape[0], dtype=torch.bool, device=self.ids.device)
        cols = torch.arange(self.ids.shape[1], device=self.ids.device)
        big = self.ids.shape[1]
        first_eos = torch.where(self.gen & ~self.masked & (self.ids == eos), cols, big).min(1).values
        first_masked = torch.where(self.masked, cols, big).min(1).values
        ended = (first_eos < big) & (first_eos < first_masked)
        fill = ended[:, None] & self.gen & (cols[None, :] > first_eos[:, None])
        self.ids = torch.where(fill, torch.full_like(self.ids, eos), self.ids)
        self.masked = self.masked & ~fill
        return fill.any(1)

    def record(
        self,
        committed: Bool[Tensor, "batch pos"],
        confidence: Float[Tensor, "batch pos"],
        provisional: Int[Tensor, "batch pos"] | None,
        remasked: Bool[Tensor, "batch pos"] | None = None,
    ) -> None:
        if self.trace is None or provisional is None:
            return
        self.trace.append(
            TraceStep(
                step=self.steps,
                nfe=self.nfe,
                committed=committed.detach().cpu().clone(),
                remasked=(torch.zeros_like(committed) if remasked is None else remasked).detach().cpu().clone(),
                confidence=confidence.detach().float().cpu().clone(),
                provisional=provisional.detach().cpu().clone(),
            )
        )


# --- the model call ---------------------------------------------------------------------------------


def mdm_forward_kwargs(
    ctx: ModelContext, ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"], dtype: torch.dtype
) -> dict[str, Any]:
    """Keyword arguments for one MDM forward over a whole canvas."""
    pos = position_ids(attention_mask)
    if ctx.block_size is not None:
        mask = block_inference_mask(attention_mask, ctx.block_size, dtype=dtype)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    return {"input_ids": ids, "attention_mask": attention_mask, "position_ids": pos, "is_causal": False}


def align(logits: Float[Tensor, "batch pos vocab"], ctx: ModelContext) -> Float[Tensor, "batch pos vocab"]:
    """Float32 logits [B, T, V] with row i predicting the token at position i (shift rule); with
    absorbing noise the mask id is excluded. Under shift, position 0 has no prediction (zeros)."""
    logits = logits.float()
    if ctx.shift:
        src = read_positions(torch.arange(logits.shape[1], device=logits.device), True).clamp(min=0)
        logits = logits[:, src]
        logits[:, 0] = 0.0
    if ctx.noise == "absorbing" and ctx.mask_id is not None and ctx.mask_id < logits.shape[-1]:
        logits[..., ctx.mask_id] = float("-inf")
    return logits


def aligned_logits(
    model: torch.nn.Module, state: State, ids: Int[Tensor, "batch pos"] | None = None
) -> Float[Tensor, "batch pos vocab"]:
    """One counted MDM call on the state's canvas (or on `ids`), read through `align`."""
    ids = state.ids if ids is None else ids
    kwargs = mdm_forward_kwargs(state.ctx, ids, state.attention_mask, param_dtype(model))
    return align(state.forward(model, "mdm", **kwargs).logits, state.ctx)


def confidences(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], kind: str
) -> Float[Tensor, "batch pos"]:
    """Confidence [B, T] of choosing `tokens` from `logits` [B, T, V] under rule `kind`:
    "low-confidence" p(token); "margin" p(top1) - p(top2); "entropy" minus the entropy."""
    probs = torch.softmax(logits.double(), dim=-1)
    if kind == "low-confidence":
        return probs.gather(-1, tokens[..., None]).squeeze(-1)
    if kind == "margin":
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if kind == "entropy":
        logp = torch.log_softmax(logits.double(), dim=-1)
        return (probs * logp.nan_to_num(0.0, neginf=0.0)).sum(-1)  # = -H(p)
    raise UserError(f"unknown confidence rule {kind!r}; use low-confidence, margin or entropy.")


# --- blocks -----------------------------------------------------------------------------------------


def block_ids(
    gen: Bool[Tensor, "batch pos"], *, block_length: int | None, model_block: int | None
) -> Int[Tensor, "batch pos"]:
    """[B, T] block number of every generated position (-1 elsewhere).

    A block-diffusion checkpoint decodes in its own blocks (absolute position // block size, as in
    training). Otherwise `block_length` splits each row's generated positions, in order, into
    groups of that many (semi-autoregressive decoding); None puts them all in one block.
    """
    B, T = gen.shape
    if model_block is not None:
        blocks = torch.arange(T, device=gen.device).expand(B, T) // model_block
    elif block_length is None:
        blocks = torch.zeros(B, T, dtype=torch.long, device=gen.device)
    else:
        rank = gen.long().cumsum(1) - 1
        blocks = rank // block_length
    return torch.where(gen, blocks, torch.full_like(blocks, -1))


# --- the sampler interface and the driver -------------------------------------------------------------


class Sampler:
    """Base class. Subclasses set `name` and `needs` ("ar", "absorbing", "uniform") and implement
    `_init` (extra state) and `step`. Options are the keyword arguments of `__init__`, kept as
    plain attributes. A subclass with a `name` registers itself in `SAMPLERS`, so `build_sampler`,
    the CLI's choices and help, and the generation evals find it (docs/EXTENDING.md).

    needs_scorer: the sampler takes `scorer=`, an AR model to score its proposals with (ARPC);
    the CLI and the evals load one (the MDM's source ARM by default).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = "absorbing"
    uses_blocks: ClassVar[bool] = True
    needs_scorer: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SAMPLERS.add(cls)

    def check(self, ctx: ModelContext) -> None:
        """Raise UserError if this sampler cannot run on a checkpoint described by `ctx`."""
        if self.needs == "ar":
            if ctx.kind != "ar":
                mdm_samplers = ", ".join(name for name, cls in SAMPLERS.items() if cls.needs != "ar")
                raise UserError(
                    f"sampler {self.name!r} decodes autoregressive checkpoints; this one is an MDM. "
                    f"Use an MDM sampler ({mdm_samplers})."
                )
            return
        if ctx.kind != "mdm":
            raise UserError(
                f"sampler {self.name!r} needs a masked diffusion checkpoint; this one is autoregressive. "
                "Use --sampler ar, or convert it first with `ar2mdm convert`."
            )
        if ctx.mask_id is None:
            raise UserError("this MDM's metadata has no mask_id; it cannot mark positions to generate.")
        if self.needs != ctx.noise:
            fix = "uniform" if ctx.noise == "uniform" else "ancestral (or another absorbing sampler)"
            raise UserError(
                f"sampler {self.name!r} needs a checkpoint trained with {self.needs} noise; this one "
                f"was trained with {ctx.noise} noise. Use --sampler {fix}."
            )

    def init_state(
        self,
        model: torch.nn.Module,
        ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None,
        ctx: ModelContext,
        *,
        seed: int = 0,
        row_ids: Sequence[int] | None = None,
        trace: bool = False,
    ) -> State:
        """Start a run on a canvas (positions equal to ctx.mask_id are generated)."""
        self.check(ctx)
        if ids.dim() != 2:
            raise UserError(f"the canvas must be [batch, length] token ids; got shape {tuple(ids.shape)}.")
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        gen = (ids == ctx.placeholder) & attention_mask.bool()
        if not bool(gen.any(1).all()):
            raise UserError("every row of the canvas needs at least one position to generate (a mask token).")
        if ctx.shift and bool(gen[:, 0].any()):
            raise UserError(
                "with shift on, position 0 cannot be generated; start every row with a prompt token (e.g. BOS)."
            )
        if ctx.context_length is not None and ids.shape[1] > ctx.context_length:
            raise UserError(
                f"prompt + generated tokens = {ids.shape[1]} exceeds the model's context of "
                f"{ctx.context_length} tokens; shorten the prompt or lower --max-new-tokens."
            )
        row_ids = list(range(ids.shape[0])) if row_ids is None else list(row_ids)
        blocks = block_ids(
            gen,
            block_length=getattr(self, "block_length", None) if self.uses_blocks else None,
            model_block=ctx.block_size,
        )
        state = State(
            ids=ids.clone(),
            attention_mask=attention_mask,
            gen=gen,
            masked=gen.clone(),
            blocks=blocks,
            ctx=ctx,
            rng=RowRandom(seed, row_ids, ids.device),
            trace=[] if trace else None,
        )
        self._init(model, state)
        return state

    def _init(self, model: torch.nn.Module, state: State) -> None:
        return None

    def step(self, model: torch.nn.Module, state: State) -> State:
        raise NotImplementedError

    def done(self, state: State) -> bool:
        return not bool(state.masked.any())


SAMPLERS: Registry[Sampler] = Registry("sampler")


def check_options(
    steps: int | None = None, block_length: int | None = None, temperature: float = 0.0, schedule: str | None = None
) -> None:
    """The option checks samplers share: a positive step budget and block length, a finite
    temperature >= 0, a known schedule. Raises UserError naming the bad option."""
    if steps is not None and steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}.")
    if block_length is not None and block_length < 1:
        raise UserError(f"block_length must be >= 1, got {block_length}.")
    if temperature < 0 or not math.isfinite(temperature):
        raise UserError(f"temperature must be a finite number >= 0, got {temperature}.")
    if schedule is not None:
        get_schedule(schedule)


@dataclass
class SampleResult:
    """ids: [B, T] the finished canvas; nfe: model calls (all roles); nfe_by: per role; row_nfe:
    [B] calls each row needed;
    steps: sampler steps; seconds: wall time; trace: per-step records (if asked)."""

    ids: Int[Tensor, "batch pos"]
    gen: Bool[Tensor, "batch pos"]
    nfe: int
    nfe_by: dict[str, int]
    row_nfe: Int[Tensor, " batch"]
    steps: int
    seconds: float
    trace: list[TraceStep] | None

    def generated(self, row: int) -> list[int]:
        return self.ids[row][self.gen[row]].tolist()


@torch.no_grad()
def run(
    sampler: Sampler,
    model: torch.nn.Module,
    ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    ctx: ModelContext,
    *,
    seed: int = 0,
    row_ids: Sequence[int] | None = None,
    trace: bool = False,
    max_steps: int | None = None,
) -> SampleResult:
    """Run `sampler` to the end on a canvas; the one driver every entry point uses."""
    start = time.perf_counter()
    state = sampler.init_state(model, ids, attention_mask, ctx, seed=seed, row_ids=row_ids, trace=trace)
    limit = max_steps if max_steps is not None else 4 * int(state.gen.sum(1).max()) + 64
    while not sampler.done(state):
        if state.steps >= limit:
            raise RuntimeError(f"sampler {sampler.name!r} did not finish in {limit} steps (a bug).")
        sampler.step(model, state)
        state.steps += 1
    return SampleResult(
        ids=state.ids,
        gen=state.gen,
        nfe=state.nfe,
        nfe_by=dict(state.nfe_by),
        row_nfe=state.row_nfe if state.row_nfe is not None else torch.zeros(state.ids.shape[0], dtype=torch.long),
        steps=state.steps,
        seconds=time.perf_counter() - start,
        trace=state.trace,
    )


def steps_per_block(steps: int | None, state: State) -> Int[Tensor, " batch"]:
    """[B] model calls each row spends per block, from a total budget `steps` per row (default:
    one token per call, i.e. the row's largest block). Computed per row, so a row decodes the
    same way whatever else is in the batch."""
    out = []
    for b in range(state.blocks.shape[0]):
        _, counts = torch.unique(state.blocks[b][state.gen[b]], return_counts=True)
        if steps is None:
            out.append(int(counts.max()))
            continue
        if steps < counts.numel():
            raise UserError(
                f"steps={steps} is fewer than the {counts.numel()} blocks to decode; give at least one "
                "step per block (raise --steps or --block-length)."
            )
        out.append(math.ceil(steps / counts.numel()))
    return torch.tensor(out, device=state.ids.device)


class BlockClock:
    """Counts each row's steps inside its current block (reset when the row moves to a new block)."""

    def __init__(self, state: State):
        self.block = state.current_block()
        self.count = torch.zeros_like(self.block)

    def advance(self, state: State) -> None:
        new = state.current_block()
        self.count = torch.where(new == self.block, self.count + 1, torch.zeros_like(self.count))
        self.block = new


class BudgetSampler(Sampler):
    """A sampler that spends a budget of `steps` model calls per row, spread evenly over the row's
    blocks (`steps_per_block`), and counts the calls made in each row's current block
    (`BlockClock`, advanced by the subclass's `step`). Subclasses that keep more state extend
    `_init` (calling this one first)."""

    steps: int | None = None

    def _init(self, model: torch.nn.Module, state: State) -> None:
        state.scratch["budget"] = steps_per_block(self.steps, state)
        state.scratch["clock"] = BlockClock(state)

    @staticmethod
    def budget(state: State) -> Int[Tensor, " batch"]:
        """[B] model calls each row spends per block."""
        return state.scratch["budget"]

    @staticmethod
    def clock(state: State) -> BlockClock:
        """The rows' step counts inside their current blocks."""
        return state.scratch["clock"]
