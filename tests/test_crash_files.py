"""Every file ar2mdm appends to or reads back on resume survives a crash at any byte of a write.

Each file is produced by a real tiny run (a 2-layer llama converted for a few steps at seq-len 16,
a 1-step organism, real stages), then cut short at several byte offsets (mid last line, just
after a newline, mid-file, empty) or damaged in the middle, and the next run either works (the
log is whole lines afterwards) or raises a UserError that names the file and says what to do --
never another exception. The rule (`ar2mdm.common.jsonl`): appended logs drop a torn last line and are
rewritten as whole lines before anything is appended again; files rewritten whole are written
atomically, and a damaged one is a UserError (or, for caches and stage records, recomputed).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import WORDS, build_tiny_model
from typer.testing import CliRunner

from analyses.app.cli import app
from analyses.app.stages import Stages, stage_output
from ar2mdm.common.errors import UserError
from ar2mdm.common.jsonl import append_record, read_json, read_records
from ar2mdm.common.metadata import META_FILE, ModelMeta
from ar2mdm.common.outputs import OWNER_FILE
from conversion.runfolder import LOG_FILE, RunLog, read_log
from conversion.train import TrainConfig, train

runner = CliRunner()


class Crash(Exception):
    """Stands for kill -9 at a step boundary (the run stops; its folder stays as it is)."""


def crash_at(step: int):
    def hook(done: int) -> None:
        if done == step:
            raise Crash(f"crash after step {done}")

    return hook


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Pristine run folders: "crashed" (6 steps asked, killed after step 3: checkpoint at step
    2, log of steps 1-3, snapshots 0 and 2, no MDM) and "finished" (the same run resumed to 4
    steps: checkpoint and MDM at step 4), with the config that made them."""
    base = tmp_path_factory.mktemp("crash")
    mp = pytest.MonkeyPatch()
    mp.setenv("AR2MDM_CACHE", str(base / "cache"))
    model = build_tiny_model("llama", base / "ar")
    corpus = base / "corpus.txt"
    corpus.write_text(" ".join(WORDS * 12))
    cfg = TrainConfig(
        model=str(model),
        data=str(corpus),
        out=str(base / "crashed"),
        steps=6,
        seq_len=16,
        batch_size=2,
        lr=3e-3,
        held_out=0.0,
        seed=1,
        save_every=2,
        snapshot_every=2,
    )
    with pytest.raises(Crash):
        train(cfg, on_step=crash_at(3))
    shutil.copytree(base / "crashed", base / "finished")
    train(replace(cfg, out=str(base / "finished"), steps=4, resume=True))
    yield {"cfg": cfg, "crashed": base / "crashed", "finished": base / "finished", "cache": base / "cache"}
    mp.undo()


def copy_of(runs: dict, which: str, tmp_path: Path) -> tuple[Path, TrainConfig]:
    """A copy of a pristine run folder, and its config with --resume (steps as it was asked)."""
    out = tmp_path / which
    shutil.copytree(runs[which], out)
    cfg = runs["cfg"]
    return out, replace(cfg, out=str(out), resume=True, steps=6 if which == "crashed" else 4)


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as fh:
        fh.truncate(size)


def offsets(path: Path) -> list[int]:
    """Empty, one byte, mid-file, just after the first and the last-but-one newline, mid last
    line, and one byte short of the end."""
    data = path.read_bytes()
    newlines = [i + 1 for i, b in enumerate(data) if b == ord("\n") and i + 1 < len(data)]
    last_start = newlines[-1] if newlines else 0
    candidates = {0, 1, len(data) // 2, *newlines[:1], last_start, (last_start + len(data)) // 2, len(data) - 1}
    return sorted(n for n in candidates if 0 <= n < len(data))


def whole_lines(path: Path) -> list[dict]:
    """The file's records, asserting it is whole lines of JSON objects."""
    text = path.read_text()
    assert text == "" or text.endswith("\n"), text[-200:]
    records = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(r, dict) for r in records)
    return records


def cli_args(cfg: TrainConfig, *extra: str) -> list[str]:
    options = ("model", "data", "out", "steps", "seq_len", "batch_size", "lr", "held_out", "seed", "save_every")
    args = ["convert"]
    for name in (*options, "snapshot_every"):
        args += [f"--{name.replace('_', '-')}", str(asdict(cfg)[name])]
    return [*args, *extra]


def assert_user_error(cfg: TrainConfig, *needles: str) -> str:
    """train(cfg) raises a UserError holding every needle; the CLI exits 2 without a traceback."""
    with pytest.raises(UserError) as info:
        train(cfg)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    res = runner.invoke(app, cli_args(cfg, "--resume"), terminal_width=400)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    return message


# --- the log: appended, torn at any byte --------------------------------------------------------


def test_the_log_cut_at_every_byte_reads_and_resumes_as_whole_lines(runs: dict, tmp_path: Path) -> None:
    """Every prefix of a real train.jsonl: the reader drops the torn last line, the resume's
    RunLog rewrites the file as the whole records up to the checkpoint, and appending after
    that gives whole lines."""
    data = (runs["crashed"] / LOG_FILE).read_bytes()
    assert [r["step"] for r in whole_lines(runs["crashed"] / LOG_FILE)] == [1, 2, 3]
    folder = tmp_path / "log"
    folder.mkdir()
    path = folder / LOG_FILE
    extra = {"kind": "train", "step": 3, "loss": 1.0}
    for n in range(len(data) + 1):
        prefix = data[:n]
        whole = [json.loads(line) for line in prefix.split(b"\n")[:-1]]
        path.write_bytes(prefix)
        assert json.dumps(read_log(folder)) == json.dumps(whole)  # read only: the file stays as it is
        assert path.read_bytes() == prefix
        log = RunLog(path, keep_until=2, enabled=True)
        kept = [r for r in whole if r["step"] <= 2]
        assert json.dumps(log.history) == json.dumps(kept)
        assert (log.torn is None) == (n == 0 or prefix.endswith(b"\n"))
        assert json.dumps(whole_lines(path)) == json.dumps(kept)
        log.write(extra)
        assert json.dumps(whole_lines(path)) == json.dumps([*kept, extra])


def test_a_crashed_run_with_its_log_cut_anywhere_resumes(runs: dict, tmp_path: Path) -> None:
    log = runs["crashed"] / LOG_FILE
    original = whole_lines(log)
    for n in offsets(log):
        out, cfg = copy_of(runs, "crashed", tmp_path / str(n))
        truncate(out / LOG_FILE, n)
        result = train(cfg)
        assert result.steps == 6
        records = whole_lines(out / LOG_FILE)
        steps = [r["step"] for r in records]
        assert steps[-4:] == [3, 4, 5, 6] and steps == sorted(set(steps))  # 3 again: the checkpoint was at 2
        kept = [r for r in records if r["step"] <= 2]
        assert json.dumps(kept) == json.dumps(original[: len(kept)])


def test_a_finished_run_with_a_torn_log_is_nothing_to_do(runs: dict, tmp_path: Path) -> None:
    out, cfg = copy_of(runs, "finished", tmp_path)
    log = out / LOG_FILE
    size = log.stat().st_size
    truncate(log, size - 7)  # mid last line (step 4's record)
    result = train(cfg)
    assert result.steps == 4 and [r["step"] for r in result.history] == [1, 2, 3]
    assert result.final_loss == result.history[-1]["loss"]
    assert log.stat().st_size == size - 7  # "done" touches nothing


def test_a_damaged_line_in_the_middle_of_the_log_names_the_line(runs: dict, tmp_path: Path) -> None:
    out, cfg = copy_of(runs, "crashed", tmp_path)
    lines = (out / LOG_FILE).read_text().splitlines(keepends=True)
    (out / LOG_FILE).write_text(lines[0] + lines[1][:20] + "\n" + lines[2])
    message = assert_user_error(cfg, f"{out / LOG_FILE}, line 2, is damaged", "Delete that line", "--overwrite")
    assert "not valid JSON" in message
    with pytest.raises(UserError, match="line 2, is damaged"):
        read_log(out)
    (out / LOG_FILE).write_text(lines[0] + '{"kind": "train"}\n' + lines[2])  # JSON, but no step
    assert_user_error(cfg, "line 2, is damaged (no integer step", "--overwrite")
    (out / LOG_FILE).write_text(lines[0] + lines[2])  # deleting the line, as the message says
    assert train(cfg).steps == 6


def test_append_record_writes_whole_lines_and_reader_reports_the_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    for step in range(3):
        append_record(path, {"step": step, "text": "a\nb"}, fsync=step == 2)
    assert path.read_text().count("\n") == 3
    truncate(path, path.stat().st_size - 3)
    found = read_records(path, remedy="(remedy)")
    assert [r["step"] for r in found.records] == [0, 1] and found.lines == [1, 2] and "line 3" in found.torn
    path.write_text('{"step": 0}\n[1, 2]\n')  # a whole last line that is no record: dropped too
    assert read_records(path, remedy="(remedy)").torn == "line 2: a JSON list, not an object"
    path.write_bytes(b'{"step": 0}\n\xff\xfe\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"line 2, is damaged \(not UTF-8 text\).*\(remedy\)"):
        read_records(path, remedy="(remedy)")


# --- checkpoint files, ar2mdm.json, owner record: written whole, damaged anyway ----------------------


@pytest.mark.parametrize("name", ["state.json", "optimizer.json", "model.safetensors", "optimizer.safetensors"])
def test_a_damaged_checkpoint_file_is_a_user_error_that_says_start_over(runs: dict, tmp_path: Path, name: str) -> None:
    ckpt = runs["crashed"] / "checkpoint" / name
    for n in offsets(ckpt) if name.endswith(".json") else (0, 8, ckpt.stat().st_size // 2, ckpt.stat().st_size - 1):
        out, cfg = copy_of(runs, "crashed", tmp_path / str(n))
        truncate(out / "checkpoint" / name, n)
        assert_user_error(cfg, str(out / "checkpoint"), "--overwrite")


def test_a_damaged_final_metadata_is_written_again_from_the_checkpoint(runs: dict, tmp_path: Path) -> None:
    meta = runs["finished"] / META_FILE
    for n in (0, meta.stat().st_size // 2, meta.stat().st_size - 1):
        out, cfg = copy_of(runs, "finished", tmp_path / str(n))
        truncate(out / META_FILE, n)
        plain = runner.invoke(app, cli_args(cfg), terminal_width=400)  # no flag: says which to pass
        text = " ".join(plain.output.split())
        assert plain.exit_code == 2 and "a damaged ar2mdm.json" in text and "--resume" in text, text
        result = train(cfg)
        assert result.steps == 4 and ModelMeta.load(out).extra["steps"] == 4
        assert [r["step"] for r in whole_lines(out / LOG_FILE)] == [1, 2, 3, 4]
    shutil.rmtree(out / "checkpoint")  # no checkpoint (save_every 0): nothing to write it again from
    truncate(out / META_FILE, 10)
    assert_user_error(cfg, str(out / META_FILE), "no training checkpoint", "--overwrite")


def test_a_damaged_owner_record_still_resumes(runs: dict, tmp_path: Path) -> None:
    owner = runs["crashed"] / OWNER_FILE
    for n in (0, owner.stat().st_size // 2):
        out, cfg = copy_of(runs, "crashed", tmp_path / str(n))
        truncate(out / OWNER_FILE, n)
        assert train(cfg).steps == 6
        assert json.loads((out / OWNER_FILE).read_text())["command"] == "convert"


def test_the_packed_data_cache_cut_short_is_recomputed(runs: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    (packed,) = (runs["cache"] / "packed").glob("*.safetensors")
    size = packed.stat().st_size
    saved = {k: v.clone() for k, v in load_file(packed).items()}  # copies: the file is cut in place below
    for n in (0, 8, size // 2, size - 1):
        out, cfg = copy_of(runs, "crashed", tmp_path / str(n))
        truncate(packed, n)
        assert train(cfg).steps == 6
        again = {k: v.clone() for k, v in load_file(packed).items()}  # written again, whole
        assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


def test_the_hash_cache_cut_short_is_rebuilt(runs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import conversion.checkpoints as C

    monkeypatch.setattr(C, "HASH_CACHE_MIN_BYTES", 0)
    model = Path(runs["cfg"].model)
    digest = C.weights_sha256(model)
    cache = runs["cache"] / C.HASH_CACHE_FILE
    assert cache.is_file()
    for n in offsets(cache):
        truncate(cache, n)
        assert C.weights_sha256(model) == digest
        assert read_json(cache, remedy="")  # written again, whole


# --- snapshots ---------------------------------------------------------------------------------------


def test_snapshots_cut_short_are_rewritten_by_resume_or_named(runs: dict, tmp_path: Path) -> None:
    from analyses.compare import snapshots_of

    out, cfg = copy_of(runs, "crashed", tmp_path)
    torn = out / "snapshots" / "step-000004"  # killed while writing the snapshot of step 4
    torn.mkdir()
    shutil.copy(out / "snapshots" / "step-000002" / "config.json", torn)
    with pytest.raises(UserError, match=f"{re.escape(str(torn))} is not a complete snapshot.*--resume"):
        snapshots_of(out)
    train(cfg)
    assert [step for step, _ in snapshots_of(out)] == [0, 2, 4, 6]
    meta = out / "snapshots" / "step-000002" / META_FILE
    truncate(meta, meta.stat().st_size // 2)
    with pytest.raises(UserError, match=f"{re.escape(str(meta))}.*not valid JSON.*delete"):
        snapshots_of(out)


# --- the study's stage records and outputs ---------------------------------------------------------------


def test_a_damaged_stage_record_or_output_reruns_the_stage(tmp_path: Path) -> None:
    from analyses.generation import write_report

    lines: list[str] = []
    stages = Stages(tmp_path / "study", force=False, log=lines.append)
    calls: list[str] = []

    def work(folder: Path) -> dict:
        calls.append(folder.name)
        (folder / "partial.txt").write_text("kept for a resume")
        write_report([], folder, plotlyjs="cdn")  # results.json, as the samplers stage writes it
        return {"n": len(calls)}

    kinds = {"samplers": {"outputs": ("results.json",)}, "mdm": {"keep_partial": True}}
    for name, options in kinds.items():
        stages.run(name, {"a": 1}, work, **options)
        marker = tmp_path / "study" / name / "stage.json"
        for i in range(len(offsets(marker))):
            # offsets of the file as it is now: each rerun rewrites it, and its length varies with the
            # stage's recorded seconds (an offset of the first file could be the whole second one)
            points = offsets(marker)
            n = points[min(i, len(points) - 1)]
            before, logged = len(calls), len(lines)
            truncate(marker, n)
            (marker.parent / "sentinel").touch()
            record = stages.run(name, {"a": 1}, work, **options)
            assert record.status == "ran" and len(calls) == before + 1
            assert any(f"{marker} is damaged" in line and "runs again" in line for line in lines[logged:]), lines
            assert (marker.parent / "sentinel").exists() == (name == "mdm")  # keep_partial: left for a resume
            assert stages.run(name, {"a": 1}, work, **options).status == "cached"
    results = tmp_path / "study" / "samplers" / "results.json"
    truncate(results, results.stat().st_size // 2)
    with pytest.raises(UserError, match="results.json is damaged.*Run the same study command again"):
        stage_output(results)
    assert stages.run("samplers", {"a": 1}, work, outputs=("results.json",)).status == "ran"
    assert stage_output(results)["rows"] == []


def test_a_damaged_organism_report_is_retrained_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analyses.app.stages import StageRecord
    from analyses.app.study import StudyConfig, _ar_twin_stage
    from conversion import organism as O

    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    tiny = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_mlp=64, tokenizer_examples=100)
    config = O.OrganismConfig(**tiny, mixture=dict.fromkeys(O.TASK_NAMES, 2), eval_examples=4, eval_every=0, threads=1)
    folder = tmp_path / "organism"
    O.train_organism(out=folder, seed=3, steps=1, config=config, progress=False)
    report = folder / "report.json"
    assert O.is_organism(folder) and O.outdated(folder, config) is None
    stages = Stages(tmp_path / "study", force=False, log=lambda _: None)
    ar = StageRecord("ar", "ran", 0.0, "k", {"hash": "0" * 16})
    for n in offsets(report):
        truncate(report, n)
        assert not O.is_organism(folder)
        assert O.outdated(folder, config) == "it has no readable report.json"  # the study trains it again
        match = f"{re.escape(str(report))} is damaged.*organism train --out {re.escape(str(folder))} --overwrite"
        with pytest.raises(UserError, match=match):
            _ar_twin_stage(StudyConfig(out=tmp_path / "study"), stages, str(folder), ar)


# --- other caches read back: the probe's disk cache ---------------------------------------------------


def test_a_damaged_disk_cache_index_is_a_user_error(tmp_path: Path) -> None:
    from probe.cache import INDEX_FILE, Cache, DiskCache, ShardWriter

    writer = ShardWriter(tmp_path / "cache")
    writer.add(Cache({"embed": torch.zeros(2, 3, 4)}))
    assert len(writer.close()) == 2
    index = tmp_path / "cache" / INDEX_FILE
    for n in offsets(index):
        truncate(index, n)
        with pytest.raises(UserError, match=f"{re.escape(str(index))} is damaged.*Write the cache again"):
            DiskCache(tmp_path / "cache")
