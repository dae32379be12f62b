"""One yes/no rule for every source of options (`ar2mdm.common.options.parse_bool`), and "no" never runs a
checkpoint's own code: a folder whose code writes a marker file when imported is loaded through
every entry point that takes trust_remote_code, with every spelling of no; the marker must never
appear. A positive control (yes) shows that the marker does appear when code runs, so the test can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_model, ship_marker_code

from ar2mdm.common.errors import UserError
from ar2mdm.common.options import parse_bool

NO = ("no", "No", "NO", "off", "OFF", "false", "False", "0", " no ", 0, False)
YES = ("yes", "Yes", "on", "true", "TRUE", "1", 1, True)
NOT_WORDS = ("maybe", "", "2", "nein", 2, 0.5, None)


@pytest.mark.parametrize("value", NO)
def test_every_no_is_false(value) -> None:
    assert parse_bool(value, "x") is False


@pytest.mark.parametrize("value", YES)
def test_every_yes_is_true(value) -> None:
    assert parse_bool(value, "x") is True


@pytest.mark.parametrize("value", NOT_WORDS)
def test_anything_else_is_an_error_naming_the_option_and_the_words(value) -> None:
    with pytest.raises(UserError, match=r"my_option must be a yes/no value \(true/yes/on/1 or false/no/off/0\)"):
        parse_bool(value, "my_option")


@pytest.fixture(scope="module")
def marker_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model folder whose config names code shipped in the folder (auto_map); importing that
    code writes `marker`."""
    root = tmp_path_factory.mktemp("remote")
    folder = build_tiny_model("llama", root / "model")
    marker = root / "code-ran.txt"
    ship_marker_code(folder, marker)
    return folder, marker


def _entry_points(folder: Path, tmp_path: Path):
    """(name, call(value)) for every library and file entry point that takes trust_remote_code."""
    from conversion.checkpoints import load_any, load_ar
    from conversion.config import TrainConfig, merge_options, read_config_file
    from conversion.hf_folder import load_hf_folder
    from probe import ProbedModel

    def config_file(value):
        cfg = tmp_path / "convert.toml"
        cfg.write_text(f"trust_remote_code = {json.dumps(value)}\n")
        options = merge_options(
            TrainConfig, read_config_file(cfg), {"model": str(folder), "data": "x", "out": str(tmp_path / "o")}
        )
        return load_ar(options.model, trust_remote_code=options.trust_remote_code)

    return (
        ("load_ar", lambda v: load_ar(folder, trust_remote_code=v)),
        ("load_any", lambda v: load_any(folder, trust_remote_code=v)),
        ("load_hf_folder", lambda v: load_hf_folder(folder, trust_remote_code=v)),
        ("ProbedModel.from_checkpoint", lambda v: ProbedModel.from_checkpoint(folder, trust_remote_code=v)),
        ("config file", config_file),
    )


@pytest.mark.parametrize("value", [v for v in NO if isinstance(v, str)])
def test_no_spelling_of_no_runs_the_checkpoints_code(
    value: str, marker_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, marker = marker_folder
    for name, call in _entry_points(folder, tmp_path):
        with pytest.raises(UserError, match="ships its own code"):
            call(value)
        assert not marker.exists(), f"{name} with trust_remote_code={value!r} ran the folder's code"


def test_a_non_word_is_refused_before_any_code_runs(marker_folder: tuple[Path, Path], tmp_path: Path) -> None:
    folder, marker = marker_folder
    for name, call in _entry_points(folder, tmp_path):
        with pytest.raises(UserError, match="trust_remote_code.*yes/no"):
            call("maybe")
        assert not marker.exists(), name


def test_yes_does_run_the_code(marker_folder: tuple[Path, Path], tmp_path: Path) -> None:
    """The positive control: the marker is written when the code is allowed to run."""
    from conversion.checkpoints import load_ar

    folder, marker = marker_folder
    with pytest.raises(Exception):  # noqa: B017 - the marker model is not a loadable LM; only its import matters
        load_ar(folder, trust_remote_code="yes")
    assert marker.read_text() == "ran"
    marker.unlink()


@pytest.mark.parametrize("value", NO)
def test_a_samplers_yes_no_option_given_as_a_word(value) -> None:
    """`build_sampler` (and so `--model_args stop_at_eos=no`) reads yes/no options by the one rule."""
    from ar2mdm.sampling import build_sampler

    assert build_sampler("threshold", stop_at_eos=value).stop_at_eos is False
    assert build_sampler("threshold", stop_at_eos="yes").stop_at_eos is True
    with pytest.raises(UserError, match="stop_at_eos must be a yes/no value"):
        build_sampler("threshold", stop_at_eos="maybe")


def test_library_loaders_take_the_clis_spellings(tmp_path: Path) -> None:
    """`dtype="bf16"`, `device="cpu"`, `trust_remote_code="no"`: what the CLI accepts, a library call
    accepts too (`ar2mdm.common.modeling.loading_options`), and the model comes back as asked."""
    import torch

    from conversion.checkpoints import load_any
    from probe import ProbedModel

    folder = build_tiny_model("llama", tmp_path / "ar")
    loaded = load_any(folder, dtype="bf16", device="cpu", trust_remote_code="no")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    pm = ProbedModel.from_checkpoint(folder, dtype="float16", device="cpu", backend="torch")
    assert next(pm.model.parameters()).dtype == torch.float16
