"""The post-training loop that turns an AR checkpoint into a masked diffusion LM.

`train(TrainConfig(...))` loads the AR model (`checkpoints.load_ar`), gives it a mask token
(`mdm.add_mask_token`), makes its attention bidirectional, packs the text (`data.pack`), and runs
the diffusion objective (`objective.diffusion_loss`) with AdamW, warmup + cosine learning rate,
gradient clipping and accumulation, on HF accelerate: the same code runs on one CPU/GPU process,
or under `accelerate launch` with DDP or FSDP. (On a CPU-only machine, several processes are
`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...`: gloo backend;
`accelerate launch --cpu` alone starts a single process unless mpirun is configured.)

FSDP. On GPUs, `accelerate launch --use_fsdp` (FSDP1 or FSDP2) shards the model through accelerate.
On CPU, accelerate 1.15 never applies FSDP: its state switches to FSDP only for accelerator
devices and silently wraps the model in DDP instead (FSDP1's plugin even fails to build, finding
no accelerator device). So a CPU multi-process run that asks for FSDP version 2
(`ACCELERATE_USE_CPU=true accelerate launch --use_fsdp --fsdp_version 2 --num_processes N ...`)
is sharded here with torch's own `fully_shard` (one unit per decoder layer, plus the root), over
the gloo group; FSDP1 on CPU is refused with a UserError, and so is a multi-process launch that
accelerate did not join into one process group (each process would train alone). Checkpoints
gather the full model and the full optimizer state (torch.distributed.checkpoint's state-dict
API, keyed by parameter name) whatever the wrapping: plain, DDP, FSDP1 or FSDP2; a resume loads
them back into whatever wrapping it runs under, sharding the optimizer state again.

Same numbers on any number of processes. `batch_size` is the GLOBAL number of sequences per
optimizer step. Each step takes the next global batch from the data stream, draws the noise for
the whole global batch from a generator seeded by (seed, step) on every process, and gives each
(accumulation micro-step, process) its rows. Each shard's loss is scaled so that the summed
gradient is exactly the gradient of the global loss (weighted CE sum / global eligible tokens).
So one process with batch 8 and two processes with batch 8 compute the same update, up to float
summation order.

Exact resume. All randomness is a function of (seed, step[, process]): the data position is the
step (`data.batches(start=step)`), the noise generator and the global torch RNG (dropout) are
re-seeded every step, and the learning rate is a pure function of the step. A checkpoint therefore
holds the weights, the optimizer state and the step; resuming reproduces the uninterrupted run
bit for bit on the same machine and the same number of processes (and, up to float summation
order, on any other number: the checkpoint is never sharded). Checkpoints are written atomically
(into a temporary folder, then renamed over the previous one), as safetensors + JSON (nothing is
ever unpickled).

Files under `out/`:
    train.jsonl      one JSON object per logged step ({"kind": "train", "step", "loss", "acc",
                     "masked", "lr", "grad_norm", "tokens_per_s", "tokens_seen"}) or evaluation
                     ({"kind": "eval", "step", "loss", "ce@t", ...})
    checkpoint/      the last good training state (model.safetensors, optimizer.safetensors
                     and optimizer.json keyed by parameter name, state.json)
    config.json, model.safetensors, tokenizer files, ar2mdm.json
                     the final MDM: an HF folder (is_causal = False) loadable by
                     AutoModelForCausalLM.from_pretrained or `mdm.load_mdm`.

A NaN or infinite loss or gradient norm stops the run with `TrainingDiverged`; the last good
checkpoint is left untouched.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_optimizer_state_dict,
)
from tqdm.auto import tqdm

from common.errors import TrainingInterrupted, UserError
from common.metadata import ModelMeta, require_kind
from common.options import check_types
from common.outputs import Claim, claim_output, clear_contents, folder_contents
from conversion import data as data_mod
from conversion.checkpoints import load_ar
from conversion.mdm import add_mask_token, save_mdm
from conversion.objective import (
    DiffusionOptions,
    diffusion_loss,
    draw_noise,
    eligible_positions,
    heldout_loss,
)
from conversion.report import write_training_report
from conversion.runfolder import (
    CHECKPOINT_DIR,
    FULL_STATE,
    LOG_FILE,
    Plan,
    RunLog,
    StopSignals,
    checkpoint_to_read,
    inner_optimizer,
    last_record,
    load_checkpoint,
    plan_run,
    read_log,
    remove_stale_temporaries,
    save_checkpoint,
)
from diffusion.attention import document_ids, make_bidirectional


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; the message says where and what to try."""


@dataclass
class TrainConfig:
    """Everything a conversion run depends on.

    model: AR source for `load_ar` (name, HF folder, .gguf). data: text source for
    `data.load_texts` (corpus name, .txt/.jsonl/folder, or a list). out: output folder.
    steps: optimizer steps. seq_len: tokens per block. batch_size: GLOBAL sequences per optimizer
    step (divisible by grad_accum x processes). lr, weight_decay, adam_beta2: AdamW. warmup: linear
    warmup steps, then cosine decay to min_lr_ratio x lr. clip: max grad norm (0: off).
    bf16: bf16 autocast of forward passes (weights and optimizer stay fp32). seed: data order,
    noise, dropout.
    noise / schedule / weighting / antithetic / attention / shift: the objective
    (`objective.DiffusionOptions`). document_attention: packed text rows attend within each
    document only (block-diagonal mask, positions restarting per document; `diffusion.attention`).
    mask_token: "add" (new <|mask|> token) or an existing id.
    sft: `data` holds prompt/answer examples ("tasks" or a .jsonl file); only answers are noised.
    held_out: fraction of documents held out. eval_every: held-out eval period in steps, plus
    one at the end (0: no evaluation). eval_blocks: held-out blocks used. save_every: checkpoint
    period in steps, plus one at the end (0: no checkpoints, so no resume). snapshot_every: write
    the MDM as it is every N steps to out/snapshots/step-NNNNNN (loadable folders, for
    `analyses.compare.track`; 0: none). max_minutes: stop after this much training time (0: no
    limit) and write the MDM as it stands (a checkpoint too when save_every > 0; `steps` in the
    result says how far it got). log_every: JSONL log period. resume: continue from out/checkpoint (same options; `steps` may grow).
    trust_remote_code: passed to `load_ar`.
    """

    model: str
    data: str | list[str]
    out: str
    steps: int = 100
    seq_len: int = 128
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta2: float = 0.95
    warmup: int = 0
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    bf16: bool = False
    seed: int = 0
    noise: str = "absorbing"
    schedule: str = "linear"
    weighting: str = "elbo"
    antithetic: bool = True
    attention: str = "bidirectional"
    document_attention: bool = False
    shift: bool = True
    mask_token: str = "add"
    sft: bool = False
    held_out: float = 0.02
    eval_every: int = 0
    eval_blocks: int = 64
    save_every: int = 0
    snapshot_every: int = 0
    max_minutes: float = 0.0
    log_every: int = 1
    resume: bool = False
    overwrite: bool = False
    text_field: str = "text"
    trust_remote_code: bool = False

    def options(self) -> DiffusionOptions:
        return DiffusionOptions(
            noise=self.noise,
            schedule=self.schedule,
            weighting=self.weighting,
            shift=self.shift,
            antithetic=self.antithetic,
            attention=self.attention,
        ).checked()

    def validate(self, world_size: int = 1) -> None:
        """Raise UserError naming the first bad option (types first, then values)."""
        for name, value in check_types(TrainConfig, asdict(self), "TrainConfig").items():
            setattr(self, name, value)  # e.g. steps 2.0 -> 2, lr "1e-4" (YAML reads it as text) -> 1e-4
        if self.seq_len < 2:
            raise UserError(f"seq_len must be >= 2 (a token and one to predict from it), got {self.seq_len}.")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "eval_blocks"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup", "eval_every", "save_every", "snapshot_every"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}.")
        shard = self.grad_accum * world_size
        if self.batch_size % shard:
            raise UserError(
                f"batch_size {self.batch_size} (global, per optimizer step) must be divisible by "
                f"grad_accum x processes = {self.grad_accum} x {world_size}."
            )
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise UserError(f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number, got {self.lr}.")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise UserError(f"clip must be >= 0 (0 = no clipping), got {self.clip}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"min_lr_ratio must be in [0, 1] (a fraction of lr), got {self.min_lr_ratio}.")
        if not 0.0 < self.adam_beta2 < 1.0:
            raise UserError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}.")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0.0 <= self.held_out < 1.0:
            raise UserError(f"held_out must be a fraction in [0, 1), got {self.held_out}.")
        if self.seed < 0:
            raise UserError(f"seed must be >= 0, got {self.seed}.")
        if self.document_attention and self.sft:
            raise UserError(
                "document_attention separates the documents packed into a text row; SFT rows hold one example "
                "each. Drop --document-attention or --sft."
            )
        self.options()

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    """What a run produced: the output folder, steps and tokens done, last logged numbers.

    history: the JSONL records of the run (main process only; empty on the others).
    """

    out: Path
    steps: int
    tokens_seen: int
    final_loss: float
    last_eval: dict[str, float] | None
    meta: ModelMeta
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine decay."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def _seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integer parts (so (seed, step) streams never overlap)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def train(cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Run (or resume) a conversion; return a `TrainResult`. See the module docstring.

    The output folder is claimed for the run (`common.outputs.claim_output`: locked against a
    second run, refused if it holds anything but an earlier conversion run) and what to do with
    an earlier run there is decided by `runfolder.plan_run` (resume, overwrite, or an error that
    says which to pass). on_step(n) is called on every process after n optimizer steps are done
    (and any checkpoint of step n is written): a hook for progress reporting and tests.

    Raises UserError for bad options, sources, data or output folders (before any training);
    TrainingDiverged on a NaN/inf loss; TrainingInterrupted after Ctrl-C or SIGTERM, once a
    checkpoint of the last finished step is written.
    """
    accelerator = _accelerator()
    world = accelerator.num_processes
    parallel = parallelism(accelerator.distributed_type, world)
    cfg.validate(world)
    require_kind(cfg.model, "ar", "--model (the AR source of a conversion)")
    out = Path(cfg.out).expanduser()
    with _claimed(accelerator, out) as claim:
        has_run = bool(folder_contents(out))
        plan = plan_run(out, cfg.to_json(), has_run=has_run, resume=cfg.resume, overwrite=cfg.overwrite, steps=cfg.steps)
        if claim is not None:  # the main process
            claim.mark()
            if plan.clear:
                clear_contents(out)
            remove_stale_temporaries(out)
            if plan.note:
                tqdm.write(f"ar2mdm convert: {plan.note}", file=sys.stderr)
        accelerator.wait_for_everyone()
        if plan.action == "done":
            assert plan.meta is not None
            return _finished(out, plan.meta)
        with StopSignals() as signals:
            return _run(accelerator, cfg, parallel, plan, signals, on_step)


@contextmanager
def _claimed(accelerator: Accelerator, out: Path) -> Iterator[Claim | None]:
    """The main process claims `out` for the run (yields the `Claim`; None on the others); every
    process raises if it could not (so that none waits forever at the next barrier)."""
    error: UserError | None = None
    claim: Claim | None = None
    with ExitStack() as stack:
        if accelerator.is_main_process:
            try:
                claim = stack.enter_context(claim_output(out, "convert", recognise=_is_legacy_run))
            except UserError as err:
                error = err
        failed = torch.tensor([float(error is not None)], device=accelerator.device)
        if accelerator.num_processes > 1:  # a collective: every process takes part, failed or not
            failed = accelerator.reduce(failed, reduction="sum")
        if float(failed) > 0:
            raise error or UserError(f"the main process could not claim {out} for this run; see its message.")
        yield claim


def _is_legacy_run(folder: Path) -> bool:
    """A conversion run folder written before owner records existed."""
    return (folder / LOG_FILE).is_file() or (folder / CHECKPOINT_DIR).is_dir()


def _finished(out: Path, meta: ModelMeta) -> TrainResult:
    """The result of a run that had already finished (resume with nothing left to do)."""
    history = read_log(out)
    last_train, last_eval = last_record(history, "train"), last_record(history, "eval")
    return TrainResult(
        out=out, steps=int(meta.extra.get("steps", 0)), tokens_seen=int(meta.extra.get("tokens_seen", 0)),
        final_loss=float(last_train["loss"]) if last_train else float("nan"),
        last_eval={k: v for k, v in last_eval.items() if k not in ("kind", "step")} if last_eval else None,
        meta=meta, history=history,
    )


def _run(
    accelerator: Accelerator, cfg: TrainConfig, parallel: str, plan: Plan, signals: StopSignals,
    on_step: Callable[[int], None] | None,
) -> TrainResult:
    """The conversion itself, in a claimed and prepared folder (see `train`)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    opts = cfg.options()
    out = Path(cfg.out).expanduser()
    ckpt_dir = out / CHECKPOINT_DIR

    # Model, mask token, bidirectional attention.
    loaded = load_ar(cfg.model, trust_remote_code=cfg.trust_remote_code, role="--model (the AR source of a conversion)")
    model, tokenizer = loaded.model, loaded.tokenizer
    context = getattr(model.config, "max_position_embeddings", None)
    if context and cfg.seq_len > int(context):
        raise UserError(
            f"seq_len {cfg.seq_len} is beyond {cfg.model}'s context of {context} positions; "
            f"use --seq-len {context} or less."
        )
    mask_id = add_mask_token(model, tokenizer, cfg.mask_token)
    make_bidirectional(model)
    vocab = len(tokenizer)  # uniform noise draws real tokenizer ids only
    specials = tuple(tokenizer.all_special_ids)
    separator = tokenizer.eos_token_id  # what `data.pack` puts between documents

    def documents(ids: torch.Tensor) -> torch.Tensor | None:
        return document_ids(ids, separator) if cfg.document_attention else None

    # Data.
    # Rows are [N, 1, L] (packed text: every position a token) or, with sft, [N, 3, L]
    # (ids, attention mask, prompt mask: prompt and suffix never noised, loss over the answer).
    with accelerator.main_process_first():
        if cfg.sft:
            sft = data_mod.sft_rows(
                cfg.data, tokenizer, seq_len=cfg.seq_len, mask_id=mask_id, held_out=cfg.held_out, seed=cfg.seed
            )
            train_rows, held_rows = sft.train, sft.held_out
        else:
            packed = data_mod.pack(
                data_mod.load_texts(cfg.data, text_field=cfg.text_field), tokenizer, seq_len=cfg.seq_len,
                held_out=cfg.held_out, seed=cfg.seed,
            )
            train_rows, held_rows = packed.train[:, None], packed.held_out[:, None]
    if data_mod.batches_per_epoch(int(train_rows.shape[0]), cfg.batch_size) == 0:
        what = "examples" if cfg.sft else f"blocks of {cfg.seq_len} tokens"
        raise UserError(
            f"the training data holds {int(train_rows.shape[0])} {what}, fewer than one batch of {cfg.batch_size}: "
            f"use a smaller --batch-size{'' if cfg.sft else ' or --seq-len'}, or more data."
        )

    start, tokens_seen, opt_state = 0, 0, None
    if plan.action == "resume":
        assert plan.checkpoint is not None
        start, tokens_seen, opt_state = load_checkpoint(plan.checkpoint, model, cfg.to_json())
    model.train()
    if parallel == "fsdp-cpu":
        model = _shard_on_cpu(model)
        optimizer = _adamw(model, cfg)  # over the sharded (DTensor) parameters
    else:
        model, optimizer = accelerator.prepare(model, _adamw(model, cfg))
    if opt_state is not None:
        # Every process holds the full state; this shards it again if the optimizer is sharded.
        set_optimizer_state_dict(
            model, inner_optimizer(optimizer), opt_state, options=StateDictOptions(full_state_dict=True)
        )
    log = RunLog(out / LOG_FILE, keep_until=start, enabled=accelerator.is_main_process)
    last = last_record(log.history, "train")
    final_loss = float(last["loss"]) if last else float("nan")

    device = accelerator.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
    micro = cfg.batch_size // cfg.grad_accum
    local = micro // world
    stream = data_mod.batches(train_rows, cfg.batch_size, seed=cfg.seed, start=start)
    held = held_rows[: cfg.eval_blocks].to(device)
    held_ids, held_am, held_pm = _split_rows(held)
    held_docs = documents(held_ids)
    last_eval: dict[str, float] | None = None
    window_tokens, window_start = 0, time.perf_counter()
    desc = f"train (stops after {cfg.max_minutes:g} min)" if cfg.max_minutes else "train"
    bar = tqdm(total=cfg.steps, initial=start, disable=not accelerator.is_main_process, desc=desc)

    if cfg.snapshot_every and start == 0:  # the source made bidirectional, before any training
        _write_mdm(accelerator, model, tokenizer, loaded.meta, cfg, opts, mask_id, tokens_seen, world, parallel,
                   out / "snapshots" / "step-000000", 0)
    done = start
    began = time.perf_counter()
    for step in range(start, cfg.steps):
        rows_b = next(stream).to(device)  # [batch_size, 1 or 3, seq_len], the global batch
        batch, am, pm = _split_rows(rows_b)
        docs = documents(batch)
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Noise for the whole global batch, identical on every process; dropout per process.
        gen = torch.Generator(device=device).manual_seed(_seed(cfg.seed, step))
        draw = draw_noise(
            batch, opts, mask_id=mask_id, vocab_size=vocab, step=step, generator=gen, exclude_ids=specials,
            attention_mask=am, prompt_mask=pm, document_ids=docs,
        )
        n_global = eligible_positions(
            batch.shape, shift=opts.shift, attention_mask=am, prompt_mask=pm, device=device, document_ids=docs,
        ).sum()
        torch.manual_seed(_seed(cfg.seed, step, rank))

        sums = torch.zeros(3, device=device)  # weighted CE sum, masked, correct
        for k in range(cfg.grad_accum):
            rows = slice(k * micro + rank * local, k * micro + (rank + 1) * local)
            sync = nullcontext() if k == cfg.grad_accum - 1 else _no_sync(accelerator, model, parallel)
            with sync:
                with autocast:
                    res = diffusion_loss(
                        model, batch[rows], opts, mask_id=mask_id, step=step, draw=draw.rows(rows),
                        attention_mask=None if am is None else am[rows],
                        prompt_mask=None if pm is None else pm[rows],
                        document_ids=None if docs is None else docs[rows],
                    )
                # Sum of this shard's weighted CE over the GLOBAL token count; x world because
                # DDP and FSDP average gradients over processes.
                accelerator.backward(res.loss * res.n_tokens * world / n_global)
            sums += torch.stack(
                [(res.loss * res.n_tokens).detach(), res.n_masked.float(), res.n_correct.float()]
            )
        totals = accelerator.reduce(sums, reduction="sum")
        loss = float(totals[0] / n_global)
        if not math.isfinite(loss):
            raise TrainingDiverged(_diverged("loss", loss, step, ckpt_dir))
        grad_norm = float("nan")
        if cfg.clip > 0:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.clip))
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(_diverged("gradient norm", grad_norm, step, ckpt_dir))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        real = batch.numel() if am is None else int(am.sum())
        tokens_seen += real
        window_tokens += real
        final_loss = loss
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.perf_counter() - window_start
            masked = float(totals[1])
            log.write({
                "kind": "train", "step": done, "loss": loss,
                "acc": float(totals[2]) / masked if masked else float("nan"),
                "masked": int(masked), "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": window_tokens / elapsed if elapsed > 0 else float("nan"),
                "tokens_seen": tokens_seen,
            })
            bar.set_postfix(loss=f"{loss:.3f}")
            window_tokens, window_start = 0, time.perf_counter()
        if cfg.eval_every and held.shape[0] and (done % cfg.eval_every == 0 or done == cfg.steps):
            with autocast:
                last_eval = heldout_loss(
                    model, held_ids, opts, mask_id=mask_id, seed=cfg.seed,
                    attention_mask=held_am, prompt_mask=held_pm,
                    batch_size=max(1, local), vocab_size=vocab, document_ids=held_docs,
                )
            log.write({"kind": "eval", "step": done, **last_eval})
        if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.steps:
            _write_mdm(accelerator, model, tokenizer, loaded.meta, cfg, opts, mask_id, tokens_seen, world, parallel,
                       out / "snapshots" / f"step-{done:06d}", done)
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            save_checkpoint(accelerator, model, optimizer, cfg.to_json(), done, tokens_seen, ckpt_dir)
        if on_step is not None:
            on_step(done)
        stop = _stop_reason(accelerator, began, cfg.max_minutes, signals) if done < cfg.steps else None
        if stop == "signal":
            if not (cfg.save_every and done % cfg.save_every == 0):
                save_checkpoint(accelerator, model, optimizer, cfg.to_json(), done, tokens_seen, ckpt_dir)
            log.write({"kind": "stop", "step": done, "reason": f"interrupted ({signals.requested or 'signal'})"})
            bar.close()
            raise TrainingInterrupted(
                f"interrupted ({signals.requested or 'by another process'}) after step {done} of {cfg.steps}: "
                f"a checkpoint of step {done} is in {ckpt_dir}; the same command with --resume continues from it.",
                step=done, folder=out,
            )
        if stop == "time":
            if cfg.save_every and done % cfg.save_every:
                save_checkpoint(accelerator, model, optimizer, cfg.to_json(), done, tokens_seen, ckpt_dir)
            log.write({"kind": "stop", "step": done, "reason": f"max_minutes {cfg.max_minutes:g} reached"})
            break
    bar.close()

    # Final MDM folder.
    meta = _write_mdm(accelerator, model, tokenizer, loaded.meta, cfg, opts, mask_id, tokens_seen, world, parallel, out, done)
    if accelerator.is_main_process:
        write_training_report(out)
    accelerator.wait_for_everyone()
    return TrainResult(
        out=out, steps=done, tokens_seen=tokens_seen, final_loss=final_loss, last_eval=last_eval,
        meta=meta, history=log.history,
    )


def _stop_reason(accelerator: Accelerator, began: float, minutes: float, signals: StopSignals) -> str | None:
    """"signal" (Ctrl-C / SIGTERM on any process), "time" (the budget is spent) or None; every
    process gets the same answer (they must stop at the same step)."""
    flags = torch.tensor(
        [float(signals.requested is not None), float(bool(minutes) and time.perf_counter() - began > 60.0 * minutes)],
        device=accelerator.device,
    )
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    if float(flags[0]) > 0:
        return "signal"
    return "time" if float(flags[1]) > 0 else None


def _write_mdm(
    accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any, source: ModelMeta, cfg: TrainConfig,
    opts: DiffusionOptions, mask_id: int, tokens_seen: int, world: int, parallel: str, folder: Path, step: int,
) -> ModelMeta:
    """Write the model as an MDM folder (all processes call: the state dict is gathered)."""
    spec = opts.spec
    meta = ModelMeta(
        kind="mdm",
        source=source.source,
        source_hash=source.source_hash,
        family=source.family,
        shift=cfg.shift,
        mask_id=mask_id,
        noise=cfg.noise,
        schedule=cfg.schedule,
        block_size=spec.block_sizes[0] if len(spec.block_sizes) == 1 else None,
        extra={
            "steps": step, "tokens_seen": tokens_seen, "processes": world, "parallelism": parallel,
            "options": cfg.to_json(),
        },
    )
    state_dict = get_model_state_dict(model, options=FULL_STATE)  # every process: gathers shards
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_mdm(unwrapped, tokenizer, meta, folder, state_dict=_without_aliases(unwrapped, state_dict))
    accelerator.wait_for_everyone()
    return meta


# --- processes -----------------------------------------------------------------------------------


def _accelerator() -> Accelerator:
    """The run's Accelerator; accelerate's own refusals of the launch become UserErrors."""
    # bf16 is our own autocast, not Accelerator(mixed_precision=...): accelerate's state is a
    # process-wide singleton that refuses a second run with another precision (notebooks, tests).
    try:
        return Accelerator()
    except RuntimeError as err:
        if "no available devices" in str(err) and _flag(os.environ, "ACCELERATE_USE_FSDP"):
            # FullyShardedDataParallelPlugin (FSDP1, sync_module_states, which accelerate launch's
            # default --fsdp_cpu_ram_efficient_loading true forces) looks for an accelerator device.
            raise UserError(_FSDP_CPU_HELP.format(what=f"FSDP1 cannot run on CPU (accelerate: {err})")) from err
        raise


_FSDP_CPU_HELP = (
    "{what}. On a CPU-only machine, launch FSDP as version 2, which ar2mdm shards itself: "
    "ACCELERATE_USE_CPU=true accelerate launch --use_fsdp --fsdp_version 2 --num_processes N "
    "--num_machines 1 ... ar2mdm convert ...; or use DDP (--multi_gpu instead of --use_fsdp)."
)


def _flag(env: Any, name: str) -> bool:
    return str(env.get(name, "false")).strip().lower() in ("1", "true", "yes")


def parallelism(distributed_type: DistributedType, num_processes: int, env: dict[str, str] | None = None) -> str:
    """How this process trains: "none", "ddp", "fsdp" (accelerate's), or "fsdp-cpu" (our FSDP2).

    Raises UserError for launches that would not train as asked: FSDP1 on CPU (accelerate would
    silently fall back to DDP), and processes started by a launcher (WORLD_SIZE > 1) that
    accelerate did not join into one group (on a CPU-only machine without ACCELERATE_USE_CPU=true,
    each process would train alone and all of them would write the same output folder).
    """
    env = dict(os.environ) if env is None else env
    launched = int(env.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes == 1:
        raise UserError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate sees this one "
            "alone, so each would train by itself into the same folder. On a CPU-only machine, set "
            "ACCELERATE_USE_CPU=true for the launch (`accelerate launch --cpu` starts one process); "
            "on GPUs, check that they are visible (CUDA_VISIBLE_DEVICES)."
        )
    wants_fsdp = _flag(env, "ACCELERATE_USE_FSDP")
    if distributed_type == DistributedType.FSDP:
        return "fsdp"
    if wants_fsdp and distributed_type == DistributedType.MULTI_CPU:
        version = env.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise UserError(_FSDP_CPU_HELP.format(
                what=f"FSDP version {version} cannot run on CPU (accelerate would silently use DDP)"
            ))
        return "fsdp-cpu"
    if wants_fsdp and num_processes > 1:
        raise UserError(
            f"FSDP was asked for but accelerate set up {distributed_type}, not FSDP; "
            "relaunch without --use_fsdp, or on a supported device."
        )
    return "ddp" if num_processes > 1 else "none"


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )


def _shard_on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the CPU (gloo) process group: every decoder layer one unit, the rest the root.

    Rank 0's weights are broadcast first, so every process shards the same model.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in layer_classes:
            fully_shard(module)
    fully_shard(model)
    return model


@contextmanager
def _no_sync(accelerator: Accelerator, model: torch.nn.Module, parallel: str) -> Iterator[None]:
    """Context of a gradient-accumulation micro-step that must not reduce gradients yet."""
    if parallel != "fsdp-cpu":
        with accelerator.no_sync(model):
            yield
        return
    model.set_requires_gradient_sync(False)  # FSDP2: accumulate unsharded, reduce-scatter later
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# --- checkpoints ---------------------------------------------------------------------------------


def _without_aliases(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second names of shared parameters (a tied LM head): gathered copies no longer
    share storage, so transformers would otherwise save both; the folder is the same either way."""
    canonical = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - canonical
    return {k: v for k, v in state_dict.items() if k not in aliases}


def _split_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(ids, attention_mask, prompt_mask) of rows [B, 1 or 3, L]; masks None for packed text."""
    if rows.shape[1] == 1:
        return rows[:, 0], None, None
    return rows[:, 0], rows[:, 1], rows[:, 2].bool()


def _diverged(what: str, value: float, step: int, ckpt_dir: Path) -> str:
    last = checkpoint_to_read(ckpt_dir)
    where = (
        f"the last good checkpoint is {last} (step {json.loads((last / 'state.json').read_text())['step']}): "
        "--resume continues from it with the same options"
        if last is not None
        else "no checkpoint was written yet"
    )
    return (
        f"training diverged: the {what} is {value} at step {step + 1}; {where}. Lower lr, raise "
        "warmup, enable clip, or check the data, and start over with --overwrite."
    )
