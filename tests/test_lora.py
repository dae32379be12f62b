"""LoRA conversion (conversion.lora): the option, what trains, the merged folder, exact resume.

One LoRA conversion of a tiny llama (adapters on q_proj, v_proj and down_proj, rank 4) is shared
by the tests that read its folder; each is checked against a truth computed here: the source's
own weight file, the mean of its embedding rows, the held-out loss of its step-0 snapshot, a
hand count of the adapters' parameters, and the peft model's logits before merging. The 2-process
DDP and FSDP2 runs are marked slow (starting `accelerate launch` costs ~30 s on 2 cores).
"""

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
from conftest import (
    D_MLP,
    D_MODEL,
    N_HEADS,
    N_KV_HEADS,
    N_LAYERS,
    WORDS,
    build_tiny_model,
    tiny_config,
    tiny_tokenizer,
    train_script,
)
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import get_model_state_dict
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.diffusion.attention import make_bidirectional
from ar2mdm.sampling import ModelContext, build_sampler, run
from conversion import data as data_mod
from conversion.checkpoints import load_any, load_ar
from conversion.config import merge_options, read_config_file
from conversion.lora import LoraSpec, attach_lora, parse_lora
from conversion.mdm import add_mask_token, save_mdm
from conversion.objective import heldout_loss
from conversion.runfolder import FULL_STATE
from conversion.throughput import TIMING_FIELDS, flops_per_token
from conversion.train import TrainConfig, train

LAUNCHER = Path(sys.executable).parent / "accelerate"
LORA = "r=4,alpha=8,targets=q_proj,v_proj,down_proj"
TARGETS = ("q_proj", "v_proj", "down_proj")


def _tiny_llama(folder: Path) -> Path:
    """conftest's tiny llama (untied head), its weights drawn with std 0.2 instead of 0.02: a frozen
    head of 0.02-weights gives logits within about +-0.1, which no adapter can make peaked (40
    LoRA steps then move the held-out loss by 0.03; by 0.5 here)."""
    tokenizer = tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.initializer_range = 0.2
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    rng = random.Random(0)
    for i in range(24):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(40)))
    return corpus


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """A tiny llama (untied head), a 24-document corpus, a 6-step LoRA config; cache under tmp."""
    root = tmp_path_factory.mktemp("lora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AR2MDM_CACHE", str(root / "cache"))
        yield TrainConfig(
            model=str(_tiny_llama(root / "ar")),
            data=str(_corpus(root)),
            out=str(root / "unused"),
            steps=6,
            seq_len=16,
            batch_size=4,
            lr=1e-2,
            warmup=2,
            held_out=0.2,
            eval_blocks=4,
            seed=1,
            device="cpu",
            lora=LORA,
        )


@pytest.fixture(scope="module")
def converted(base: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    """A finished 40-step LoRA conversion with a held-out eval at the end and a step-0 snapshot."""
    cfg = replace(
        base, steps=40, lr=3e-2, eval_every=40, snapshot_every=40, out=str(tmp_path_factory.mktemp("run") / "mdm")
    )
    train(cfg)
    return cfg


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def log_lines(folder: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "train.jsonl").read_text().splitlines()]


def timeless(folder: str | Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in log_lines(folder)]


# --- the option ------------------------------------------------------------------------------------


def test_parse_lora_reads_keys_defaults_and_a_canonical_form() -> None:
    assert parse_lora("") is None and parse_lora("  ") is None
    spec = parse_lora("r=8, alpha=16, targets=q_proj,k_proj, v_proj,o_proj, dropout=0.05")
    assert spec == LoraSpec(r=8, alpha=16.0, targets=("q_proj", "k_proj", "v_proj", "o_proj"), dropout=0.05)
    assert parse_lora("r=4") == LoraSpec(r=4, alpha=8.0)  # alpha 2r, every linear layer
    assert parse_lora("r=4,targets=all-linear") == LoraSpec(r=4, alpha=8.0)
    assert parse_lora(spec.text()) == spec  # the canonical form reads back
    assert parse_lora("alpha=8,r=4").text() == parse_lora("r=4,alpha=8.0,dropout=0").text()
    odd = parse_lora("r=4,alpha=0.123456789,dropout=0.05")
    assert parse_lora(odd.text()) == odd  # the canonical form loses nothing


def test_lora_is_an_option_of_config_files(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("lora: r=8,targets=q_proj,v_proj\n")
    (tmp_path / "run.toml").write_text('lora = "r=8,alpha=4"\n')
    yaml_cfg = merge_options(
        TrainConfig, read_config_file(tmp_path / "run.yaml"), {"model": "m", "data": "d", "out": "o"}
    )
    toml_cfg = merge_options(
        TrainConfig, read_config_file(tmp_path / "run.toml"), {"model": "m", "data": "d", "out": "o"}
    )
    assert yaml_cfg.lora_spec() == LoraSpec(r=8, alpha=16.0, targets=("q_proj", "v_proj"))
    assert toml_cfg.lora_spec() == LoraSpec(r=8, alpha=4.0)
    yaml_cfg.validate()
    assert yaml_cfg.lora == "r=8,alpha=16,dropout=0,targets=q_proj,v_proj"  # canonical: resume compares it


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("rank=8", ("unknown key 'rank'", "r, alpha, targets, dropout")),
        ("alpha=16", ("has no r",)),
        ("r=0", ("r (the adapter rank) must be an integer >= 1", "got 0")),
        ("r=eight", ("r must be an integer", "'eight'")),
        ("r=8,alpha=-1", ("alpha must be a positive number",)),
        ("r=8,dropout=1", ("dropout must be in [0, 1)",)),
        ("r=8,r=4", ("r is given twice",)),
        ("8", ("'8' is not key=value", "r=8,alpha=16")),
        ("r=8,q_proj", ("'q_proj' is not key=value",)),
        ("r=8,targets=q_proj,,v_proj", ("'' is not key=value",)),
    ],
)
def test_bad_lora_strings_are_user_errors(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(UserError) as err:
        parse_lora(text)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_target_naming_no_linear_layer_lists_the_models_layers(base: TrainConfig) -> None:
    loaded = load_ar(base.model)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    with pytest.raises(UserError, match="'qproj' matches no linear layer") as err:
        attach_lora(loaded.model, parse_lora("r=4,targets=q_proj,qproj"), mask_id, 0)
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in str(err.value)
    with pytest.raises(UserError, match="LM head cannot be a target"):
        attach_lora(loaded.model, parse_lora("r=4,targets=lm_head"), mask_id, 0)
    with pytest.raises(UserError, match="lora"):  # checked with the other options, before loading
        train(replace(base, lora="r=4,alpha=0"))


def test_a_rank_at_a_targets_smaller_dimension_is_refused_below_it_trains(base: TrainConfig, tmp_path: Path) -> None:
    """The tiny llama's narrowest layer is k_proj (32 in, 16 out, 2 KV heads of 8): r=16 is refused
    naming it and the largest useful rank; r=16 on q_proj alone (32 x 32) and r=15 everywhere train."""
    for text in ("r=16", "r=4096,targets=q_proj,k_proj"):
        loaded = load_ar(base.model)
        mask_id = add_mask_token(loaded.model, loaded.tokenizer)
        with pytest.raises(UserError, match=r"k_proj \(32 in, 16 out\).*largest useful rank here is 15"):
            attach_lora(loaded.model, parse_lora(text), mask_id, 0)
    loaded = load_ar(base.model)
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    _, adapters = attach_lora(loaded.model, parse_lora("r=16,targets=q_proj"), mask_id, 0)
    assert adapters is not None and adapters.targets == ("q_proj",)
    result = train(replace(base, lora="r=15", steps=1, out=str(tmp_path / "r15")))
    assert result.steps == 1 and ModelMeta.load(result.out).extra["lora"]["r"] == 15


def test_a_config_files_refused_value_names_the_file(tmp_path: Path) -> None:
    """`lora: 8` in a config file is reported with the file and the option; the same value given
    as a flag (no file involved) is not blamed on the file."""
    (tmp_path / "run.yaml").write_text("lora: 8\nsteps: 3\n")
    given = {"model": "m", "data": "d", "out": "o"}
    with pytest.raises(UserError, match=r"config file .*run\.yaml: option 'lora' \(8\) is refused: .*not key=value"):
        merge_options(
            TrainConfig, read_config_file(tmp_path / "run.yaml"), given, where=f"config file {tmp_path / 'run.yaml'}"
        )
    (tmp_path / "ok.yaml").write_text("steps: 3\n")
    with pytest.raises(UserError) as err:
        merge_options(
            TrainConfig, read_config_file(tmp_path / "ok.yaml"), {**given, "lora": "8"}, where="config file ok.yaml"
        )
    assert "ok.yaml" not in str(err.value) and "'8' is not key=value" in str(err.value)
    # a flag overrides the file's bad value: nothing to blame
    cfg = merge_options(TrainConfig, read_config_file(tmp_path / "run.yaml"), {**given, "lora": "r=8"})
    assert cfg.lora == "r=8"


# --- what a LoRA conversion trains -----------------------------------------------------------------


def test_lora_conversion_lowers_the_heldout_loss(converted: TrainConfig) -> None:
    """The held-out loss logged at the end is below that of the step-0 snapshot (the source with a
    mean mask row), both computed by the same evaluation (`heldout_loss`) on the same rows; and
    the merged folder gives the logged number again, so it is the model that was trained."""
    out = Path(converted.out)
    logged = [r for r in log_lines(out) if r["kind"] == "eval"]
    assert [r["step"] for r in logged] == [40]

    def heldout(folder: Path) -> float:
        loaded = load_any(folder, expect="mdm")
        packed = data_mod.pack(
            data_mod.load_texts(converted.data),
            loaded.tokenizer,
            seq_len=converted.seq_len,
            held_out=converted.held_out,
            seed=converted.seed,
        )
        result = heldout_loss(
            loaded.model,
            packed.held_out[: converted.eval_blocks],
            converted.options(),
            mask_id=loaded.meta.mask_id,
            seed=converted.seed,
            batch_size=converted.batch_size,
            vocab_size=len(loaded.tokenizer),
        )
        return result["loss"]

    before, after = heldout(out / "snapshots" / "step-000000"), heldout(out)
    assert after == pytest.approx(logged[-1]["loss"], rel=1e-5)
    assert after < before - 0.3, (before, after)  # 7.39 -> 6.84 when written


def test_only_adapted_layers_and_the_mask_row_change(converted: TrainConfig) -> None:
    """Against the source's weight file: layers without adapters, norms and every embedding row but
    the mask's are bit-identical; the adapted layers and the input mask row moved; the untied
    head's mask row is still the mean of the source's head rows (it does not train)."""
    source, merged = weights(converted.model), weights(converted.out)
    mask_id = ModelMeta.load(converted.out).mask_id
    assert merged.keys() == source.keys()
    for name, value in source.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert mask_id == value.shape[0]  # the mask token's row is new: the rows before are the source's
            assert torch.equal(merged[name][:mask_id], value), name
        elif any(f".{t}." in name for t in TARGETS):
            assert not torch.equal(merged[name], value), name
        else:
            assert torch.equal(merged[name], value), name
    mean_in = source["model.embed_tokens.weight"].mean(0)
    assert not torch.allclose(merged["model.embed_tokens.weight"][mask_id], mean_in, atol=1e-3)
    assert torch.equal(merged["lm_head.weight"][mask_id], source["lm_head.weight"].mean(0))


def test_merged_folder_is_a_plain_mdm_that_samples(converted: TrainConfig) -> None:
    loaded = load_any(converted.out)
    meta = loaded.meta
    assert meta.kind == "mdm" and type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in loaded.model.named_parameters())
    # trainable parameters by hand: r (d_in + d_out) per adapted layer, plus the mask row
    head_dim = D_MODEL // N_HEADS
    per_layer = 4 * ((D_MODEL + D_MODEL) + (D_MODEL + N_KV_HEADS * head_dim) + (D_MLP + D_MODEL))
    lora = meta.extra["lora"]
    assert lora["trainable_params"] == N_LAYERS * per_layer + D_MODEL
    assert lora["targets"] == sorted(TARGETS) and lora["r"] == 4 and lora["alpha"] == 8.0
    assert lora["trained_embedding_rows"] == [meta.mask_id]
    assert lora["total_params"] == sum(v.numel() for v in weights(converted.out).values())
    assert meta.extra["options"]["lora"] == parse_lora(LORA).text()
    prompt = loaded.tokenizer(" When Mary and John went to the", return_tensors="pt").input_ids
    ids = torch.cat([prompt, torch.full((1, 6), meta.mask_id)], dim=1)
    ctx = ModelContext.from_meta(meta, loaded.tokenizer, loaded.model)
    result = run(build_sampler("low-confidence", steps=6), loaded.model, ids, None, ctx, seed=0)
    assert torch.equal(result.ids[:, : prompt.shape[1]], prompt)  # the prompt is never rewritten
    assert not (result.ids == meta.mask_id).any() and result.gen[0].sum() == 6


def test_flops_per_token_count_frozen_weights_at_four(tmp_path: Path) -> None:
    """By hand, rank 4 on q_proj and v_proj of the tiny llama: base weights (all frozen) cost 4
    FLOPs each (no weight gradient), the adapters and the mask row's delta 6, attention unchanged."""
    loaded = load_ar(build_tiny_model("llama", tmp_path / "ar"))
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    d, kv, vocab = D_MODEL, D_MODEL // N_HEADS * N_KV_HEADS, loaded.model.config.vocab_size
    base = N_LAYERS * (d * d + 2 * d * kv + d * d + 3 * d * D_MLP + 2 * d) + d + vocab * d
    attention = 12 * N_LAYERS * N_HEADS * (d // N_HEADS) * 16
    assert flops_per_token(loaded.model, 16) == 6 * base + attention  # a full conversion
    wrapped, _ = attach_lora(loaded.model, parse_lora("r=4,targets=q_proj,v_proj"), mask_id, 0)
    adapters = N_LAYERS * (4 * d + d * 4) + N_LAYERS * (4 * d + kv * 4)  # A [r, in] and B [out, r]
    assert flops_per_token(wrapped, 16) == 4 * base + 6 * (adapters + d) + attention


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # untied head, nn.Linear / tied head, Conv1D
def test_merged_logits_equal_the_peft_models(family: str, tmp_path: Path) -> None:
    """Adapters and mask row set to random values: the saved, merged folder (loaded back) gives the
    logits of the peft model, which merging left unchanged."""
    loaded = load_ar(build_tiny_model(family, tmp_path / "ar"))
    mask_id = add_mask_token(loaded.model, loaded.tokenizer)
    make_bidirectional(loaded.model)
    model, adapters = attach_lora(loaded.model, parse_lora("r=4,dropout=0.1"), mask_id, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.eval()
    ids = torch.tensor([[5, 9, mask_id, 12, mask_id, 7]])
    expected = model(input_ids=ids).logits
    plain, state_dict = adapters.merged(model, get_model_state_dict(model, options=FULL_STATE))
    meta = ModelMeta(kind="mdm", family=family, mask_id=mask_id, noise="absorbing", schedule="linear")
    save_mdm(plain, loaded.tokenizer, meta, tmp_path / "mdm", state_dict=state_dict)
    assert torch.equal(model(input_ids=ids).logits, expected)  # the training model keeps its adapters
    got = load_any(tmp_path / "mdm", expect="mdm").model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (got[0, :, mask_id] - expected[0, :, mask_id]).abs().max() < 1e-5  # the mask row (tied: the head's too)


def test_snapshots_are_merged_copies_and_leave_the_run_alone(base: TrainConfig, tmp_path: Path) -> None:
    """Writing merged snapshots along the run changes nothing in the training (the adapters stay)."""
    plain = train(replace(base, steps=4, out=str(tmp_path / "plain")))
    snapped = train(replace(base, steps=4, snapshot_every=2, out=str(tmp_path / "snapped")))
    for name, value in weights(plain.out).items():
        assert torch.equal(weights(snapped.out)[name], value), name
    step2 = Path(snapped.out) / "snapshots" / "step-000002"
    assert load_any(step2).meta.extra["steps"] == 2 and "lora" in ModelMeta.load(step2).extra
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(weights(step2)[name], weights(plain.out)[name])


# --- checkpoints and resume ------------------------------------------------------------------------


@pytest.mark.e2e
def test_resume_after_sigkill_is_exact(base: TrainConfig, tmp_path: Path) -> None:
    """kill -9 after step 5 (last checkpoint: step 4), then --resume: weights and log equal the
    uninterrupted run's bit for bit; the checkpoint holds the adapters and the mask row only."""
    cfg = replace(base, steps=8, save_every=2, eval_every=4, lora="r=4,dropout=0.1")
    killed = replace(cfg, out=str(tmp_path / "killed"))
    proc = subprocess.run(
        [sys.executable, str(train_script(tmp_path / "run.py", killed, kill_at=5))],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = Path(killed.out) / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    assert not (Path(killed.out) / "ar2mdm.json").exists()
    saved = weights(ckpt)
    assert saved and all(".lora_" in k or "trainable_tokens_delta" in k for k in saved)
    moments = {f"{k}.{s}" for k in saved for s in ("step", "exp_avg", "exp_avg_sq")}
    assert load_file(ckpt / "optimizer.safetensors").keys() == moments

    resumed = train(replace(killed, resume=True))
    straight = train(replace(cfg, out=str(tmp_path / "straight")))
    wr, ws = weights(resumed.out), weights(straight.out)
    assert wr.keys() == ws.keys()
    for name in ws:
        assert torch.equal(wr[name], ws[name]), name
    assert timeless(resumed.out) == timeless(straight.out)


def test_resume_refuses_another_lora_setting(base: TrainConfig, tmp_path: Path) -> None:
    cfg = replace(base, steps=2, save_every=2, lora="r=4", out=str(tmp_path / "run"))
    train(cfg)
    for other in ("r=8", ""):
        with pytest.raises(
            UserError, match=r"options \['lora'\] differ.*lora='r=4,alpha=8,dropout=0,targets=all-linear'"
        ):
            train(replace(cfg, steps=4, resume=True, lora=other))
    more = train(replace(cfg, steps=4, resume=True, lora="alpha=8,r=4"))  # the same setting, spelled otherwise
    assert more.steps == 4 and more.meta.extra["lora"]["r"] == 4


def test_resume_refuses_a_source_whose_weights_changed(base: TrainConfig, tmp_path: Path) -> None:
    """A LoRA checkpoint holds no frozen weights: resuming on changed source weights is refused."""
    source = tmp_path / "source"
    shutil.copytree(base.model, source)
    cfg = replace(base, model=str(source), steps=2, save_every=2, out=str(tmp_path / "run"))
    train(cfg)
    tensors = load_file(source / "model.safetensors")
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="source model's weights changed since this LoRA checkpoint"):
        train(replace(cfg, steps=4, resume=True))


def test_runs_from_before_the_option_resume_as_full_conversions(base: TrainConfig, tmp_path: Path) -> None:
    """A checkpoint written before `lora` existed (no such key in its options) is a full conversion."""
    cfg = replace(base, steps=2, save_every=2, lora="", out=str(tmp_path / "old"))
    train(cfg)
    state_file = Path(cfg.out) / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["lora"]
    state_file.write_text(json.dumps(state))
    assert train(replace(cfg, steps=3, resume=True)).steps == 3
    with pytest.raises(UserError, match="lora"):
        train(replace(cfg, steps=4, resume=True, lora="r=4"))


# --- several processes -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["ddp", "fsdp"])
def test_two_processes_match_one(launch: str, base: TrainConfig, tmp_path: Path) -> None:
    """LoRA over 2 CPU processes (DDP, or ar2mdm's FSDP2) equals one process with the same global
    batch, up to float summation order (as tests/test_train.py's DDP test)."""
    if not LAUNCHER.exists():
        pytest.skip("accelerate CLI not installed")
    cfg = replace(base, steps=3, grad_accum=2, batch_size=8, save_every=3)
    two = replace(cfg, out=str(tmp_path / launch))
    flags = ["--multi_gpu"] if launch == "ddp" else ["--use_fsdp", "--fsdp_version", "2"]
    proc = subprocess.run(
        [str(LAUNCHER), "launch", *flags, "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
        + ["--mixed_precision", "no", "--dynamo_backend", "no", str(train_script(tmp_path / "run.py", two))],
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = ModelMeta.load(two.out).extra
    assert extra["processes"] == 2 and extra["parallelism"] == {"ddp": "ddp", "fsdp": "fsdp-cpu"}[launch]
    one = train(replace(cfg, out=str(tmp_path / "one")))
    w1, w2 = weights(one.out), weights(two.out)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)
    assert weights(Path(two.out) / "checkpoint").keys() == weights(Path(one.out) / "checkpoint").keys()
