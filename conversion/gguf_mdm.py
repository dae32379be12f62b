"""Dream and LLaDA GGUF files (llama.cpp's diffusion architectures) read as MDMs.

llama.cpp's `diffusion-cli` runs Dream and LLaDA from GGUF files whose architecture is "dream" or
"llada" (ggml-org/llama.cpp: conversion/dream.py, conversion/llada.py). transformers reads GGUF
only for autoregressive architectures, so this module reads these two itself, with the `gguf`
package: hyper-parameters from `{arch}.*` keys into the family's transformers config (Qwen2 for
Dream, Llama for LLaDA), tensors dequantised one at a time into the model's parameters (the model
is allocated once, in `dtype`, without random initialisation; no second copy of the weights),
the tokenizer from the `tokenizer.ggml.*` keys (transformers' GGUF tokenizer conversion), and the
diffusion metadata:

- mask id: `tokenizer.ggml.mask_token_id` (required, as diffusion-cli requires it);
- shift: `diffusion.shift_logits` when present (LLaDA's converter writes false); absent, the
  family's published value (Dream: true);
- Q/K rows: llama.cpp permutes LLaDA's q/k projections into its interleaved rotary layout
  (LLAMA_ROPE_TYPE_NORM) and leaves Dream's alone (NEOX); the permutation is undone here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ar2mdm.common.errors import CheckpointError
from ar2mdm.common.families import gguf_architecture_of, gguf_family
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.diffusion.attention import make_bidirectional
from conversion.hf_folder import Loaded, fill_pad_token
from conversion.memory import check_fits

# llama.cpp's architecture of the transformers class each family loads into (for tensor names).
GGUF_BASE_ARCH = {"qwen2": "QWEN2", "llama": "LLAMA"}
# Families whose q/k rows llama.cpp's converter permutes (interleaved rotary pairs).
PERMUTED_QK = ("llada",)


def load_gguf_mdm(
    file: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Loaded:
    """Load a Dream or LLaDA GGUF file as an MDM: model (eval, bidirectional), tokenizer, meta
    (`source_format` "gguf:dream" / "gguf:llada", mask id and shift from the file's metadata).

    Raises CheckpointError for a GGUF of another architecture, one without a mask token id, or
    one whose tensors do not fill the model its header describes.
    """
    import gguf  # only GGUF sources need it

    file = Path(file)
    family = gguf_family(file)
    if family is None:
        raise CheckpointError(
            f"{file} is a GGUF of architecture {gguf_architecture_of(file)!r}, not a diffusion LM "
            "llama.cpp knows (dream, llada). Load an AR GGUF as the ARM (--ar / --model) instead."
        )
    reader = gguf.GGUFReader(file)
    arch = family.gguf_arch

    def value(key: str, default=None):
        field = reader.fields.get(key)
        if field is None:
            return default
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(field.parts[field.data[0]]).decode("utf-8")
        return field.parts[field.data[0]].tolist()[0]

    need = {
        "hidden_size": f"{arch}.embedding_length",
        "num_hidden_layers": f"{arch}.block_count",
        "intermediate_size": f"{arch}.feed_forward_length",
        "num_attention_heads": f"{arch}.attention.head_count",
    }
    values = {k: value(key) for k, key in need.items()}
    missing = [need[k] for k, v in values.items() if v is None]
    if missing:
        raise CheckpointError(
            f"{file} lacks the GGUF keys {missing}: it is damaged or was not written by llama.cpp's converter."
        )
    tensors = {t.name: t for t in reader.tensors}
    n_vocab = int(tensors["token_embd.weight"].shape[-1]) if "token_embd.weight" in tensors else None
    if n_vocab is None:
        raise CheckpointError(f"{file} has no token_embd.weight tensor: it is not a complete {family.title} GGUF.")
    config = CONFIG_MAPPING[family.base](
        **values,
        num_key_value_heads=value(f"{arch}.attention.head_count_kv", values["num_attention_heads"]),
        rms_norm_eps=value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=value(f"{arch}.rope.freq_base", 10000.0),
        max_position_embeddings=value(f"{arch}.context_length", 4096),
        vocab_size=n_vocab,
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=value("tokenizer.ggml.bos_token_id"),
        eos_token_id=value("tokenizer.ggml.eos_token_id"),
        pad_token_id=value("tokenizer.ggml.padding_token_id"),
    )
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    check_fits(n_params, dtype, device, n_vocab * values["hidden_size"], f"{family.title} GGUF {file.name}")
    from transformers.initialization import no_init_weights

    with no_init_weights(), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, GGUF_BASE_ARCH[family.base]), config.num_hidden_layers)
    params = dict(model.named_parameters())
    placed: set[str] = set()
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    for name, param in params.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        tensor = tensors.get(gguf_name or "")
        if tensor is None:
            raise CheckpointError(
                f"{file} has no tensor {gguf_name!r} (for {name}): the file is incomplete or its header "
                "does not match its tensors. Convert the checkpoint again."
            )
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(param.shape))
        kind = name.rsplit(".", 2)[-2]
        if family.name in PERMUTED_QK and kind in heads:
            array = _undo_llama_cpp_permute(array, heads[kind])
        with torch.no_grad():
            param.copy_(torch.tensor(array))  # a copy: the memory-mapped array is read-only
        placed.add(gguf_name)
    unplaced = sorted(set(tensors) - placed - {"rope_freqs.weight"})
    if unplaced:
        raise CheckpointError(
            f"{file} holds tensors a {family.title} model of its header does not have ({unplaced[:3]}): "
            "ar2mdm does not read this variant."
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    make_bidirectional(model)
    model.eval()
    tokenizer = _gguf_tokenizer(file)
    mask_id = value("tokenizer.ggml.mask_token_id")
    if mask_id is None:
        raise CheckpointError(
            f"{file} has no tokenizer.ggml.mask_token_id: a diffusion GGUF must name its mask token "
            "(llama.cpp's diffusion-cli requires it too). Convert the checkpoint again with a current llama.cpp."
        )
    if not 0 <= mask_id < n_vocab:
        raise CheckpointError(f"{file}: the mask token id {mask_id} is outside the {n_vocab}-row embedding.")
    shift_key = value("diffusion.shift_logits")
    shift = family.shift if shift_key is None else bool(shift_key)
    if getattr(tokenizer, "mask_token", None) is None:
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(int(mask_id))
    meta = ModelMeta(
        kind="mdm",
        source=str(file),
        family=config.model_type,
        shift=shift,
        mask_id=int(mask_id),
        source_format=f"gguf:{family.name}",
        extra={
            "published": family.title,
            "mask_id_from": "tokenizer.ggml.mask_token_id",
            "shift_from": "family table" if shift_key is None else "diffusion.shift_logits",
            "attention": "bidirectional",
            "n_params": n_params,
        },
    )
    return Loaded(model=model, tokenizer=tokenizer, meta=meta)


def _undo_llama_cpp_permute(array: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation: interleaved rotary pairs back to rotate-half halves.

    llama.cpp writes rows reshaped (heads, 2, d/2) and swapped to (heads, d/2, 2); this swaps back.
    """
    rows = array.shape[0]
    return array.reshape(n_heads, rows // n_heads // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def _gguf_tokenizer(file: Path) -> PreTrainedTokenizerFast:
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(file.parent, gguf_file=file.name)
    except Exception as err:
        raise CheckpointError(
            f"Could not read the tokenizer stored in {file} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from err
    fill_pad_token(tokenizer)
    return tokenizer
