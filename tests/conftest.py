"""Shared fixtures: tiny, random-initialised models of every supported decoder family.

Tests never download anything. `make_tiny_model(family, out_dir)` builds a 2-layer model of the
given HF family (small enough to load in milliseconds), saves it as safetensors together with a
word-level tokenizer built on the spot, and returns the folder: exactly what a user's local HF
checkpoint looks like. Add new shared fixtures here.
"""

from __future__ import annotations

import offline_env  # noqa: F401  (HF offline flags for the test process; see its docstring)
import suite_typecheck  # noqa: F401  (beartype loads before any library patches `object`; see its docstring)

# isort: split
import json
import textwrap
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "mistral")

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
# Enough words for IOI / Greater-Than / induction style prompts; digits are single tokens.
WORDS = (
    "When Mary and John went to the store , gave a drink to . Then Alice Bob Tom Sarah "
    "had long argument afterwards said the war lasted from year 17 18 19 "
    "is was in of on at it he she they we you I yes no what who why "
    "0 1 2 3 4 5 6 7 8 9 + - * = ( )"
).split()

D_MODEL, N_HEADS, N_KV_HEADS, N_LAYERS, D_MLP, MAX_POS = 32, 4, 2, 2, 64, 128


def _training_text() -> list[str]:
    """A tiny corpus in which every word of WORDS occurs often, with and without a leading space."""
    line = " ".join(WORDS)
    return [line, " " + line] * 4 + [f"{w} {w} {w}" for w in WORDS]


def tiny_tokenizer(pad_token: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (the GPT-2 / Llama-3 / Qwen scheme) trained on `WORDS`.

    Byte-level so that transformers' family-specific tokenizer classes (Qwen2Tokenizer is forced
    for qwen2 folders) rebuild it faithfully; every word, with or without a leading space, is a
    single token. Training is deterministic. pad_token=False leaves pad unset, as many released
    AR tokenizers do.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,  # a ceiling: training stops once every word is a single token
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if pad_token else None,
    )


def tiny_config(family: str, vocab_size: int) -> PretrainedConfig:
    """A 2-layer config of `family` with d_model 32, 4 heads and 2 KV heads where supported."""
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    llama_like = dict(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        max_position_embeddings=MAX_POS,
        **ids,
    )
    # Gemma: one sliding and one global layer with a short window, so both code paths run.
    gemma = dict(
        llama_like,
        head_dim=D_MODEL // N_HEADS,
        query_pre_attn_scalar=D_MODEL // N_HEADS,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )
    makers: dict[str, Callable[[], PretrainedConfig]] = {
        "llama": lambda: LlamaConfig(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**llama_like),
        "qwen3": lambda: Qwen3Config(**llama_like, head_dim=D_MODEL // N_HEADS),
        "gemma2": lambda: Gemma2Config(**gemma),
        "gemma3_text": lambda: Gemma3TextConfig(**gemma),
        "gpt2": lambda: GPT2Config(
            vocab_size=vocab_size,
            n_embd=D_MODEL,
            n_layer=N_LAYERS,
            n_head=N_HEADS,
            n_positions=MAX_POS,
            n_inner=D_MLP,
            **ids,
        ),
    }
    if family not in makers:
        raise ValueError(f"unknown test family {family!r}; known: {sorted(makers)}")
    return makers[family]()


def build_tiny_model(
    family: str, out_dir: Path, *, vocab_size: int | None = None, seed: int = 0, pad_token: bool = True
) -> Path:
    """Save a random tiny `family` model (safetensors) and its tokenizer to `out_dir`; return it.

    vocab_size defaults to the tokenizer's size; a larger value pads the embedding matrix (real
    checkpoints often have more rows than tokens).
    """
    tokenizer = tiny_tokenizer(pad_token=pad_token)
    n_tokens = len(tokenizer)
    vocab_size = n_tokens if vocab_size is None else vocab_size
    if vocab_size < n_tokens:
        raise ValueError(f"vocab_size {vocab_size} < tokenizer size {n_tokens}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size), dtype=torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def add_gguf_vocab(writer: gguf.GGUFWriter, tok: dict) -> dict[str, int]:
    """Write the byte-level BPE vocabulary of `tok` (a tokenizer.json of `tiny_tokenizer`, added
    tokens included) as llama.cpp's converter does: model "gpt2", tokens by id, special added
    tokens as CONTROL, merges, and the pad / bos / eos / unk ids. Returns token -> id."""
    vocab = dict(tok["model"]["vocab"])
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tok["added_tokens"] if t.get("special")}
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_pad_token_id(vocab["<pad>"])
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_unk_token_id(vocab["<unk>"])
    return vocab


def write_llama_gguf(folder: Path, out_file: Path) -> Path:
    """Write the tiny llama model in `folder` (from `build_tiny_model`) as an F32 GGUF file.

    What llama.cpp's converter does, for this one case: llama hyper-parameters and the byte-level
    BPE vocabulary as GGUF metadata, tensors under GGUF names, and q/k projections permuted to
    llama.cpp's rotary layout (transformers undoes the permutation when it reads the file).
    """
    cfg = json.loads((folder / "config.json").read_text())
    if cfg["model_type"] != "llama":
        raise ValueError(f"write_llama_gguf writes llama models only, got {cfg['model_type']}")
    tok = json.loads((folder / "tokenizer.json").read_text())
    n_layers, n_head, n_kv = (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"])

    def to_llama_cpp_rope(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(cfg["vocab_size"])

    add_gguf_vocab(writer, tok)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for name, tensor in load_file(folder / "model.safetensors").items():
        array = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            array = to_llama_cpp_rope(array, n_head)
        elif name.endswith("k_proj.weight"):
            array = to_llama_cpp_rope(array, n_kv)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def ship_marker_code(folder: Path, marker: Path) -> Path:
    """Make the model `folder` name code shipped inside it (config.json's auto_map): a config module
    that writes `marker` when imported, so a test sees whether the folder's code ever ran
    (trust_remote_code). Returns `folder`."""
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    code += "from transformers import LlamaConfig\n\nclass MarkerConfig(LlamaConfig):\n    model_type = 'marker_lm'\n"
    (folder / "configuration_marker.py").write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="marker_lm",
        architectures=["MarkerForCausalLM"],
        auto_map={"AutoConfig": "configuration_marker.MarkerConfig"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_script(path: Path, cfg: Any, kill_at: int | None = None) -> Path:
    """Write a Python script to `path` that runs `conversion.train.train(cfg)` (cfg: a TrainConfig)
    in a process of its own (plain, or under `accelerate launch`); with `kill_at` the process
    kills itself with SIGKILL right after that step (a hard crash: no checkpoint, no cleanup)."""
    repo = Path(__file__).resolve().parents[1]
    path.write_text(
        textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(repo)!r})
        from conversion.train import TrainConfig, train
        cfg = TrainConfig(**json.loads({json.dumps(json.dumps(asdict(cfg)))}))
        kill_at = {kill_at!r}
        def hook(done):
            if kill_at is not None and done == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        train(cfg, on_step=hook)
    """)
    )
    return path


@pytest.fixture
def make_tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture: `make_tiny_model(family, tmp_path, vocab_size=None, seed=0, pad_token=True)`.

    The folder defaults to `tmp_path / family` when the second argument is omitted.
    """

    def make(family: str, out_dir: Path | None = None, **kwargs) -> Path:
        return build_tiny_model(family, (out_dir or tmp_path) / family, **kwargs)

    return make


@pytest.fixture
def unchecked_types():
    """The run-time shape and type checks (on for the whole suite: pyproject's addopts) off for
    this test (`suite_typecheck.unchecked`)."""
    from suite_typecheck import unchecked

    with unchecked():
        yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after it: the hand-set models are tiny, and a second
    thread only adds overhead (a lot when the other core is busy). Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
