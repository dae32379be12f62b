"""The conversion's device paths, run on this machine's CPU at tiny scale: --device, the fused
AdamW that CUDA runs use, torch.compile (the same graph capture through the aot_eager backend),
and the FLOPs count behind the logged MFU (checked by hand)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import D_MLP, D_MODEL, N_HEADS, N_KV_HEADS, N_LAYERS, build_tiny_model
from test_train import log_lines, setup, weights  # noqa: F401 (setup: fixture)
from transformers import AutoModelForCausalLM

from ar2mdm.common.errors import UserError
from conversion import parallel
from conversion.throughput import flops_per_token, matmul_parameters, peak_tflops, utilisation
from conversion.train import TrainConfig, _adamw, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _train_log(folder: Path) -> list[dict]:
    return [r for r in log_lines(Path(folder)) if r["kind"] == "train"]


def test_flops_per_token_by_hand(tmp_path: Path) -> None:
    """Llama (untied head): 6 x (q, k, v, o, gate/up/down, norms, LM head) + 12 L H Q T."""
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model("llama", tmp_path / "llama"))
    cfg = model.config
    d, kv = D_MODEL, D_MODEL // N_HEADS * N_KV_HEADS
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * D_MLP + 2 * d
    weights = N_LAYERS * per_layer + d + cfg.vocab_size * d
    assert matmul_parameters(model) == weights
    assert flops_per_token(model, 16) == 6 * weights + 12 * N_LAYERS * N_HEADS * (d // N_HEADS) * 16
    gpt2 = AutoModelForCausalLM.from_pretrained(build_tiny_model("gpt2", tmp_path / "gpt2"))
    total = sum(p.numel() for p in gpt2.parameters())  # the tied head counts once, as a matmul ...
    assert matmul_parameters(gpt2) == total - gpt2.transformer.wpe.weight.numel()  # ... positions are a lookup
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(model, 0)


def test_peak_and_utilisation() -> None:
    assert peak_tflops(torch.device("cpu")) is None  # no MFU on CPU ...
    assert peak_tflops(torch.device("cpu"), 2.0) == 2.0  # ... unless a peak is given
    assert utilisation(1000.0, 3e9, None) == {"tflops": 3.0}
    assert utilisation(1000.0, 3e9, 12.0) == {"tflops": 3.0, "mfu": 0.25}


def test_train_logs_tflops_and_mfu(setup: TrainConfig) -> None:  # noqa: F811
    cfg = replace(setup, steps=2, peak_tflops=1e-3)
    train(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.model)
    per_token = flops_per_token(model, cfg.seq_len)  # the source's size; the mask row is a lookup
    for row in _train_log(cfg.out):
        assert row["tflops"] == pytest.approx(row["tokens_per_s"] * per_token / 1e12, rel=1e-3)
        assert row["mfu"] == pytest.approx(row["tflops"] / 1e-3)


def test_device_cpu_trains_as_auto_does(setup: TrainConfig, tmp_path: Path) -> None:  # noqa: F811
    a = train(replace(setup, steps=2, out=str(tmp_path / "auto")))
    b = train(replace(setup, steps=2, out=str(tmp_path / "cpu"), device="cpu"))
    wa, wb = weights(Path(a.out)), weights(Path(b.out))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_on_each_device_matches_fp32(setup: TrainConfig, tmp_path: Path, device: str) -> None:  # noqa: F811
    """The first step's loss (the same weights, the same draws) in bf16 autocast on `device`
    equals the fp32 loss there to bf16 rounding; the run ends finite and writes its MDM. (The
    reference runs on the same device: noise is drawn from the device's own random stream.)"""
    ref = train(replace(setup, steps=2, out=str(tmp_path / "fp32"), device=device))
    run = train(replace(setup, steps=2, out=str(tmp_path / device), device=device, bf16=True))
    first, first_ref = _train_log(run.out)[0]["loss"], _train_log(ref.out)[0]["loss"]
    assert first == pytest.approx(first_ref, rel=2e-2) and first != first_ref
    assert math.isfinite(run.final_loss) and (Path(run.out) / "model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_device_cuda_without_a_gpu_is_refused(setup: TrainConfig) -> None:  # noqa: F811
    with pytest.raises(UserError, match="--device cuda, but torch sees no CUDA device"):
        train(replace(setup, device="cuda"))
    assert not Path(setup.out).exists()  # refused before the folder is touched


def test_bad_device_and_compile_are_user_errors(setup: TrainConfig) -> None:  # noqa: F811
    with pytest.raises(UserError, match="device must be one of auto, cpu, cuda"):
        replace(setup, device="gpu").validate()
    with pytest.raises(UserError, match="compile must be off, on"):
        replace(setup, compile="fast").validate()
    with pytest.raises(UserError, match="peak_tflops"):
        replace(setup, peak_tflops=-1.0).validate()


def test_accelerate_state_is_renewed_when_the_device_choice_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook that converts with --device cpu, then auto, on a GPU machine (simulated)."""
    from accelerate.state import PartialState

    parallel.make_accelerator("cpu")
    assert PartialState._shared_state and PartialState().device.type == "cpu"
    parallel._forget_other_device("cpu")  # the same choice keeps the state
    assert PartialState._shared_state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    parallel._forget_other_device("auto")  # a GPU is visible and the state was forced to the CPU
    assert not PartialState._shared_state


def test_fused_adamw_matches_the_default(tmp_path: Path) -> None:
    """CUDA runs use fused AdamW; its step equals the for-each one (here on the CPU kernel)."""
    path = build_tiny_model("llama", tmp_path / "m")
    models = [AutoModelForCausalLM.from_pretrained(path) for _ in range(2)]
    cfg = TrainConfig(model=str(path), data="x", out="y", lr=1e-2, weight_decay=0.1)
    ids = torch.arange(12).reshape(2, 6) % 50
    for model, fused in zip(models, (False, True), strict=True):
        opt = _adamw(model, cfg, fused=fused)
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_training_matches_eager(setup: TrainConfig, tmp_path: Path) -> None:  # noqa: F811
    """torch.compile's capture (aot_eager: dynamo and AOT autograd, no C++ compiler) trains the
    same weights, and the written folder has the plain parameter names."""
    from torch._dynamo.utils import counters

    eager = train(replace(setup, steps=2, out=str(tmp_path / "eager")))
    counters.clear()
    compiled = train(replace(setup, steps=2, out=str(tmp_path / "compiled"), compile="aot_eager"))
    assert counters["stats"]["unique_graphs"] >= 1  # the forward was captured, not run eagerly
    we, wc = weights(Path(eager.out)), weights(Path(compiled.out))
    assert we.keys() == wc.keys()
    for name in we:
        torch.testing.assert_close(we[name], wc[name], rtol=1e-4, atol=1e-5)
