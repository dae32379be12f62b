"""A training run as a picture: the curves of `train.jsonl` as one self-contained plotly HTML file.

`train` writes `train.html` beside `train.jsonl` at the end of every run; `training_figure` is
the same figure for notebooks.
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ar2mdm.common.errors import UserError
from ar2mdm.common.jsonl import read_records


def read_log(path: str | Path) -> list[dict]:
    """The JSON objects of a train.jsonl file, in order; a last line torn by a crash (or still
    being written) is left out, a damaged earlier line is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist; pass the train.jsonl of a conversion run.")
    remedy = "Delete that line (the log only records the curves), or convert again with --overwrite."
    return read_records(p, remedy=remedy).records


def training_figure(path: str | Path, title: str | None = None) -> go.Figure:
    """Loss (train and held-out), masked-token accuracy and tokens/s against step."""
    rows = read_log(path)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("weighted loss", "masked-token accuracy", "tokens/s"))
    steps = [r["step"] for r in train]
    fig.add_trace(go.Scatter(x=steps, y=[r["loss"] for r in train], name="train loss", mode="lines"), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["acc"] for r in train], name="train acc", mode="lines"), 1, 2)
    fig.add_trace(go.Scatter(x=steps, y=[r["tokens_per_s"] for r in train], name="tokens/s", mode="lines"), 1, 3)
    if evals:
        e_steps = [r["step"] for r in evals]
        fig.add_trace(
            go.Scatter(x=e_steps, y=[r["loss"] for r in evals], name="held-out loss", mode="lines+markers"), 1, 1
        )
        if all("acc" in r for r in evals):
            fig.add_trace(
                go.Scatter(x=e_steps, y=[r["acc"] for r in evals], name="held-out acc", mode="lines+markers"), 1, 2
            )
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title or str(path), height=380, width=1200)
    return fig


def write_training_report(out: str | Path) -> Path:
    """Write out/train.html from out/train.jsonl; return its path."""
    folder = Path(out)
    target = folder / "train.html"
    training_figure(folder / "train.jsonl", title=f"conversion run {folder}").write_html(target, include_plotlyjs=True)
    return target
