"""Every command's --help reads cleanly in an 80-column terminal and when piped: lines fit, no
emoji or markup accidents (rich once turned "block:B:" into an emoji), and the option texts wrap
into lines of several words rather than a column one or two words wide."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from analyses.app.cli import app

EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff]")


def _commands() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    found: list[tuple[str, ...]] = [()]

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            if name == "lm-eval":  # the harness's own command line: its --help is lm-eval's
                continue
            found.append((*prefix, name))
            if isinstance(command, click.Group):
                walk(command, (*prefix, name))

    walk(root, ())
    return found


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "ar2mdm")
def test_help_at_80_columns(command: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) > 3
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert not EMOJI.search(result.output), EMOJI.findall(result.output)
    assert "[/" not in result.output and "[bold" not in result.output
    # continuation lines of an option's text: two short lines in a row mean a too-narrow column
    text = [line.strip() for line in lines if line.startswith(" " * 20) and line.strip()]
    short = [len(line.split()) <= 2 and not line.endswith((".", ")", "]")) for line in text]
    pairs = [f"{a!r} / {b!r}" for a, b, s1, s2 in zip(text, text[1:], short, short[1:], strict=False) if s1 and s2]
    assert not pairs, pairs[:3]
