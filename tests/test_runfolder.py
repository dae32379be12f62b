"""Runs never lose work and never mix: the run folder's plan, kill -9 before the first checkpoint,
Ctrl-C, two runs on one --out, finished and diverged runs, unwritable folders.

Processes that must really die (kill -9, Ctrl-C) or run beside another are separate Python
processes; the commands that follow them go through the real CLI (`analyses.app.cli.app`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import WORDS, build_tiny_model
from error_cases import snapshot
from safetensors.torch import load_file
from typer.testing import CliRunner

from analyses.app.cli import INTERRUPTED, app
from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import LOCK_FILE, claim_output
from conversion.runfolder import plan_run
from conversion.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainConfig:
    """A tiny llama, a one-document corpus, and a 6-step config (no periodic checkpoints, the
    default) writing to tmp_path/run."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    model = build_tiny_model("llama", tmp_path / "ar")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(WORDS * 12))
    return TrainConfig(
        model=str(model),
        data=str(corpus),
        out=str(tmp_path / "run"),
        steps=6,
        seq_len=16,
        batch_size=2,
        lr=3e-3,
        held_out=0.0,
        seed=1,
    )


def cli_args(cfg: TrainConfig, *extra: str) -> list[str]:
    return [
        "convert",
        "--model",
        cfg.model,
        "--data",
        str(cfg.data),
        "--out",
        cfg.out,
        "--steps",
        str(cfg.steps),
        "--seq-len",
        str(cfg.seq_len),
        "--batch-size",
        str(cfg.batch_size),
        "--lr",
        str(cfg.lr),
        "--held-out",
        str(cfg.held_out),
        "--seed",
        str(cfg.seed),
        *extra,
    ]


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def assert_same_weights(a: str | Path, b: str | Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def in_process(script: str, *, cwd: Path) -> subprocess.Popen:
    """Start `script` (Python source) in a new process, from the repository's code."""
    path = cwd / "script.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=cwd,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_with_hook(cfg: TrainConfig, hook: str, *, cwd: Path, cli: list[str] | None = None) -> subprocess.Popen:
    """Run the conversion of `cfg` in a new process; `hook(done)` (Python source of a function
    body, `done` the steps finished) runs after every step. With `cli`, the run goes through the
    CLI with those arguments (the hook is patched into `conversion.train.train`)."""
    body = textwrap.indent(textwrap.dedent(hook), "    ")
    launch = (
        f"import conversion.train as T\n_train = T.train\n"
        f"T.train = lambda c, on_step=None: _train(c, on_step=hook)\n"
        f"from analyses.app.cli import app\nsys.argv = ['ar2mdm', *{cli!r}]\napp()\n"
        if cli
        else f"from conversion.train import TrainConfig, train\n"
        f"train(TrainConfig(**json.loads({json.dumps(json.dumps(asdict(cfg)))})), on_step=hook)\n"
    )
    return in_process(f"import json, os, signal, time\ndef hook(done):\n{body}\n{launch}", cwd=cwd)


# --- the plan -------------------------------------------------------------------------------------


def test_plan_for_every_folder_state(setup: TrainConfig, tmp_path: Path) -> None:
    out, options = Path(setup.out), setup.to_json()
    out.mkdir()

    def plan(**kw):
        return plan_run(
            out,
            options,
            has_run=kw.pop("has_run", True),
            steps=kw.pop("steps", 6),
            resume=kw.pop("resume", False),
            overwrite=kw.pop("overwrite", False),
        )

    assert plan(has_run=False).action == "fresh" and not plan(has_run=False).clear
    assert "nothing to resume" in plan(has_run=False, resume=True).note
    with pytest.raises(UserError, match="one of them"):
        plan(resume=True, overwrite=True)
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        plan()  # a run is there, no flag
    assert plan(overwrite=True).clear
    no_ckpt = plan(resume=True)  # a run killed before its first checkpoint
    assert no_ckpt.action == "fresh" and no_ckpt.clear and "no checkpoint" in no_ckpt.note


# --- processes that die ----------------------------------------------------------------------------


@pytest.mark.e2e
def test_kill_minus_9_before_the_first_checkpoint_then_resume_works(setup: TrainConfig, tmp_path: Path) -> None:
    """Default options (no periodic checkpoint), killed at step 3: a plain rerun says what to do;
    `--resume` starts at step 0 and gives exactly the uninterrupted run's model."""
    proc = run_with_hook(setup, "if done == 3:\n    os.kill(os.getpid(), signal.SIGKILL)", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    out = Path(setup.out)
    assert (out / "train.jsonl").is_file() and not (out / "checkpoint").exists()

    again = runner.invoke(app, cli_args(setup), terminal_width=400)
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    resumed = runner.invoke(app, cli_args(setup, "--resume"), terminal_width=400)
    assert resumed.exit_code == 0, resumed.output
    assert "no checkpoint" in resumed.output and "starting at step 0" in resumed.output
    straight = train(replace(setup, out=str(tmp_path / "straight")))
    assert_same_weights(out, straight.out)


@pytest.mark.e2e
def test_ctrl_c_keeps_a_checkpoint_says_how_to_resume_and_resumes_exactly(setup: TrainConfig, tmp_path: Path) -> None:
    proc = run_with_hook(
        setup, "if done == 3:\n    os.kill(os.getpid(), signal.SIGINT)", cwd=tmp_path, cli=cli_args(setup)
    )
    _, err = proc.communicate(timeout=300)
    message = " ".join(err.split())
    assert proc.returncode == INTERRUPTED == 130, err[-2000:]
    assert "interrupted" in message and "after step 3 of 6" in message and "Traceback" not in message
    assert f"resume with: ar2mdm {' '.join(cli_args(setup))} --resume" in message
    out = Path(setup.out)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3
    resumed = runner.invoke(app, cli_args(setup, "--resume"), terminal_width=400)
    assert resumed.exit_code == 0, resumed.output
    straight = train(replace(setup, out=str(tmp_path / "straight")))
    assert_same_weights(out, straight.out)


@pytest.mark.e2e
def test_two_runs_on_one_out_the_second_is_refused_and_the_first_is_intact(setup: TrainConfig, tmp_path: Path) -> None:
    """Run A holds --out (paused at step 2); run B on the same --out fails at once; A then
    finishes with its own model and a clean log."""
    go = tmp_path / "go"
    a = run_with_hook(
        setup,
        f"if done == 2:\n    open({str(tmp_path / 'paused')!r}, 'w').close()\n"
        f"    while not os.path.exists({str(go)!r}):\n        time.sleep(0.05)",
        cwd=tmp_path,
    )
    deadline = time.time() + 240
    while not (tmp_path / "paused").exists():
        assert a.poll() is None and time.time() < deadline, a.communicate()[1][-2000:]
        time.sleep(0.1)
    b = runner.invoke(app, cli_args(replace(setup, lr=1e-3)), terminal_width=400)
    assert b.exit_code == 2 and "in use by another ar2mdm run" in " ".join(b.output.split())
    with pytest.raises(UserError, match="in use"):
        train(replace(setup, resume=True))
    go.touch()
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err[-2000:]
    log = [json.loads(line) for line in (Path(setup.out) / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert_same_weights(setup.out, train(replace(setup, out=str(tmp_path / "alone"))).out)


# --- finished and failed runs ------------------------------------------------------------------------


def test_finished_run_resumed_is_nothing_to_do(setup: TrainConfig) -> None:
    train(setup)
    before = snapshot(Path(setup.out))
    again = runner.invoke(app, cli_args(setup, "--resume"), terminal_width=400)
    text = " ".join(again.output.split())
    assert again.exit_code == 0 and "nothing to do" in text and "nan" not in text and "final loss" in text
    assert snapshot(Path(setup.out)) == before
    more = runner.invoke(app, cli_args(replace(setup, steps=8), "--resume"), terminal_width=400)
    assert more.exit_code == 2 and "cannot be continued" in " ".join(more.output.split())
    assert snapshot(Path(setup.out)) == before


def test_diverged_run_starts_over_with_overwrite(setup: TrainConfig) -> None:
    bad = replace(setup, lr=1e30, clip=0.0)
    diverged = runner.invoke(app, cli_args(bad, "--clip", "0"), terminal_width=400)
    text = " ".join(diverged.output.split())
    assert diverged.exit_code == 2 and "diverged" in text and "--overwrite" in text
    fixed = runner.invoke(app, cli_args(setup, "--overwrite"), terminal_width=400)
    assert fixed.exit_code == 0, fixed.output
    assert "removing the earlier run" in fixed.output


def test_out_on_an_existing_model_folder_leaves_it_byte_identical(setup: TrainConfig) -> None:
    folder = Path(setup.model)
    before = snapshot(folder)
    for args in (
        cli_args(replace(setup, out=str(folder))),
        ["organism", "train", "--out", str(folder), "--steps", "1"],
        cli_args(replace(setup, out=str(folder)), "--overwrite"),
    ):
        res = runner.invoke(app, args, terminal_width=400)
        assert res.exit_code == 2 and "not empty" in res.output
        assert snapshot(folder) == before
    assert not (folder / LOCK_FILE).exists()


def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """chmod 555: refused with a clear message. As root (who may write anyway) the check runs as
    an unprivileged user in a child process."""
    base = Path(tempfile.mkdtemp(prefix="ar2mdm-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        # imports first (as whoever we are), then, as root, become an unprivileged user
        code = (
            f"import os, sys; sys.path.insert(0, {str(REPO)!r})\nfrom ar2mdm.common.outputs import claim_output\n"
            f"from ar2mdm.common.errors import UserError\nif os.geteuid() == 0:\n    os.setuid(65534)\n"
            f"try:\n    claim_output({str(ro / 'run')!r}, 'convert').__enter__()\n"
            f"except UserError as err:\n    print(err)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=base)
        assert "cannot be created: permission denied" in result.stdout, result.stderr[-2000:]
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_claim_of_a_new_folder_is_removed_when_the_run_fails_early(tmp_path: Path) -> None:
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), claim_output(new, "eval"):
        raise RuntimeError("failed before writing anything")
    assert not new.exists()
    with claim_output(new, "eval") as claim:
        claim.mark()
        (new / "results.json").write_text("{}")
    assert (new / "results.json").is_file()
