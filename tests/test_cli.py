"""The `ar2mdm` command line: help texts, config files, and clean errors for bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from analyses.app.cli import app
from ar2mdm.common.errors import UserError
from conversion.config import merge_options, read_config_file
from conversion.train import TrainConfig

runner = CliRunner()


@pytest.mark.parametrize(
    "args", [["--help"], ["convert", "--help"], ["organism", "train", "--help"], ["setup", "--help"]]
)
def test_help_texts(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_convert_help_documents_core_options():
    out = runner.invoke(app, ["convert", "--help"], terminal_width=200).output
    for flag in (
        "--model",
        "--data",
        "--out",
        "--steps",
        "--seq-len",
        "--batch-size",
        "--lr",
        "--seed",
        "--config",
        "--resume",
    ):
        assert flag in out


def test_config_file_layers(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: organism\ndata: sotu\nout: x\nsteps: 7\nseq-len: 64\n")
    cfg = merge_options(TrainConfig, read_config_file(cfg_file), {"steps": 9, "lr": None})
    assert (cfg.model, cfg.steps, cfg.seq_len, cfg.lr) == ("organism", 9, 64, TrainConfig.lr)
    toml = tmp_path / "run.toml"
    toml.write_text('model = "m"\ndata = "d"\nout = "o"\nbatch_size = 4\n')
    assert merge_options(TrainConfig, read_config_file(toml), {}).batch_size == 4


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nstepz: 3\n")
    with pytest.raises(UserError, match="stepz"):
        merge_options(TrainConfig, read_config_file(bad), {})
    with pytest.raises(UserError, match="--out"):
        merge_options(TrainConfig, {"model": "m", "data": "d"}, {})
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "nope.yaml")
    other = tmp_path / "c.json"
    other.write_text("{}")
    with pytest.raises(UserError, match=".toml"):
        read_config_file(other)


def test_convert_bad_model_is_one_clean_error(tmp_path):
    result = runner.invoke(
        app, ["convert", "--model", str(tmp_path / "missing"), "--data", "sotu", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "Traceback" not in result.output


def test_cache_help_says_which_cache_is_exact_for_which_checkpoint():
    for command in ("sample", "eval"):
        text = " ".join(runner.invoke(app, [command, "--help"], terminal_width=200).output.replace("│", " ").split())
        assert "exact for block-diffusion checkpoints" in text, command
        assert "approximate for bidirectional MDMs" in text, command


def test_convert_help_documents_resume_overwrite_and_document_attention():
    text = " ".join(runner.invoke(app, ["convert", "--help"], terminal_width=200).output.replace("│", " ").split())
    for flag in ("--overwrite", "--document-attention", "--text-field"):
        assert flag in text
    assert "with no checkpoint there, start at step 0" in text
