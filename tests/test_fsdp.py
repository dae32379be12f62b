"""FSDP: 2 CPU processes (gloo) sharded with FSDP2, gathered checkpoints, exact resume, refusals.

On CPU, accelerate 1.15 never applies FSDP itself (it wraps the model in DDP, or for FSDP1 fails
to build its plugin), so `train` shards with torch's `fully_shard` when a CPU multi-process launch
asks for FSDP version 2; see conversion/train.py. One `accelerate launch --use_fsdp` runs every
FSDP training these tests look at (the launch, not the training, is what costs time: those tests
are marked slow; `make test-slow` or `pytest -m slow tests/test_fsdp.py` runs them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import WORDS, build_tiny_model
from safetensors.torch import load_file, save_file

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from conversion.throughput import TIMING_FIELDS
from conversion.train import TrainConfig, parallelism, train

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = Path(sys.executable).parent / "accelerate"
STOP_AT = 3  # the interrupted run stops after this step; its last checkpoint is step 2
# The tests on the FSDP launch: 23 s idle, 28-41 s on 2 busy cores, nearly all of it starting the
# launcher and 2 workers (importing torch/transformers), not training.
SLOW = pytest.mark.slow


def _base(root: Path) -> TrainConfig:
    model = build_tiny_model("llama", root / "ar")  # no dropout: processes can match exactly
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    rng = random.Random(0)
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(40)))
    return TrainConfig(
        model=str(model),
        data=str(corpus),
        out=str(root / "unused"),
        steps=3,
        seq_len=16,
        batch_size=8,
        grad_accum=2,
        lr=3e-3,
        warmup=2,
        held_out=0.2,
        eval_blocks=4,
        seed=1,
    )


def _configs(root: Path, base: TrainConfig) -> dict[str, TrainConfig]:
    # 2 processes x 2 accumulation micro-steps x 2 rows per optimizer step.
    run = replace(base, steps=6, batch_size=8, grad_accum=2, save_every=2, eval_every=3)
    return {
        "straight": replace(run, out=str(root / "fsdp-straight")),
        "interrupted": replace(run, out=str(root / "fsdp-resumed")),
    }


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "train.jsonl").read_text().splitlines()]


def timeless(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in log_lines(folder)]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainConfig]:
    """Under `accelerate launch --use_fsdp --fsdp_version 2` on 2 CPU processes: a run, and the
    same run stopped after step 3 then resumed from its checkpoint (`--resume`)."""
    if not LAUNCHER.exists():
        pytest.skip("accelerate CLI not installed")
    root = tmp_path_factory.mktemp("fsdp")
    cache = root / "cache"
    configs = _configs(root, _base(root))
    script = root / "run_fsdp.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os, shutil, sys
        os.environ["AR2MDM_CACHE"] = {str(cache)!r}
        sys.path.insert(0, {str(REPO)!r})
        from dataclasses import replace
        from conversion.train import TrainConfig, train
        cfgs = {{k: TrainConfig(**v) for k, v in json.loads({json.dumps(json.dumps({k: asdict(v) for k, v in configs.items()}))}).items()}}

        class Stop(Exception):
            pass

        def stop(done):
            if done == {STOP_AT}:
                raise Stop  # on every process, after any checkpoint of that step

        train(cfgs["straight"])
        try:
            train(cfgs["interrupted"], on_step=stop)
            raise SystemExit("the interrupted run was not interrupted")
        except Stop:
            pass
        if os.environ["RANK"] == "0":  # keep the step-2 checkpoint for the one-process resume
            out = cfgs["interrupted"].out
            shutil.copytree(out + "/checkpoint", {str(root / "fsdp-step2" / "checkpoint")!r})
            shutil.copy(out + "/train.jsonl", {str(root / "fsdp-step2" / "train.jsonl")!r})
        train(replace(cfgs["interrupted"], resume=True))
    """)
    )
    proc = subprocess.run(
        [
            str(LAUNCHER),
            "launch",
            "--use_fsdp",
            "--fsdp_version",
            "2",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--main_process_port",
            "0",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "AR2MDM_CACHE": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return configs


@SLOW
def test_fsdp_two_processes_match_one(
    fsdp_runs: dict[str, TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FSDP2 over 2 CPU processes equals one process with the same global batch (tolerance)."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    two = fsdp_runs["straight"]
    extra = ModelMeta.load(two.out).extra
    assert extra["processes"] == 2 and extra["parallelism"] == "fsdp-cpu"
    one = train(replace(two, out=str(tmp_path / "one")))
    assert one.meta.extra["parallelism"] == "none"
    w1, w2 = weights(one.out), weights(Path(two.out))
    assert w1.keys() == w2.keys()
    # As for DDP: only the float summation order differs (see test_train's DDP test).
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    l1 = [r["loss"] for r in log_lines(one.out) if r["kind"] == "train"]
    l2 = [r["loss"] for r in log_lines(Path(two.out)) if r["kind"] == "train"]
    assert l1 == pytest.approx(l2, rel=1e-5)
    # The checkpoint holds the gathered (full, unsharded) optimizer state, keyed by name.
    o1 = load_file(Path(one.out) / "checkpoint" / "optimizer.safetensors")
    o2 = load_file(Path(two.out) / "checkpoint" / "optimizer.safetensors")
    assert o1.keys() == o2.keys()
    for name in o1:
        assert o2[name].shape == o1[name].shape, name
        torch.testing.assert_close(o2[name], o1[name], rtol=1e-3, atol=1e-7)


@SLOW
def test_fsdp_resume_matches_uninterrupted(fsdp_runs: dict[str, TrainConfig]) -> None:
    """An FSDP run stopped after step 3 and resumed from its step-2 checkpoint ends bit-equal to
    the uninterrupted FSDP run (weights, and the log, which was truncated back to step 2)."""
    straight, resumed = Path(fsdp_runs["straight"].out), Path(fsdp_runs["interrupted"].out)
    ws, wr = weights(straight), weights(resumed)
    assert wr.keys() == ws.keys()
    for name in ws:
        assert torch.equal(wr[name], ws[name]), name
    assert timeless(resumed) == timeless(straight)
    state = json.loads((resumed / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and state["format"] == 2
    os_, or_ = (load_file(f / "checkpoint" / "optimizer.safetensors") for f in (straight, resumed))
    assert all(torch.equal(or_[k], os_[k]) for k in os_)


@SLOW
def test_fsdp_checkpoint_resumes_on_one_process(
    fsdp_runs: dict[str, TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step-2 checkpoint of the FSDP run is not sharded: one process resumes it and ends where
    the uninterrupted FSDP run ends, up to float summation order."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    straight = fsdp_runs["straight"]
    out = tmp_path / "from-fsdp"
    shutil.copytree(Path(straight.out).parent / "fsdp-step2", out)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    result = train(replace(straight, out=str(out), resume=True))
    assert result.meta.extra["parallelism"] == "none"
    w1, w2 = weights(out), weights(Path(straight.out))
    for name in w2:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)


def test_parallelism_refuses_unsupported_launches() -> None:
    fsdp = {"ACCELERATE_USE_FSDP": "true"}
    assert parallelism(DistributedType.NO, 1, {}) == "none"
    assert parallelism(DistributedType.MULTI_CPU, 2, {"WORLD_SIZE": "2"}) == "ddp"
    assert parallelism(DistributedType.MULTI_CPU, 2, {**fsdp, "FSDP_VERSION": "2"}) == "fsdp-cpu"
    assert parallelism(DistributedType.FSDP, 2, {**fsdp, "FSDP_VERSION": "1"}) == "fsdp"
    assert parallelism(DistributedType.NO, 1, {**fsdp, "FSDP_VERSION": "2"}) == "none"  # nothing to shard
    with pytest.raises(UserError, match="FSDP version 1 cannot run on CPU.*--fsdp_version 2"):
        parallelism(DistributedType.MULTI_CPU, 2, {**fsdp, "FSDP_VERSION": "1"})
    with pytest.raises(UserError, match="FSDP version 1 cannot run on CPU"):
        parallelism(DistributedType.MULTI_CPU, 2, fsdp)  # accelerate's default version is 1
    with pytest.raises(UserError, match="WORLD_SIZE=2.*ACCELERATE_USE_CPU=true"):
        parallelism(DistributedType.NO, 1, {"WORLD_SIZE": "2"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="accelerate builds the FSDP1 plugin on a GPU")
def test_fsdp1_launch_on_cpu_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `accelerate launch --use_fsdp` (FSDP1, cpu_ram_efficient_loading on by default) gives
    every process on a CPU-only machine: a UserError before training, decided by the condition (FSDP1
    asked, no accelerator device), not by accelerate's error text, which changed in 1.16. The same
    holds whatever accelerate would have done (with or without sync_module_states)."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    for name, value in {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "1",
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_SYNC_MODULE_STATES": "true",
    }.items():
        monkeypatch.setenv(name, value)
    cfg = replace(_base(tmp_path), out=str(tmp_path / "run"))
    with pytest.raises(UserError, match="FSDP1 cannot run on CPU.*--fsdp_version 2"):
        train(cfg)
    assert not Path(cfg.out).exists()
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    with pytest.raises(UserError, match="FSDP1 cannot run on CPU.*--fsdp_version 2"):
        train(cfg)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "maybe")
    with pytest.raises(UserError, match="ACCELERATE_USE_FSDP must be a yes/no value"):
        train(cfg)
    assert not Path(cfg.out).exists()


def test_format1_checkpoint_still_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints written before the optimizer state was keyed by name (format 1: by index into
    model.parameters()) resume exactly."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    cfg = replace(_base(tmp_path), steps=4, batch_size=4, grad_accum=1, save_every=2)

    class Stop(Exception):
        pass

    def stop(done: int) -> None:
        if done == 3:
            raise Stop

    old = replace(cfg, out=str(tmp_path / "old"))
    with pytest.raises(Stop):
        train(old, on_step=stop)
    ckpt = Path(old.out) / "checkpoint"
    meta = json.loads((ckpt / "optimizer.json").read_text())
    names = meta["param_groups"][0]["params"]
    index = {name: i for i, name in enumerate(names)}
    tensors = load_file(ckpt / "optimizer.safetensors")
    save_file(
        {f"{index[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in tensors.items()},
        ckpt / "optimizer.safetensors",
    )
    meta["state"] = {str(index[k]): v for k, v in meta["state"].items()}
    meta["param_groups"] = [{**g, "params": [index[n] for n in g["params"]]} for g in meta["param_groups"]]
    (ckpt / "optimizer.json").write_text(json.dumps(meta))
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "format": 1}))

    resumed = train(replace(old, resume=True))
    straight = train(replace(cfg, out=str(tmp_path / "straight")))
    wr, ws = weights(resumed.out), weights(straight.out)
    for name in ws:
        assert torch.equal(wr[name], ws[name]), name


@SLOW
def test_fsdp_full_sharding_with_cpu_offload_from_the_shipped_config(tmp_path: Path) -> None:
    """`accelerate launch --config_file conversion/configs/fsdp2_cpu_offload.yaml` (2 CPU processes,
    mixed precision off so the runs compare exactly) trains with FSDP2's CPUOffloadPolicy and ends
    where one process ends, up to float summation order; the MDM records the offload."""
    if not LAUNCHER.exists():
        pytest.skip("accelerate CLI not installed")
    base = replace(_base(tmp_path), steps=4, batch_size=8, grad_accum=2, save_every=2)
    two = replace(base, out=str(tmp_path / "offloaded"))
    script = tmp_path / "run_offload.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        from conversion.train import TrainConfig, train
        train(TrainConfig(**json.loads({json.dumps(json.dumps(asdict(two)))})))
        """)
    )
    config = REPO / "conversion" / "configs" / "fsdp2_cpu_offload.yaml"
    launch = [str(LAUNCHER), "launch", "--config_file", str(config), "--num_processes", "2"]
    launch += ["--main_process_port", "0", "--mixed_precision", "no", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "AR2MDM_CACHE": str(tmp_path / "c")}
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    extra = ModelMeta.load(two.out).extra
    assert (extra["processes"], extra["parallelism"], extra["fsdp_offload_params"]) == (2, "fsdp-cpu", True)
    one = train(replace(base, out=str(tmp_path / "one")))
    w1, w2 = weights(one.out), weights(Path(two.out))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
