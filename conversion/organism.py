"""The model organism: a small Llama trained from scratch on the task mixture, on a CPU.

A converted 7B model is too big to study end to end on this hardware. The organism is the honest
small-scale stand-in: a standard HF decoder (`LlamaForCausalLM`, so every backend, loader and
converter treats it like any checkpoint) trained from random initialisation on the six task suites
of `tasks` until it solves the locally causal ones (IOI, Greater-Than, induction) and a good
share of the global ones. `ar2mdm organism train` calls `train_organism` then `print_report`.

How it is built, and why:

1. Tokenizer (`build_tokenizer`). Byte-level BPE trained on task text with an unbounded vocabulary,
   after a pre-tokenizer that cuts text into words (with their leading space), single digits,
   single punctuation marks and whitespace. Training stops only when every pre-token of the
   corpus is one token, so the result is in effect a word-level vocabulary ("ĠMary" is one token,
   "12" is "1" "2", " 3*7" is "Ġ3" "*" "7") that still falls back to bytes for unseen text: any
   string round-trips exactly (decode(encode(text)) == text), which Countdown's checker relies on.
   Specials: <pad> <bos> <eos> <unk> and <mask>, the token a later MDM conversion masks with (its id
   is also stored as `mask_token_id` in config.json). Encoding prepends <bos>.
2. Model (`OrganismConfig`, `build_model` in `conversion.organism_model`; `n_experts` > 0 gives a
   Mixtral, the same blocks with mixture-of-experts MLPs). LlamaConfig: RoPE, RMSNorm, SwiGLU, untied embeddings,
   128 positions; default 6 layers, d_model 128, 4 heads of 32, MLP 384 (1.7M parameters), so
   the "first third" of the depth holds two layers. fp32 is the fast path on these CPUs (no native
   bf16: autocast to bf16 ran ~7x slower). Measured (seed 0, 1,500 steps, 2 threads): the 6 x 128
   model costs what the earlier 3 x 192 default did per step (0.22 s unpacked) and reached every
   accuracy target (induction 1.00, Countdown 0.61), where 3 x 192 reached induction 0.915 and
   Countdown 0.505 in the same steps; lr 1.5e-3 (chosen on 3 x 192 among 1e-3, 1.5e-3, 2e-3).
3. Data (`MixtureStream`). An infinite, seeded stream: every batch holds a fixed number of
   examples of each task (stratified, so each step sees every task). A training sequence is
   `<bos> ar_text <eos>` (infilling in AR reading order, sentence first), plus the in-place infilling
   text `<bos> prompt answer suffix <eos>` now and then, so the model is also an ordinary LM over
   the layout an MDM will later fill in place. Induction sequences end at the answer without <eos>
   (`Task.text_ends_at_answer`: a prompt repeating j words is also the text of the example
   repeating j - 1 words, so a closing <eos> taught the model to stop where it should copy; with
   it, induction accuracy oscillated between 0.69 and 0.97 and all misses were an <eos> at j = 7).
   Greater-Than also draws start years x09 (`TRAINING_OPTIONS`), the year its corruption uses.
   Sequences are packed into rows of `pack_length` tokens, each attending only to itself with its
   own positions (the same loss terms as padding each to the batch's longest; ~36% fewer token
   slots, ~30% less time per step). The mixture leans on the slow learners (Countdown 30, IOI 12,
   induction 10 of 64 per batch); Greater-Than (4) and infilling (2) are solved within ~200 steps,
   sudoku gets 6.
4. Loss. Next-token cross-entropy over the whole sequence (the model stays an honest LM of the
   task text, which the diffusion conversion needs), with answer tokens and the closing <eos>
   weighted `answer_weight` (2) times more: the prompts are mostly random names and numbers that
   no training makes predictable, and the answers are what we evaluate. Measured: weight 1 never
   learned IOI in 1000 steps (one answer token per example drowns in the prompt loss); weights 4
   and 8 learned induction later (the repeated half of an induction prompt is itself induction
   training signal, which a large answer weight discounts); 2 was best on both.
5. Held-out evaluation. Evaluation examples come from seeds the training stream never uses, and
   for tasks with a large prompt space (IOI, induction, Countdown, sudoku) their prompts are
   removed from the training stream, so every evaluated prompt is unseen. Greater-Than (120
   distinct prompts) and infilling (190) have prompt pools too small for that: their held-out
   examples are fresh draws whose prompts the model has seen, with freshly drawn reference answers.
   Accuracy is greedy decoding checked by `task.check`; IOI also reports the mean logit
   difference logit(IO) - logit(S).
6. Training: AdamW, linear warmup then cosine decay, gradient clipping, 2 threads. `steps` gives
   an exact run (same seed and steps -> identical weights); `minutes` gives a time budget, with the
   learning-rate schedule driven by the elapsed fraction of it. The checkpoint is written into a
   temporary sibling folder and moved into place, so a crash never leaves a half-written folder.

    >>> report = train_organism(out=default_organism_dir(), minutes=10)   # doctest: +SKIP
    >>> print_report(report)                                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ar2mdm.common.env import cache_dir
from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import OWNER_FILE, claim_output, owner_record, write_folder_atomically
from ar2mdm.tasks import Example, Task
from ar2mdm.tasks.evaluate import LD_GAP_TARGET
from conversion.loop import Clock, StepOutput, fit
from conversion.moe import RouterLogits
from conversion.organism_data import (  # noqa: F401  (the organism's data, importable from here too)
    EVAL_EXAMPLES,
    HOLDOUT_PROMPTS,
    TASK_NAMES,
    TASK_OPTIONS,
    Batch,
    MixtureStream,
    build_tasks,
    build_tokenizer,
    eval_examples,
    example_texts,
    held_out_sets,
    is_organism,
    organism_tokenizer,
    prompt_key,
    task_corpus,
    task_examples,
)
from conversion.organism_eval import evaluate, evaluate_checkpoint, ioi_logit_diff, ld_gaps  # noqa: F401
from conversion.organism_model import OrganismConfig, build_model  # noqa: F401  (importable from here too)

TARGETS: dict[str, float] = {"ioi": 0.95, "greater_than": 0.95, "induction": 0.95, "countdown": 0.60}


ORGANISM_COMMAND = "organism train"

# The version of the organism's training data: bumped whenever a task generator or the training
# stream changes what an organism learns (2: Countdown's first-token corruption, Greater-Than's
# x09 training years, no <eos> after induction answers, packed rows). A cached organism of an
# older version, or of another architecture, is out of date (`outdated`).
DATA_VERSION = 2
# OrganismConfig fields that shape what an organism is (not how long or how fast it trained)
_SHAPING = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_mlp",
    "max_positions",
    "mixture",
    "answer_weight",
    "n_experts",
    "top_k",
)


def default_organism_dir() -> Path:
    """Where the toolkit looks for the organism: `cache_dir()/models/organism`."""
    return cache_dir() / "models" / "organism"


@dataclass
class CurvePoint:
    """Training loss (weighted, mean over the last logging window) at a step."""

    step: int
    loss: float
    elapsed: float
    lr: float


@dataclass
class OrganismReport:
    """What a training run produced.

    accuracy: held-out greedy accuracy per task (fraction of `eval_examples[task]` solved).
    ioi_logit_diff: mean logit(IO) - logit(S) at the answer position over the IOI eval set.
    ld_gap: per task, the mean clean minus the mean corrupted logit difference (correct vs
    counterfactual first answer tokens, `ar2mdm.tasks.evaluate.logit_metrics`) over its eval set: the
    effect circuit discovery attributes; `LD_GAP_TARGET` is the least a task should show.
    curve: training loss over steps; evals: periodic held-out accuracies {"step", task: acc}.
    tokens_seen: non-pad tokens trained on. train_seconds excludes evaluation; wall_seconds is
    the whole call. targets: the accuracy each target task should reach, met: whether it did.
    """

    out: str
    seed: int
    steps: int
    tokens_seen: int
    train_seconds: float
    wall_seconds: float
    steps_per_second: float
    accuracy: dict[str, float]
    eval_examples: dict[str, int]
    ioi_logit_diff: float
    curve: list[CurvePoint]
    evals: list[dict[str, float]]
    config: dict[str, Any]
    task_options: dict[str, dict[str, Any]]
    mask_token_id: int
    vocab_size: int
    n_parameters: int
    targets: dict[str, float] = field(default_factory=lambda: dict(TARGETS))
    data_seed: int | None = None  # the tokenizer's and held-out sets' seed when it is not `seed`
    ld_gap: dict[str, float] = field(default_factory=dict)
    data_version: int = DATA_VERSION

    @property
    def met(self) -> dict[str, bool]:
        met = {t: self.accuracy.get(t, 0.0) >= v for t, v in self.targets.items()}
        met.update({f"{t}_ld_gap": gap >= LD_GAP_TARGET for t, gap in self.ld_gap.items()})
        return met

    def to_json(self) -> str:
        data = asdict(self)
        data["met"] = self.met
        return json.dumps(data, indent=2)


# --- model ----------------------------------------------------------------------------------------


# --- data -----------------------------------------------------------------------------------------


def weighted_lm_loss(
    logits: Float[Tensor, "batch pos vocab"], input_ids: Int[Tensor, "batch pos"], weights: Float[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """sum_i w_i * CE(logits[i-1], token_i) / sum_i w_i, over target positions i >= 1."""
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1), reduction="none"
    )
    w = weights[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum()


# --- evaluation -----------------------------------------------------------------------------------


# --- training -------------------------------------------------------------------------------------


def lr_factor(progress: float, warmup: float, min_ratio: float) -> float:
    """Learning-rate multiplier at `progress` in [0, 1]: linear warmup, then cosine to min_ratio.

    >>> lr_factor(0.0, 0.1, 0.0), lr_factor(0.1, 0.1, 0.0), round(lr_factor(1.0, 0.1, 0.05), 6)
    (0.0, 1.0, 0.05)
    """
    if warmup > 0 and progress < warmup:
        return progress / warmup
    p = min(1.0, (progress - warmup) / max(1e-12, 1.0 - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def train_organism(
    out: str | Path | None = None,
    seed: int = 0,
    minutes: float = 10.0,
    steps: int | None = None,
    config: OrganismConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    data_seed: int | None = None,
) -> OrganismReport:
    """Train the organism from scratch, evaluate it on held-out examples, save it to `out`.

    seed: initialisation and training stream. data_seed: the tokenizer and the held-out sets
    (default: `seed`). A *seed twin* of an organism (the seed floor of `analyses.compare`) keeps
    its data_seed and changes its seed: same vocabulary and held-out prompts, another model.

    out: the HF folder to write (default `default_organism_dir()`), claimed for the run
    (`ar2mdm.common.outputs.claim_output`: locked, and refused if it holds anything but an organism);
    an organism already there is replaced (atomically, at the end) only with `overwrite`.
    steps: train exactly this many steps (reproducible); otherwise train for `minutes`.
    Returns the report, also written to `out/report.json`.
    """
    wall_start = time.perf_counter()
    cfg = config or OrganismConfig()
    if steps is not None and steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}.")
    if steps is None and not minutes > 0:
        raise UserError(f"minutes must be > 0, got {minutes}.")
    unknown = sorted(set(cfg.mixture) - set(TASK_NAMES))
    if unknown:
        raise UserError(f"unknown task(s) {unknown} in the mixture; the tasks are {', '.join(TASK_NAMES)}.")
    out = Path(out).expanduser() if out is not None else default_organism_dir()
    with claim_output(out, ORGANISM_COMMAND, recognise=_is_organism_folder) as claim:
        if claim.previous is not None and not overwrite:
            raise UserError(
                f"{out} already holds a trained organism; pass --overwrite (overwrite=True) to replace it, "
                "or choose another --out."
            )
        data_seed = seed if data_seed is None else data_seed
        return _train(out, cfg, seed, minutes, steps, progress, wall_start, data_seed, keep=claim.foreign)


def outdated(folder: str | Path, config: OrganismConfig | None = None) -> str | None:
    """Why the organism in `folder` differs from what today's code would train with `config`
    (default: the defaults), or None when it does not: its data version (`DATA_VERSION`) or a
    shaping option (architecture, mixture, answer weight) differs. Steps, seed, threads and
    evaluation settings do not count."""
    try:
        report = json.loads((Path(folder) / "report.json").read_text())
    except (OSError, ValueError):
        return "it has no readable report.json"
    version = report.get("data_version", 1)
    if version != DATA_VERSION:
        return f"it was trained on data version {version}, today's is {DATA_VERSION}"
    want = asdict(config or OrganismConfig())
    have = report.get("config", {})
    # a key an older report lacks had the value today's default has (n_experts: dense organisms)
    differ = [k for k in _SHAPING if have.get(k, asdict(OrganismConfig())[k]) != want[k]]
    return f"its {', '.join(differ)} differ from today's defaults" if differ else None


def _is_organism_folder(folder: Path) -> bool:
    """An organism folder written before owner records existed (its report names its task options)."""
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "task_options" in report and (folder / "config.json").is_file()


def _train(
    out: Path,
    cfg: OrganismConfig,
    seed: int,
    minutes: float,
    steps: int | None,
    progress: bool,
    wall_start: float,
    data_seed: int,
    *,
    keep: frozenset[str] = frozenset(),
) -> OrganismReport:
    """The training run of `train_organism`, into the claimed folder `out`, through the one
    training loop (`conversion.loop.fit`). keep: entries of `out` ar2mdm did not write, carried over."""
    torch.set_num_threads(cfg.threads)
    tokenizer = organism_tokenizer(cfg.tokenizer_examples, data_seed)
    tasks = build_tasks(tokenizer)
    eval_sets = held_out_sets(tasks, cfg.eval_examples, data_seed)
    exclude = {name: {prompt_key(ex) for ex in exs} for name, exs in eval_sets.items() if name in HOLDOUT_PROMPTS}
    model = build_model(cfg, tokenizer, seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    run = _OrganismRun(
        cfg,
        model,
        tokenizer,
        tasks,
        eval_sets,
        iter(MixtureStream(build_tasks(tokenizer, training=True), tokenizer, cfg, seed, exclude)),
        steps=steps,
        minutes=minutes,
        progress=progress,
    )
    step = fit(run, opt, model.parameters, steps=steps, clip=cfg.grad_clip)
    run.finish(step)

    accuracy = evaluate(model, tokenizer, tasks, eval_sets)
    logit_diff = ioi_logit_diff(model, tokenizer, eval_sets["ioi"]) if "ioi" in eval_sets else float("nan")
    gaps = ld_gaps(model, tokenizer, eval_sets)
    train_time = run.clock.train_seconds
    report = OrganismReport(
        out=str(out),
        seed=seed,
        data_seed=data_seed if data_seed != seed else None,
        steps=step,
        tokens_seen=run.tokens,
        train_seconds=round(train_time, 2),
        wall_seconds=0.0,
        steps_per_second=round(step / max(train_time, 1e-9), 3),
        accuracy=accuracy,
        eval_examples={name: len(exs) for name, exs in eval_sets.items()},
        ioi_logit_diff=logit_diff,
        curve=run.curve,
        evals=run.evals,
        config=asdict(cfg),
        task_options=TASK_OPTIONS,
        mask_token_id=int(tokenizer.mask_token_id),
        vocab_size=len(tokenizer),
        n_parameters=sum(p.numel() for p in model.parameters()),
        ld_gap=gaps,
    )
    report.wall_seconds = round(time.perf_counter() - wall_start, 2)
    save_checkpoint(
        out, model, tokenizer, {"report.json": report.to_json(), OWNER_FILE: owner_record(ORGANISM_COMMAND)}, keep=keep
    )
    return report


class _OrganismRun:
    """The organism's training as a `conversion.loop.Trainer`: weighted next-token loss on the
    mixture stream, warmup + cosine over the run (its steps, or the elapsed share of its time
    budget), a loss curve every 25 steps and cheap held-out evaluations every `eval_every`."""

    def __init__(
        self,
        cfg: OrganismConfig,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerFast,
        tasks: Mapping[str, Task],
        eval_sets: Mapping[str, Sequence[Example]],
        stream: Iterator[Batch],
        *,
        steps: int | None,
        minutes: float,
        progress: bool,
    ) -> None:
        self.cfg, self.model, self.tokenizer, self.tasks, self.eval_sets, self.stream = (
            cfg,
            model,
            tokenizer,
            tasks,
            eval_sets,
            stream,
        )
        self.steps = steps
        self.budget = None if steps is not None else 60.0 * minutes
        self.curve: list[CurvePoint] = []
        self.evals: list[dict[str, float]] = []
        self.window: list[float] = []
        self.tokens, self.last_lr = 0, cfg.lr
        self.clock = Clock()
        total = steps if steps is not None else round(self.budget)
        self.bar = tqdm(total=total, disable=not progress, unit="step" if steps else "s")
        self.routers = RouterLogits(model) if cfg.n_experts else None

    def lr(self, step: int, clock: Clock) -> float:
        self.clock = clock
        progress = step / self.steps if self.steps is not None else clock.train_seconds / self.budget
        return self.cfg.lr * lr_factor(progress, self.cfg.warmup, self.cfg.min_lr_ratio)

    def gradients(self, step: int) -> StepOutput:
        batch = next(self.stream)
        self.model.train()
        with self.routers or nullcontext():
            logits = self.model(**batch.model_inputs()).logits
        loss = weighted_lm_loss(logits, batch.input_ids, batch.weights)
        if self.routers is not None:  # an MoE organism: the Switch load-balancing loss
            mask = batch.model_inputs().get("attention_mask")
            loss = loss + self.cfg.aux_loss * self.routers.loss(mask if mask is not None and mask.dim() == 2 else None)
        loss.backward()
        return StepOutput(loss=float(loss.detach()), tokens=batch.n_tokens)

    def diverged(self, what: str, value: float, step: int) -> Exception:
        return UserError(
            f"organism training diverged: the {what} is {value} at step {step + 1}; lower OrganismConfig.lr."
        )

    def after_step(self, done: int, out: StepOutput, lr: float, grad_norm: float, clock: Clock) -> bool:
        self.tokens += out.tokens
        self.window.append(out.loss)
        self.last_lr = lr
        self.bar.update(1 if self.steps is not None else min(int(clock.train_seconds), round(self.budget)) - self.bar.n)
        if done % 25 == 0 or done == self.steps:
            self.curve.append(CurvePoint(done, sum(self.window) / len(self.window), round(clock.train_seconds, 2), lr))
            self.bar.set_postfix(loss=f"{self.curve[-1].loss:.3f}")
            self.window = []
        if self.cfg.eval_every and done % self.cfg.eval_every == 0:
            accs = evaluate(self.model, self.tokenizer, self.tasks, self.eval_sets, self.cfg.periodic_examples)
            self.evals.append({"step": done, "elapsed": round(clock.train_seconds, 2), **accs})
            self.bar.write(
                f"step {done} ({clock.train_seconds:.0f} s, loss {out.loss:.3f}): "
                + "  ".join(f"{k} {v:.2f}" for k, v in accs.items())
            )
        return self.budget is not None and clock.train_seconds >= self.budget

    def finish(self, step: int) -> None:
        """Close the progress bar and the last (partial) logging window."""
        self.bar.close()
        if self.window:
            self.curve.append(
                CurvePoint(step, sum(self.window) / len(self.window), round(self.clock.train_seconds, 2), self.last_lr)
            )


def save_checkpoint(
    out: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    files: Mapping[str, str] | None = None,
    *,
    keep: Iterable[str] = (),
) -> Path:
    """Save model (safetensors) + tokenizer (+ extra text `files`) as an HF folder, atomically.

    Everything is written into a temporary sibling folder first and then moved to `out`, so `out`
    is always either the previous complete checkpoint or the new complete one. keep: entries of
    an existing `out` that ar2mdm did not write (a user's notes), carried into the new folder.
    """
    out = Path(out)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        for name, text in (files or {}).items():
            (folder / name).write_text(text)

    write_folder_atomically(out, write, keep=keep)
    return out


def print_report(report: OrganismReport) -> None:
    """Print the held-out accuracies and the run's numbers as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model organism -> {report.out}")
    table.add_column("task")
    table.add_column("held-out accuracy", justify="right")
    table.add_column("n", justify="right")
    table.add_column("target", justify="right")
    table.add_column(f"LD gap clean - corrupt (>= {LD_GAP_TARGET:g})", justify="right")
    for name, acc in report.accuracy.items():
        target = report.targets.get(name)
        mark = "" if target is None else (" ok" if acc >= target else " MISSED")
        gap = report.ld_gap.get(name)
        gap_text = "" if gap is None else f"{gap:.2f}" + (" ok" if gap >= LD_GAP_TARGET else " SMALL")
        table.add_row(
            name,
            f"{acc:.3f}",
            str(report.eval_examples[name]),
            "" if target is None else f">= {target:.2f}{mark}",
            gap_text,
        )
    console = Console()
    console.print(table)
    console.print(
        f"IOI logit diff {report.ioi_logit_diff:.2f} | {report.steps} steps, {report.tokens_seen:,} tokens, "
        f"{report.train_seconds:.0f} s training ({report.steps_per_second:.2f} steps/s), "
        f"{report.wall_seconds:.0f} s wall | seed {report.seed} | {report.n_parameters:,} parameters, "
        f"vocab {report.vocab_size}, <mask> id {report.mask_token_id}"
    )
