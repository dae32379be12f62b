"""The post-training loop that turns an AR checkpoint into a masked diffusion LM.

`train(TrainConfig(...))` loads the AR model and its rows (`conversion.source`), gives it a mask token
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
                     "masked", "lr", "grad_norm", "tokens_per_s", "tflops", "mfu" (on a known GPU
                     or with peak_tflops; conversion.throughput), "tokens_seen"}) or evaluation
                     ({"kind": "eval", "step", "loss", "ce@t", ...})
    checkpoint/      the last good training state (model.safetensors, optimizer.safetensors
                     and optimizer.json keyed by parameter name, state.json)
    config.json, model.safetensors, tokenizer files, ar2mdm.json
                     the final MDM: an HF folder (is_causal = False) loadable by
                     AutoModelForCausalLM.from_pretrained or `mdm.load_mdm`.

A NaN or infinite loss or gradient norm stops the run with `TrainingDiverged`; the last good
checkpoint is left untouched. LoRA (`--lora`, `conversion.lora`): adapters and the mask token's
embedding row train through the same loop; checkpoints hold them; the MDM is written merged.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_optimizer_state_dict
from tqdm.auto import tqdm

from ar2mdm.common.errors import TrainingInterrupted, UserError
from ar2mdm.common.metadata import ModelMeta, require_kind
from ar2mdm.common.outputs import Claim, claim_output, owned_contents
from ar2mdm.common.seeding import derive_seed
from ar2mdm.diffusion.attention import document_ids
from conversion import data as data_mod
from conversion.config import TrainConfig
from conversion.loop import Clock, StepOutput, fit
from conversion.lora import Adapters, attach_lora
from conversion.mdm import save_mdm
from conversion.moe import RouterLogits, freeze_routers, moe_settings
from conversion.objective import DiffusionOptions, diffusion_loss, draw_noise, eligible_positions, heldout_loss
from conversion.parallel import any_process, make_accelerator, no_sync, offload_params, parallelism, shard_on_cpu
from conversion.report import write_training_report
from conversion.runfolder import (
    CHECKPOINT_DIR,
    FULL_STATE,
    LOG_FILE,
    Plan,
    RunLog,
    StopSignals,
    checkpoint_step,
    checkpoint_to_read,
    inner_optimizer,
    last_record,
    load_checkpoint,
    plan_run,
    read_log,
    remove_stale_temporaries,
    save_checkpoint,
)
from conversion.sft import split_rows, trim_padding
from conversion.source import source_model, training_rows
from conversion.throughput import flops_per_token, peak_tflops, utilisation


class TrainingDiverged(UserError):
    """The loss or gradient became NaN/inf; the message says where and what to try."""


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


def train(cfg: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Run (or resume) a conversion; return a `TrainResult`. See the module docstring.

    The output folder is claimed for the run (`ar2mdm.common.outputs.claim_output`: locked against a
    second run, refused if it holds anything but an earlier conversion run) and what to do with
    an earlier run there is decided by `runfolder.plan_run` (resume, overwrite, or an error that
    says which to pass). on_step(n) is called on every process after n optimizer steps are done
    (and any checkpoint of step n is written): a hook for progress reporting and tests.

    Raises UserError for bad options, sources, data or output folders (before any training);
    TrainingDiverged on a NaN/inf loss; TrainingInterrupted after Ctrl-C or SIGTERM, once a
    checkpoint of the last finished step is written.
    """
    accelerator = make_accelerator(cfg.device)
    world = accelerator.num_processes
    parallel = parallelism(accelerator.distributed_type, world)
    cfg.validate(world)
    require_kind(cfg.model, "ar", "--model (the AR source of a conversion)")
    out = Path(cfg.out).expanduser()
    with _claimed(accelerator, out) as claim:
        has_run = bool(owned_contents(out))  # a user's notes left in a run folder are not a run
        plan = plan_run(
            out, cfg.to_json(), has_run=has_run, resume=cfg.resume, overwrite=cfg.overwrite, steps=cfg.steps
        )
        accelerator.wait_for_everyone()  # every process has read the folder before the main one writes
        if claim is not None:  # the main process
            claim.mark()
            if plan.clear:
                for kept in claim.clear():
                    tqdm.write(f"ar2mdm convert: kept {kept}, which ar2mdm did not write.", file=sys.stderr)
            remove_stale_temporaries(out)
            if plan.note:
                tqdm.write(f"ar2mdm convert: {plan.note}", file=sys.stderr)
        accelerator.wait_for_everyone()
        if plan.action == "done":
            assert plan.meta is not None
            return _finished(out, plan.meta)
        with StopSignals() as signals:
            return _run(_Conversion(accelerator, cfg, parallel, plan, signals, on_step))


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
        if any_process(accelerator, error is not None):  # a collective: every process takes part
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
        out=out,
        steps=int(meta.extra.get("steps", 0)),
        tokens_seen=int(meta.extra.get("tokens_seen", 0)),
        final_loss=float(last_train["loss"]) if last_train else float("nan"),
        last_eval={k: v for k, v in last_eval.items() if k not in ("kind", "step")} if last_eval else None,
        meta=meta,
        history=history,
    )


def _run(run: _Conversion) -> TrainResult:
    """The conversion itself, in a claimed and prepared folder (see `train`): `run` through the
    one training loop (`conversion.loop.fit`), then the final MDM."""
    accelerator, cfg = run.accelerator, run.cfg
    done = fit(
        run,
        run.optimizer,
        run.model.parameters,
        start=run.start,
        steps=cfg.steps,
        clip=cfg.clip,
        clip_grad_norm=accelerator.clip_grad_norm_,
    )
    run.bar.close()
    meta = run.write_mdm(run.out, done)
    if accelerator.is_main_process:
        write_training_report(run.out)
    accelerator.wait_for_everyone()
    return TrainResult(
        out=run.out,
        steps=done,
        tokens_seen=run.tokens_seen,
        final_loss=run.final_loss,
        last_eval=run.last_eval,
        meta=meta,
        history=run.log.history,
    )


class _Conversion:
    """One conversion run as a `conversion.loop.Trainer`: the model, its optimizer and data, and
    what happens in and after each step (see the module docstring)."""

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: TrainConfig,
        parallel: str,
        plan: Plan,
        signals: StopSignals,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.accelerator, self.cfg, self.parallel, self.signals, self.on_step = (
            accelerator,
            cfg,
            parallel,
            signals,
            on_step,
        )
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.opts = cfg.options()
        self.out = Path(cfg.out).expanduser()
        self.ckpt_dir = self.out / CHECKPOINT_DIR
        self.loaded, model, self.tokenizer, self.mask_id = source_model(cfg)
        freeze, self.aux_coef = moe_settings(model, cfg.router, cfg.aux_loss)  # mixtures of experts
        if freeze:
            freeze_routers(model)
        self.router_logits = RouterLogits(model) if self.aux_coef else None
        model, self.adapters = attach_lora(model, cfg.lora_spec(), self.mask_id, cfg.seed)
        self.per_token = flops_per_token(model, cfg.seq_len)  # LoRA's frozen weights: 4 FLOPs each, not 6
        # a LoRA checkpoint holds only what trains: it resumes on the same source weights only
        self.ckpt_config = cfg.to_json() | ({"source_hash": self.loaded.meta.source_hash} if self.adapters else {})
        self.vocab = len(self.tokenizer)  # uniform noise draws real tokenizer ids only
        self.specials = tuple(self.tokenizer.all_special_ids)
        train_rows, held_rows = training_rows(accelerator, cfg, self.tokenizer, self.mask_id)
        self.start, self.tokens_seen, opt_state = 0, 0, None
        if plan.action == "resume":
            assert plan.checkpoint is not None
            self.start, self.tokens_seen, opt_state = load_checkpoint(plan.checkpoint, model, self.ckpt_config)
        peak = peak_tflops(accelerator.device, cfg.peak_tflops)
        self.peak = peak * self.world if peak else None
        if cfg.compile != "off":
            model.compile(backend="inductor" if cfg.compile == "on" else cfg.compile)  # in place: same names
        self.model, self.optimizer = self._prepared(model, opt_state)
        self.log = RunLog(self.out / LOG_FILE, keep_until=self.start, enabled=accelerator.is_main_process)
        if self.log.torn:
            tqdm.write(
                f"ar2mdm convert: dropped the torn last line of {self.log.path} ({self.log.torn}).", file=sys.stderr
            )
        last = last_record(self.log.history, "train")
        self.final_loss = float(last["loss"]) if last else float("nan")
        self.last_eval: dict[str, float] | None = None
        device = accelerator.device
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.micro = cfg.batch_size // cfg.grad_accum
        self.local = self.micro // self.world
        self.stream = data_mod.batches(train_rows, cfg.batch_size, seed=cfg.seed, start=self.start)
        self.held = split_rows(held_rows[: cfg.eval_blocks].to(device))
        self.window_tokens, self.window_start = 0, time.perf_counter()
        desc = f"train (stops after {cfg.max_minutes:g} min)" if cfg.max_minutes else "train"
        self.bar = tqdm(total=cfg.steps, initial=self.start, disable=not accelerator.is_main_process, desc=desc)
        if cfg.snapshot_every and self.start == 0:  # the source made bidirectional, before any training
            self.write_mdm(self.out / "snapshots" / "step-000000", 0)

    def _prepared(self, model: torch.nn.Module, opt_state: dict[str, Any] | None) -> tuple[torch.nn.Module, Any]:
        """The model and AdamW, wrapped for this launch (DDP / FSDP), the optimizer state restored."""
        model.train()
        if self.parallel == "fsdp-cpu":
            model = shard_on_cpu(model)
            optimizer = _adamw(model, self.cfg)  # over the sharded (DTensor) parameters
        else:
            fused = self.accelerator.device.type == "cuda"
            model, optimizer = self.accelerator.prepare(model, _adamw(model, self.cfg, fused=fused))
        if opt_state is not None:
            # Every process holds the full state; this shards it again if the optimizer is sharded.
            set_optimizer_state_dict(
                model, inner_optimizer(optimizer), opt_state, options=StateDictOptions(full_state_dict=True)
            )
        return model, optimizer

    def documents(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Document ids of packed rows for per-document attention (None when it is off)."""
        return document_ids(ids, self.tokenizer.eos_token_id) if self.cfg.document_attention else None

    # --- conversion.loop.Trainer ------------------------------------------------------------

    def lr(self, step: int, clock: Clock) -> float:
        return lr_at(step, self.cfg)

    def diverged(self, what: str, value: float, step: int) -> Exception:
        return TrainingDiverged(_diverged(what, value, step, self.ckpt_dir))

    def gradients(self, step: int) -> StepOutput:
        """Forward and backward passes of one optimizer step over the global batch: the noise is
        drawn for the whole batch on every process; each (micro-step, process) takes its rows."""
        cfg, opts, device = self.cfg, self.opts, self.accelerator.device
        # the global batch [batch_size, L], SFT rows cut to their longest example
        batch, am, pm = trim_padding(*split_rows(next(self.stream).to(device)))
        docs = self.documents(batch)
        gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, step))
        draw = draw_noise(
            batch,
            opts,
            mask_id=self.mask_id,
            vocab_size=self.vocab,
            step=step,
            generator=gen,
            exclude_ids=self.specials,
            attention_mask=am,
            prompt_mask=pm,
            document_ids=docs,
        )
        n_global = eligible_positions(
            batch.shape, shift=opts.shift, attention_mask=am, prompt_mask=pm, device=device, document_ids=docs
        ).sum()
        torch.manual_seed(derive_seed(cfg.seed, step, self.rank))  # dropout: per process
        sums = torch.zeros(3, device=device)  # weighted CE sum, masked, correct
        for k in range(cfg.grad_accum):
            rows = slice(k * self.micro + self.rank * self.local, k * self.micro + (self.rank + 1) * self.local)
            sync = nullcontext() if k == cfg.grad_accum - 1 else no_sync(self.accelerator, self.model, self.parallel)
            with sync:
                with self.autocast, self.router_logits or nullcontext():
                    res = diffusion_loss(
                        self.model,
                        batch[rows],
                        opts,
                        mask_id=self.mask_id,
                        step=step,
                        draw=draw.rows(rows),
                        attention_mask=None if am is None else am[rows],
                        prompt_mask=None if pm is None else pm[rows],
                        document_ids=None if docs is None else docs[rows],
                    )
                # Sum of this shard's weighted CE over the GLOBAL token count; x world because
                # DDP and FSDP average gradients over processes.
                loss = res.loss * res.n_tokens * self.world / n_global
                if self.router_logits is not None:  # the source's load balancing, a mean over micro-steps
                    aux = self.router_logits.loss(None if am is None else am[rows])
                    loss = loss + self.aux_coef * aux / cfg.grad_accum
                self.accelerator.backward(loss)
            sums += torch.stack([(res.loss * res.n_tokens).detach(), res.n_masked.float(), res.n_correct.float()])
        totals = self.accelerator.reduce(sums, reduction="sum")
        masked = float(totals[1])
        return StepOutput(
            loss=float(totals[0] / n_global),
            tokens=batch.numel() if am is None else int(am.sum()),
            stats={"acc": float(totals[2]) / masked if masked else float("nan"), "masked": int(masked)},
        )

    def after_step(self, done: int, out: StepOutput, lr: float, grad_norm: float, clock: Clock) -> bool:
        """Log, evaluate, snapshot and checkpoint as the options say; True ends the run (time
        budget); Ctrl-C / SIGTERM writes a checkpoint and raises TrainingInterrupted."""
        cfg = self.cfg
        self.tokens_seen += out.tokens
        self.window_tokens += out.tokens
        self.final_loss = out.loss
        self.bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            self._log_train(done, out, lr, grad_norm)
        if cfg.eval_every and self.held[0].shape[0] and (done % cfg.eval_every == 0 or done == cfg.steps):
            self._evaluate(done)
        if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.steps:
            self.write_mdm(self.out / "snapshots" / f"step-{done:06d}", done)
        saved = bool(cfg.save_every) and (done % cfg.save_every == 0 or done == cfg.steps)
        if saved:
            self._save(done)
        if self.on_step is not None:
            self.on_step(done)
        if done >= cfg.steps:
            return False
        if any_process(self.accelerator, self.signals.requested is not None):  # Ctrl-C on any process
            self._interrupted(done, saved)
        if any_process(self.accelerator, bool(cfg.max_minutes) and clock.wall_seconds > 60.0 * cfg.max_minutes):
            if cfg.save_every and not saved:
                self._save(done)
            self.log.write({"kind": "stop", "step": done, "reason": f"max_minutes {cfg.max_minutes:g} reached"})
            return True
        return False

    def _log_train(self, done: int, out: StepOutput, lr: float, grad_norm: float) -> None:
        elapsed = time.perf_counter() - self.window_start
        tokens_per_s = self.window_tokens / elapsed if elapsed > 0 else float("nan")
        self.log.write(
            {
                "kind": "train",
                "step": done,
                "loss": out.loss,
                **out.stats,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s,
                **utilisation(tokens_per_s, self.per_token, self.peak),
                "tokens_seen": self.tokens_seen,
            }
        )
        self.bar.set_postfix(loss=f"{out.loss:.3f}")
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def _evaluate(self, done: int) -> None:
        held_ids, held_am, held_pm = self.held
        with self.autocast:
            self.last_eval = heldout_loss(
                self.model,
                held_ids,
                self.opts,
                mask_id=self.mask_id,
                seed=self.cfg.seed,
                attention_mask=held_am,
                prompt_mask=held_pm,
                batch_size=max(1, self.local),
                vocab_size=self.vocab,
                document_ids=self.documents(held_ids),
            )
        self.log.write({"kind": "eval", "step": done, **self.last_eval})

    def _save(self, done: int) -> None:
        save_checkpoint(
            self.accelerator, self.model, self.optimizer, self.ckpt_config, done, self.tokens_seen, self.ckpt_dir
        )
        self.log.sync()  # the log's records up to the checkpoint are on disk with it

    def _interrupted(self, done: int, saved: bool) -> None:
        if not saved:
            self._save(done)
        reason = self.signals.requested or "by another process"
        self.log.write({"kind": "stop", "step": done, "reason": f"interrupted ({reason})"})
        self.bar.close()
        raise TrainingInterrupted(
            f"interrupted ({reason}) after step {done} of {self.cfg.steps}: a checkpoint of step {done} is in "
            f"{self.ckpt_dir}; the same command with --resume continues from it.",
            step=done,
            folder=self.out,
        )

    def write_mdm(self, folder: Path, step: int) -> ModelMeta:
        return _write_mdm(
            self.accelerator,
            self.model,
            self.tokenizer,
            self.loaded.meta,
            self.cfg,
            self.opts,
            self.mask_id,
            self.tokens_seen,
            self.world,
            self.parallel,
            self.adapters,
            folder,
            step,
        )


def _write_mdm(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: Any,
    source: ModelMeta,
    cfg: TrainConfig,
    opts: DiffusionOptions,
    mask_id: int,
    tokens_seen: int,
    world: int,
    parallel: str,
    adapters: Adapters | None,
    folder: Path,
    step: int,
) -> ModelMeta:
    """Write the model as an MDM folder, LoRA merged (all processes call: the state dict is gathered)."""
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
            "steps": step,
            "tokens_seen": tokens_seen,
            "processes": world,
            "parallelism": parallel,
            **({"fsdp_offload_params": True} if parallel.startswith("fsdp") and offload_params() else {}),
            "options": cfg.to_json(),
            **({"lora": adapters.record()} if adapters else {}),
        },
    )
    state_dict = get_model_state_dict(model, options=FULL_STATE)  # every process: gathers shards
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if adapters:  # the plain model under the adapters, with them merged (the training model keeps them)
            unwrapped, state_dict = adapters.merged(unwrapped, state_dict)
        save_mdm(unwrapped, tokenizer, meta, folder, state_dict=_without_aliases(unwrapped, state_dict))
    accelerator.wait_for_everyone()
    return meta


def _adamw(model: torch.nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    betas = (0.9, cfg.adam_beta2)
    trained = [p for p in model.parameters() if p.requires_grad]  # all, or LoRA's adapters and mask row
    return torch.optim.AdamW(trained, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=fused)


# --- checkpoints ---------------------------------------------------------------------------------


def _without_aliases(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the second names of shared parameters (a tied LM head): gathered copies no longer
    share storage, so transformers would otherwise save both; the folder is the same either way."""
    canonical = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - canonical
    return {k: v for k, v in state_dict.items() if k not in aliases}


def _diverged(what: str, value: float, step: int, ckpt_dir: Path) -> str:
    last = checkpoint_to_read(ckpt_dir)
    try:
        step_of_last = checkpoint_step(last) if last is not None else None
    except UserError as err:  # a damaged checkpoint: say so instead of failing on the way out
        return f"training diverged: the {what} is {value} at step {step + 1}, and {err}"
    where = (
        f"the last good checkpoint is {last} (step {step_of_last}): --resume continues from it with the same options"
        if last is not None
        else "no checkpoint was written yet"
    )
    return (
        f"training diverged: the {what} is {value} at step {step + 1}; {where}. Lower lr, raise "
        "warmup, enable clip, or check the data, and start over with --overwrite."
    )
