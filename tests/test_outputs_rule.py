"""One rule for every path ar2mdm writes (`ar2mdm.common.outputs`), through every command that writes:

- `--overwrite` removes only what ar2mdm wrote in a run folder (its owner record lists it): a user's
  notes left in a `convert`, `eval` or organism folder stay byte-identical;
- a single-file output (`sample --trace`) replaces a file only when ar2mdm wrote it, or with
  --overwrite; never a link, device node, or a file in a checkpoint or run folder (the refusals are
  cases of tests/error_cases.py; here the files it may replace).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import WORDS, build_tiny_model
from error_cases import snapshot
from typer.testing import CliRunner

from analyses.app.cli import TRACE_SIGNATURE, app
from ar2mdm.common.errors import UserError
from ar2mdm.common.outputs import OWNER_FILE, claim_output, owned_contents, write_folder_atomically
from conversion.mdm import add_mask_token, save_mdm
from conversion.train import TrainConfig, train

runner = CliRunner()
NOTES = b"my notes, not ar2mdm's\n"


def _invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], terminal_width=400)
    return result, " ".join(result.output.split())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ar2mdm.common.metadata import ModelMeta
    from conversion.checkpoints import load_ar

    root = tmp_path_factory.mktemp("outputs")
    ar = build_tiny_model("llama", root / "ar")
    loaded = load_ar(ar)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    meta = ModelMeta(kind="mdm", source=str(ar), source_hash=loaded.meta.source_hash, family="llama", mask_id=mask_id)
    mdm = save_mdm(loaded.model, loaded.tokenizer, meta, root / "mdm")
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(WORDS * 12))
    return {"ar": ar, "mdm": mdm, "corpus": corpus}


def test_trace_replaces_its_own_file_and_a_users_file_only_with_overwrite(models, tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    sample = ("sample", "--model", models["mdm"], "--prompt", "When Mary", "--max-new-tokens", "2", "--trace")
    result, text = _invoke(*sample, trace)
    assert result.exit_code == 0, text
    first = json.loads(trace.read_text())
    assert first["written_by"] == "ar2mdm sample --trace" and trace.read_text().startswith(TRACE_SIGNATURE)
    assert len(first["steps"]) >= 1
    result, text = _invoke(*sample, trace, "--seed", "3")  # its own file: replaced without --overwrite
    assert result.exit_code == 0, text

    users = tmp_path / "users.json"
    users.write_bytes(NOTES)
    result, text = _invoke(*sample, users)
    assert result.exit_code == 2 and "--overwrite" in text
    assert users.read_bytes() == NOTES
    result, text = _invoke(*sample, users, "--overwrite")
    assert result.exit_code == 0, text
    assert json.loads(users.read_text())["written_by"] == "ar2mdm sample --trace"


def test_eval_overwrite_keeps_the_users_files(models, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = (
        "eval",
        "--model",
        models["mdm"],
        "--out",
        out,
        "--tasks",
        "ioi",
        "--n",
        "2",
        "--samplers",
        "low-confidence",
    )
    result, text = _invoke(*args)
    assert result.exit_code == 0, text
    record = json.loads((out / OWNER_FILE).read_text())
    assert record["complete"] and "results.json" in record["written"] and record["foreign"] == []
    (out / "notes.txt").write_bytes(NOTES)
    (out / "mine").mkdir()
    (out / "mine" / "a.txt").write_bytes(NOTES)
    before = {k: v for k, v in snapshot(out).items() if k.startswith(("notes", "mine"))}
    result, text = _invoke(*args, "--overwrite")
    assert result.exit_code == 0, text
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items())
    assert (out / "results.json").is_file()
    assert sorted(json.loads((out / OWNER_FILE).read_text())["foreign"]) == ["mine", "notes.txt"]
    assert {p.name for p in owned_contents(out)}.isdisjoint({"mine", "notes.txt"})


def test_convert_overwrite_keeps_the_users_files(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(
        model=str(models["ar"]),
        data=str(models["corpus"]),
        out=str(tmp_path / "run"),
        steps=2,
        seq_len=16,
        batch_size=2,
        held_out=0.0,
        save_every=1,
    )
    train(cfg)
    notes = Path(cfg.out) / "notes.txt"
    notes.write_bytes(NOTES)
    train(replace(cfg, overwrite=True))
    assert notes.read_bytes() == NOTES
    assert (Path(cfg.out) / "train.jsonl").is_file() and "notes.txt" not in {p.name for p in owned_contents(cfg.out)}


def test_a_run_killed_before_it_ended_counts_its_new_files_as_its_own(tmp_path: Path) -> None:
    """A run that dies (kill -9) leaves an incomplete owner record: what appeared after it was marked
    is the run's, what was foreign then stays foreign."""
    out = tmp_path / "out"
    with claim_output(out, "convert") as claim:
        claim.mark()
        (out / "log.jsonl").write_text("{}\n")
    (out / "notes.txt").write_bytes(NOTES)
    with claim_output(out, "convert") as claim:
        assert claim.foreign == {"notes.txt"}
        claim.mark()  # record: incomplete, foreign notes.txt
        (out / "checkpoint").mkdir()  # the run "dies" with this written, the record not completed
        record = json.loads((out / OWNER_FILE).read_text())
    assert not record["complete"]
    (out / OWNER_FILE).write_text(json.dumps(record))  # as kill -9 would have left it
    assert {p.name for p in owned_contents(out)} == {"log.jsonl", "checkpoint"}
    with claim_output(out, "convert") as claim:
        kept = claim.clear()
    assert [p.name for p in kept] == ["notes.txt"] and (out / "notes.txt").read_bytes() == NOTES
    assert not (out / "checkpoint").exists() and not (out / "log.jsonl").exists()


def test_a_folder_holding_only_the_users_files_is_no_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with claim_output(out, "eval") as claim:
        claim.mark()
        (out / "results.json").write_text("{}")
    (out / "notes.txt").write_bytes(NOTES)
    (out / "results.json").unlink()
    with claim_output(out, "eval") as claim:
        assert claim.previous is None


def test_atomic_folder_swap_carries_the_users_files(tmp_path: Path) -> None:
    out = tmp_path / "model"
    write_folder_atomically(out, lambda d: (d / "weights.bin").write_text("old"))
    (out / "notes.txt").write_bytes(NOTES)
    write_folder_atomically(out, lambda d: (d / "weights.bin").write_text("new"), keep=["notes.txt"])
    assert (out / "weights.bin").read_text() == "new" and (out / "notes.txt").read_bytes() == NOTES


@pytest.mark.parametrize("value", ["", "."])
def test_empty_or_dot_out_is_refused_by_the_claim(value: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="current folder"):
        with claim_output(value, "eval"):
            pass


def test_a_device_node_stays_a_device_node(models) -> None:
    """`--trace /dev/full --overwrite` once left a regular JSON file in place of the device."""
    import stat

    before = Path("/dev/full").stat()
    result, text = _invoke(
        "sample", "--model", models["mdm"], "--prompt", "When", "--trace", "/dev/full", "--overwrite"
    )
    assert result.exit_code == 2 and "not a regular file" in text
    after = Path("/dev/full").stat()
    assert stat.S_ISCHR(after.st_mode) and (after.st_rdev, after.st_ino) == (before.st_rdev, before.st_ino)
