"""The conversion loop: outputs, mask token, exact resume after SIGKILL, divergence, DDP."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import WORDS, build_tiny_model, train_script
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from conversion.mdm import MASK_TOKEN, add_mask_token, load_mdm
from conversion.throughput import TIMING_FIELDS
from conversion.train import TrainConfig, TrainingDiverged, lr_at, train


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainConfig:
    """A tiny llama, a 24-document corpus, and a 6-step config writing under tmp_path."""
    monkeypatch.setenv("AR2MDM_CACHE", str(tmp_path / "cache"))
    model = build_tiny_model("llama", tmp_path / "ar")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(40)))
    return TrainConfig(
        model=str(model),
        data=str(corpus),
        out=str(tmp_path / "run"),
        steps=6,
        seq_len=16,
        batch_size=4,
        lr=3e-3,
        warmup=2,
        held_out=0.2,
        eval_blocks=4,
        seed=1,
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]


def test_lr_schedule() -> None:
    cfg = TrainConfig(model="m", data="d", out="o", steps=10, lr=1.0, warmup=2, min_lr_ratio=0.0)
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_add_mask_token_uses_mean_rows(tmp_path: Path, family: str) -> None:
    from conversion.checkpoints import load_ar

    loaded = load_ar(build_tiny_model(family, tmp_path / family))
    model, tok = loaded.model, loaded.tokenizer
    emb = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    mask_id = add_mask_token(model, tok, "add")
    assert tok.convert_ids_to_tokens(mask_id) == MASK_TOKEN
    assert mask_id == emb.shape[0]
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], emb.mean(0))
    if not tied:
        torch.testing.assert_close(model.get_output_embeddings().weight[mask_id], head.mean(0))
    torch.testing.assert_close(model.get_input_embeddings().weight[:mask_id], emb)  # old rows kept
    assert add_mask_token(model, tok, "3") == 3
    with pytest.raises(UserError, match="outside"):
        add_mask_token(model, tok, str(10**6))
    with pytest.raises(UserError, match="neither"):
        add_mask_token(model, tok, "mask")


def test_train_writes_loadable_mdm(setup: TrainConfig) -> None:
    cfg = replace(setup, eval_every=3, log_every=2, attention="anneal:3", weighting="cart")
    result = train(cfg)
    out = Path(cfg.out)
    assert result.steps == 6 and result.tokens_seen == 6 * 4 * 16
    lines = log_lines(out)
    assert [r["step"] for r in lines if r["kind"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [3, 6]
    assert {"loss", "acc", "masked", "lr", "tokens_per_s", "grad_norm", "tokens_seen"} <= set(lines[0])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.is_causal is False
    loaded = load_mdm(out)
    meta = ModelMeta.load(out)
    assert loaded.meta == meta and meta.kind == "mdm" and meta.shift is True
    assert meta.mask_id == loaded.tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    assert meta.extra["steps"] == 6 and meta.extra["options"]["attention"] == "anneal:3"
    for name, value in weights(out).items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)
    assert result.last_eval is not None and set(result.last_eval) >= {"loss", "ce@0.5"}
    with pytest.raises(UserError, match="resume"):
        train(cfg)  # the folder holds a run


def test_grad_accum_gives_the_same_update(setup: TrainConfig, tmp_path: Path) -> None:
    a = train(replace(setup, steps=3, out=str(tmp_path / "a")))
    b = train(replace(setup, steps=3, out=str(tmp_path / "b"), grad_accum=2))
    wa, wb = weights(a.out), weights(b.out)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-6)


@pytest.mark.e2e
def test_resume_after_sigkill_is_exact(setup: TrainConfig, tmp_path: Path) -> None:
    cfg = replace(setup, steps=8, save_every=2, eval_every=4)
    killed = replace(cfg, out=str(tmp_path / "killed"))
    proc = subprocess.run(
        [sys.executable, str(train_script(tmp_path / "run_train.py", killed, kill_at=5))],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((Path(killed.out) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4
    assert not (Path(killed.out) / "ar2mdm.json").exists()
    assert max(r["step"] for r in log_lines(Path(killed.out))) == 5  # step 5 was logged, then lost

    resumed = train(replace(killed, resume=True))
    straight = train(replace(cfg, out=str(tmp_path / "straight")))
    wr, ws = weights(resumed.out), weights(straight.out)
    assert wr.keys() == ws.keys()
    for name in ws:
        assert torch.equal(wr[name], ws[name]), name

    def timeless(folder: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in log_lines(folder)]

    assert timeless(resumed.out) == timeless(straight.out)  # log truncated to step 4, then continued


def test_resume_rejects_changed_options(setup: TrainConfig) -> None:
    train(replace(setup, steps=2, save_every=2))
    with pytest.raises(UserError, match="lr"):
        train(replace(setup, steps=4, save_every=2, resume=True, lr=1.0))
    more = train(replace(setup, steps=4, save_every=2, resume=True))  # steps may grow
    assert more.steps == 4


def test_resume_with_nothing_to_resume_starts_at_step_zero(setup: TrainConfig, tmp_path: Path) -> None:
    """An empty --out and --resume: nothing to continue, so the run starts (it used to refuse)."""
    result = train(replace(setup, resume=True))
    straight = train(replace(setup, out=str(tmp_path / "straight")))
    assert result.steps == 6
    for name, value in weights(straight.out).items():
        assert torch.equal(weights(result.out)[name], value), name


def test_nan_stops_and_keeps_last_good_checkpoint(setup: TrainConfig) -> None:
    cfg = replace(setup, steps=6, lr=1e30, warmup=0, clip=0.0, save_every=1)
    with pytest.raises(TrainingDiverged, match="diverged.*last good checkpoint") as err:
        train(cfg)
    assert "lr" in str(err.value)
    ckpt = Path(cfg.out) / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in weights(ckpt).values())


def test_bad_config_is_a_user_error(setup: TrainConfig) -> None:
    for bad in (
        {"batch_size": 3, "grad_accum": 2},
        {"steps": 0},
        {"sft": True},
        {"attention": "causal"},
        {"lr": float("nan")},
    ):
        with pytest.raises(UserError):
            train(replace(setup, **bad))


@pytest.mark.e2e
def test_ddp_two_processes_match_one(setup: TrainConfig, tmp_path: Path) -> None:
    """DDP over 2 CPU processes (gloo) equals one process with the same global batch.

    `accelerate launch --cpu` alone starts ONE process unless mpirun is set up; a CPU-only
    multi-process run is `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2`.
    """
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("accelerate CLI not installed")
    cfg = replace(setup, steps=3, grad_accum=2, batch_size=8)  # 2 processes x 2 micro-steps x 2 rows
    two = replace(cfg, out=str(tmp_path / "ddp"))
    launcher = str(Path(sys.executable).parent / "accelerate")
    proc = subprocess.run(
        [
            launcher,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(train_script(tmp_path / "run_train.py", two)),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ModelMeta.load(two.out).extra["processes"] == 2
    one = train(replace(cfg, out=str(tmp_path / "one")))
    w1, w2 = weights(one.out), weights(Path(two.out))
    # Gradients differ only in float summation order; Adam divides by sqrt(v), so an element whose
    # gradient is ~0 can move by a visible fraction of lr (3e-3): allow 1e-5 absolute.
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    l1 = [r["loss"] for r in log_lines(one.out) if r["kind"] == "train"]
    l2 = [r["loss"] for r in log_lines(Path(two.out)) if r["kind"] == "train"]
    assert l1 == pytest.approx(l2, rel=1e-5)


@pytest.mark.parametrize("attention", ["block:4", "anneal:2", "bidirectional"])
def test_bf16_autocast_runs(setup: TrainConfig, attention: str) -> None:
    result = train(replace(setup, steps=2, bf16=True, attention=attention, shift=attention != "block:4"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history if r["kind"] == "train")
    assert next(iter(weights(result.out).values())).dtype == torch.float32  # fp32 master weights
    fp32 = train(
        replace(
            setup,
            steps=1,
            attention=attention,
            shift=attention != "block:4",
            out=str(Path(setup.out).with_name("fp32")),
        )
    )
    assert result.history[0]["loss"] != fp32.history[0]["loss"]  # autocast really was on
    assert result.history[0]["loss"] == pytest.approx(fp32.history[0]["loss"], rel=0.05)


def test_resume_survives_a_save_killed_between_renames(setup: TrainConfig) -> None:
    """A save killed after moving checkpoint/ aside leaves checkpoint.old/ (and a temp folder)."""
    cfg = replace(setup, steps=2, save_every=2)
    train(cfg)
    out = Path(cfg.out)
    os.replace(out / "checkpoint", out / "checkpoint.old")
    (out / ".checkpoint-junk").mkdir()
    result = train(replace(cfg, steps=4, resume=True))
    assert result.steps == 4
    assert not (out / ".checkpoint-junk").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4


def test_add_mask_token_reuses_the_tokenizers_own_mask(tmp_path: Path) -> None:
    from conversion.checkpoints import load_ar

    loaded = load_ar(build_tiny_model("llama", tmp_path / "m"))
    model, tok = loaded.model, loaded.tokenizer
    tok.mask_token = tok.convert_ids_to_tokens(5)
    rows = model.get_input_embeddings().weight.shape[0]
    before = model.get_input_embeddings().weight.detach().clone()
    assert add_mask_token(model, tok, "add") == 5
    assert model.get_input_embeddings().weight.shape[0] == rows  # nothing added
    torch.testing.assert_close(model.get_input_embeddings().weight, before)


def test_seq_len_beyond_context_is_refused_before_training(setup: TrainConfig) -> None:
    cfg = replace(setup, seq_len=129)  # the tiny models have 128 positions
    with pytest.raises(UserError, match="context of 128"):
        train(cfg)
    assert not (Path(cfg.out) / "train.jsonl").exists()


def test_source_with_nan_or_inf_weights_is_refused_before_training(setup: TrainConfig, tmp_path: Path) -> None:
    """A source whose weights already hold NaN/inf is named as the cause at load (not a divergence
    blamed on lr, warmup or the data); finite weights pass the check untouched."""
    from safetensors.torch import save_file

    from conversion.source import check_finite_weights

    model = AutoModelForCausalLM.from_pretrained(setup.model)
    check_finite_weights(model, setup.model)  # a healthy source: no complaint
    source = tmp_path / "ar-inf"
    shutil.copytree(setup.model, source)
    tensors = weights(source)
    name = next(k for k in tensors if "self_attn.o_proj" in k)
    tensors[name] = tensors[name].clone()
    tensors[name][1, 1] = float("inf")
    save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    cfg = replace(setup, model=str(source))
    with pytest.raises(
        UserError, match=rf"already holds NaN or infinite weights in 1 tensor\(s\): {name} \(1 of"
    ) as err:
        train(cfg)
    assert not isinstance(err.value, TrainingDiverged)
    assert not (Path(cfg.out) / "train.jsonl").exists()


def _sft_jsonl(path: Path, n: int = 24) -> Path:
    rng = random.Random(5)
    with path.open("w") as f:
        for i in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(4 + i % 3))
            row = {"prompt": prompt, "answer": " " + rng.choice(WORDS)}
            if i % 2:
                row["suffix"] = " " + " ".join(rng.choice(WORDS) for _ in range(2))
            f.write(json.dumps(row) + "\n")
    return path


def test_sft_rows_layout_matches_the_tokenizer(setup: TrainConfig, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from conversion.sft import sft_rows

    tok = AutoTokenizer.from_pretrained(setup.model)
    src = _sft_jsonl(tmp_path / "sft.jsonl", n=6)
    rows = sft_rows(src, tok, seq_len=16, mask_id=3, held_out=0.0, seed=0)
    assert rows.train.shape == (6, 3, 16) and rows.held_out.shape[0] == 0
    by_text = {}
    for line in src.read_text().splitlines():
        ex = json.loads(line)
        full = tok(ex["prompt"] + ex["answer"] + ex.get("suffix", ""))["input_ids"]
        head = tok(ex["prompt"])["input_ids"]
        n_answer = len(tok(ex["prompt"] + ex["answer"])["input_ids"]) - len(head)
        by_text[tuple(full)] = (len(head), n_answer)
    for ids, attn, prompt in rows.train:
        n = int(attn.sum())
        start, n_answer = by_text[tuple(ids[:n].tolist())]  # every row is one example, exactly
        assert attn[:n].all() and not attn[n:].any()
        answer = (prompt[:n] == 0).nonzero().flatten().tolist()
        assert answer == list(range(start, start + n_answer))  # only the answer is trainable


def test_sft_training_never_noises_the_prompt(setup: TrainConfig, tmp_path: Path) -> None:
    src = _sft_jsonl(tmp_path / "sft.jsonl")
    cfg = replace(setup, data=str(src), sft=True, eval_every=3, batch_size=4)
    result = train(cfg)
    logs = log_lines(Path(result.out))
    train_rows = [r for r in logs if r["kind"] == "train"]
    # each example has exactly one answer token, and at most 4 examples are in a batch
    assert all(0 <= r["masked"] <= 4 for r in train_rows)
    assert any(r["kind"] == "eval" for r in logs)
    assert ModelMeta.load(result.out).kind == "mdm"


def test_training_report_plots_the_logged_numbers(setup: TrainConfig) -> None:
    from conversion.report import training_figure

    result = train(replace(setup, eval_every=3, log_every=1))
    assert (Path(result.out) / "train.html").is_file()
    fig = training_figure(Path(result.out) / "train.jsonl")
    logs = log_lines(Path(result.out))
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["train loss"].y) == [r["loss"] for r in logs if r["kind"] == "train"]
    assert list(by_name["held-out loss"].x) == [r["step"] for r in logs if r["kind"] == "eval"]


def test_snapshots_are_loadable_mdms_along_the_run(setup: TrainConfig) -> None:
    """--snapshot-every N writes the model at step 0 (the source, made bidirectional) and every N
    steps before the last (the last is the run's own folder); `analyses.compare.track` follows them."""
    from analyses.compare import snapshots_of, track
    from probe import ProbedModel

    cfg = replace(setup, snapshot_every=2)
    train(cfg)
    out = Path(cfg.out)
    found = snapshots_of(out)
    assert [step for step, _ in found] == [0, 2, 4, 6] and found[-1][1] == out
    found = snapshots_of(out, final=False)
    assert [step for step, _ in found] == [0, 2, 4]
    source = weights(Path(cfg.model))
    states = {}
    for step, folder in found:
        loaded = load_mdm(folder)
        assert loaded.meta.extra["steps"] == step and loaded.meta.mask_id == ModelMeta.load(out).mask_id
        states[step] = weights(folder)
    final = weights(out)
    name = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(states[0][name], source[name])  # step 0 is the source's weights
    assert not torch.equal(states[2][name], states[0][name]) and not torch.equal(states[4][name], states[2][name])
    assert not torch.equal(final[name], states[4][name])
    ar = ProbedModel.from_checkpoint(cfg.model, backend="torch")
    tracked = track(ar, found, tasks=("ioi",), pool_size=12, steps=2, log=lambda _: None)
    points = tracked["tasks"]["ioi"]["points"]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert all(0.0 <= p["jaccard_ar"] <= 1.0 and 0.0 <= p["accuracy"] <= 1.0 for p in points)
    with pytest.raises(UserError, match="snapshot"):
        snapshots_of(Path(cfg.model))


def test_time_budget_stops_early_and_resume_finishes(setup: TrainConfig) -> None:
    cfg = replace(setup, max_minutes=1e-6, save_every=3)
    result = train(cfg)
    out = Path(cfg.out)
    assert result.steps == 1 and ModelMeta.load(out).extra["steps"] == 1
    assert [r["kind"] for r in log_lines(out)][-1] == "stop"
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1
    done = train(replace(cfg, max_minutes=0.0, resume=True))
    assert done.steps == 6 and ModelMeta.load(out).extra["steps"] == 6
    with pytest.raises(UserError, match="max_minutes"):
        train(replace(setup, max_minutes=-1.0))


def test_document_attention_trains_and_is_recorded(setup: TrainConfig) -> None:
    """Per-document attention runs through the loop (train and held-out eval) and changes the
    trajectory (the documents of a packed row no longer see each other)."""
    per_doc = train(replace(setup, steps=2, eval_every=2, document_attention=True))
    assert ModelMeta.load(per_doc.out).extra["options"]["document_attention"] is True
    assert per_doc.last_eval is not None and per_doc.last_eval["loss"] == per_doc.last_eval["loss"]
    across = train(replace(setup, steps=2, eval_every=2, out=str(Path(setup.out).with_name("across"))))
    assert per_doc.history[0]["loss"] != across.history[0]["loss"]
    with pytest.raises(UserError, match="document"):
        train(replace(setup, sft=True, data="tasks", document_attention=True, out=str(Path(setup.out).with_name("x"))))
