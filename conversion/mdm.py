"""What turns an AR checkpoint into an MDM checkpoint, besides training: the mask token and the files.

Absorbing diffusion needs a token that means "unknown". Two policies:

* "add": the tokenizer's own mask token if it has a usable one; otherwise a new special token
  "<|mask|>" is added to the tokenizer. If the embedding matrix has no spare row for it, it is
  resized; the new input-embedding row is set to the MEAN of the existing rows (a neutral starting
  point the network already knows how to process), and so is the LM-head row when the head is not
  tied to the embedding (a tied head shares the row).
* an existing id (e.g. an unused reserved token): nothing is changed; the id is only recorded.

Either way the id must not be the tokenizer's pad, bos or eos id (they occur in training rows).
A tokenizer or model that cannot take a mask token (no way to add one, an addition that does not
give the token exactly one id of its own, embeddings that cannot be resized) raises
`MaskTokenError`, a UserError that says to pass an unused existing id instead, before training.

An MDM checkpoint is an ordinary HF folder (safetensors weights, config with is_causal = False so
any transformers code attends bidirectionally, tokenizer with the mask token) plus `ar2mdm.json`
(`ModelMeta` with kind "mdm", mask_id, shift, noise, schedule, block_size, and training details
in `extra`). `load_mdm` reads it back, safetensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Shaped
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ar2mdm.common.errors import CheckpointError, UserError
from ar2mdm.common.families import detect_family, gguf_family, split_format
from ar2mdm.common.hub import localize
from ar2mdm.common.metadata import META_FILE, ModelMeta, require_kind
from ar2mdm.common.modeling import loading_options
from ar2mdm.common.placement import Placement, dispatch, is_dispatched, placement_options
from ar2mdm.diffusion.attention import make_bidirectional
from conversion.gguf_mdm import load_gguf_mdm
from conversion.hf_folder import Loaded, load_hf_folder
from conversion.published import load_published

MASK_TOKEN = "<|mask|>"
# Roles whose ids occur in training rows (document separators, padding): a mask id equal to one
# of them would make clean tokens indistinguishable from masked ones.
RESERVED_ROLES = ("pad", "bos", "eos")
_USE_AN_ID = "pass --mask-token ID (TrainConfig.mask_token) with the id of an unused token the model already has"


class MaskTokenError(UserError):
    """The model or tokenizer cannot take a mask token as asked; the message says what to pass."""


def add_mask_token(model: PreTrainedModel, tokenizer: Any, policy: str | int = "add") -> int:
    """Give the model a mask token according to `policy` ("add" or an existing id); return its id.

    "add" reuses the tokenizer's own mask token if it has one that is free (not its pad, bos or
    eos token) and inside the embedding. Otherwise it adds the special token "<|mask|>" to the
    tokenizer; if that token is new, or has no embedding row yet, its rows are initialised (and
    the embeddings resized when needed) to the mean of the rows before it. An existing "<|mask|>"
    with a row is used as it is. An id (int or digit string) must be inside the embedding and
    not the pad, bos or eos id.

    Raises MaskTokenError (a UserError) before anything is trained when the tokenizer cannot
    take the token (no way to add one, or adding does not give it exactly one id of its own), when
    the id would collide with pad/bos/eos, or when the embedding cannot be resized.
    """
    n_rows = _embedding_rows(model)
    if isinstance(policy, str) and policy != "add":
        if not policy.strip().isdigit():
            raise UserError(f"mask token policy {policy!r} is neither 'add' nor a token id (a non-negative integer).")
        policy = int(policy)
    if isinstance(policy, int):
        if not 0 <= policy < n_rows:
            raise UserError(
                f"mask token id {policy} is outside the model's vocabulary (0..{n_rows - 1}); pick "
                "an unused id inside it, or use 'add'."
            )
        _check_free(tokenizer, policy, f"mask token id {policy}", "pick an unused id, or use 'add'")
        return policy

    existing = getattr(tokenizer, "mask_token_id", None)
    if isinstance(existing, int) and 0 <= existing < n_rows and not _roles_of(tokenizer, existing):
        # The tokenizer already reserves a mask token (the model organism does): use it as is.
        return existing

    mask_id, new = _add_to_tokenizer(tokenizer)
    _check_free(tokenizer, mask_id, f"the id {mask_id} that {MASK_TOKEN} got", _USE_AN_ID)
    if not new and mask_id < n_rows:
        return mask_id  # "<|mask|>" was already a token with its own row: keep the row
    n_old = min(n_rows, mask_id)  # rows that hold real (trained) tokens
    with torch.no_grad():
        inp = model.get_input_embeddings().weight
        mean_in = inp[:n_old].mean(0).clone()
        out = model.get_output_embeddings()
        tied = out is None or out.weight.data_ptr() == inp.data_ptr()
        mean_out = None if tied else out.weight[:n_old].mean(0).clone()
        mean_bias = None
        if out is not None and getattr(out, "bias", None) is not None:
            mean_bias = out.bias[:n_old].mean().clone()
    if mask_id >= n_rows:
        _resize(model, mask_id + 1)
    with torch.no_grad():
        model.get_input_embeddings().weight[mask_id] = mean_in
        out = model.get_output_embeddings()
        if mean_out is not None:
            out.weight[mask_id] = mean_out
        if mean_bias is not None:
            out.bias[mask_id] = mean_bias
    return mask_id


def _embedding_rows(model: PreTrainedModel) -> int:
    try:
        emb = model.get_input_embeddings()
        return int(emb.weight.shape[0])
    except (AttributeError, NotImplementedError, TypeError) as err:
        raise MaskTokenError(
            f"{type(model).__name__} exposes no input embedding matrix (get_input_embeddings: "
            f"{type(err).__name__}: {err}), so no mask token can be given to it."
        ) from err


def _roles_of(tokenizer: PreTrainedTokenizerBase, token_id: int) -> list[str]:
    """The reserved roles (pad/bos/eos) whose id is `token_id`."""
    return [role for role in RESERVED_ROLES if getattr(tokenizer, f"{role}_token_id", None) == token_id]


def _check_free(tokenizer: PreTrainedTokenizerBase, token_id: int, what: str, fix: str) -> None:
    roles = _roles_of(tokenizer, token_id)
    if roles:
        raise MaskTokenError(
            f"{what} is the tokenizer's {'/'.join(roles)} token, which occurs in the training rows; "
            f"the mask must be a token of its own: {fix}."
        )


def _add_to_tokenizer(tokenizer: Any) -> tuple[int, bool]:
    """Add MASK_TOKEN as the tokenizer's mask token; return (its id, whether it is new).

    Checked: the tokenizer grows by at most one token, the token maps to one int id that maps back
    to it, a new token's id is fresh (no other token has it) and an existing one is not unk's id.
    """
    cannot = f"the tokenizer ({type(tokenizer).__name__}) cannot take a new mask token"
    if not all(
        callable(getattr(tokenizer, name, None))
        for name in ("add_special_tokens", "convert_tokens_to_ids", "convert_ids_to_tokens")
    ):
        raise MaskTokenError(f"{cannot}: it has no add_special_tokens/convert_tokens_to_ids; {_USE_AN_ID}.")
    try:
        size = len(tokenizer)
        added = tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
        mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
        back = tokenizer.convert_ids_to_tokens(mask_id) if isinstance(mask_id, int) else None
        holders = (
            sorted(t for t, i in tokenizer.get_vocab().items() if i == mask_id)
            if isinstance(mask_id, int) and callable(getattr(tokenizer, "get_vocab", None))
            else [MASK_TOKEN]
        )
        grown = len(tokenizer) - size
    except Exception as err:  # a tokenizer's own refusal, whatever its type
        raise MaskTokenError(f"{cannot} ({type(err).__name__}: {err}); {_USE_AN_ID}.") from err
    if not isinstance(mask_id, int) or isinstance(mask_id, bool) or mask_id < 0:
        raise MaskTokenError(f"{cannot}: {MASK_TOKEN} maps to {mask_id!r}, not one id; {_USE_AN_ID}.")
    unk = getattr(tokenizer, "unk_token_id", None)
    # What counts is the ids, not `added` (a fast tokenizer counts re-marking an existing token).
    single = (grown == 1 and holders == [MASK_TOKEN]) or (grown == 0 and mask_id != unk)
    if not single or back != MASK_TOKEN:
        raise MaskTokenError(
            f"{cannot}: adding {MASK_TOKEN} did not give it a single id of its own (tokens added: "
            f"{added}, tokenizer size {size} -> {size + grown}, id {mask_id} -> token {back!r}"
            + (f", also held by {[t for t in holders if t != MASK_TOKEN]}" if len(holders) > 1 else "")
            + f"); {_USE_AN_ID}."
        )
    return mask_id, grown == 1


def _resize(model: PreTrainedModel, rows: int) -> None:
    """Resize input (and output) embeddings to `rows`, or raise MaskTokenError."""
    try:
        # mean_resizing=False: the caller sets the new row itself (exactly the mean, no random draw).
        model.resize_token_embeddings(rows, mean_resizing=False)
    except Exception as err:  # NotImplementedError, or a custom embedding class that refuses
        raise MaskTokenError(
            f"the embeddings of {type(model).__name__} cannot be resized to {rows} rows for a new mask "
            f"token ({type(err).__name__}: {err}); {_USE_AN_ID}."
        ) from err
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    short = [
        f"{name} has {int(m.weight.shape[0])}"
        for name, m in (("input embedding", inp), ("output head", out))
        if m is not None and int(m.weight.shape[0]) < rows
    ]
    if short:
        raise MaskTokenError(
            f"resizing the embeddings of {type(model).__name__} to {rows} rows did not take "
            f"({'; '.join(short)} rows); {_USE_AN_ID}."
        )


def save_mdm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    meta: ModelMeta,
    folder: str | Path,
    *,
    state_dict: dict[str, Shaped[Tensor, "*_shape"]] | None = None,
) -> Path:
    """Write an MDM checkpoint: HF folder (safetensors, is_causal=False) + ar2mdm.json (last).

    `state_dict` overrides the model's own (e.g. gathered from FSDP shards).
    """
    if meta.kind != "mdm":
        raise UserError(f"save_mdm writes MDM checkpoints; got meta.kind={meta.kind!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # An older ar2mdm.json would vouch for weights that are being replaced: remove it first, so
    # that a crash before the end leaves a folder that is recognisably incomplete.
    (folder / META_FILE).unlink(missing_ok=True)
    make_bidirectional(model)
    meta.source_format = "ar2mdm"  # what the folder now is, whatever the weights were read from
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    meta.save(folder)  # written last: its presence marks a complete checkpoint
    return folder


def load_mdm(
    path: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    role: str = "the checkpoint",
    block_size: int | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_folder: str | Path | None = None,
) -> Loaded:
    """Load an MDM: a folder written by `save_mdm` / `train` (with ar2mdm.json), a published MDM as
    downloaded (Dream, LLaDA, DiffuGPT, DiffuLLaMA, A2D, SDAR, Fast-dLLM v2: `ar2mdm.common.families`,
    read by `conversion.published`), a "FAMILY:PATH" source naming the family of a folder whose
    files do not, a Dream/LLaDA GGUF file (`conversion.gguf_mdm`), or any of these by hub id
    ("org/name[@revision]", "FAMILY:org/name": `ar2mdm.common.hub`).

    Returns model (eval, bidirectional), tokenizer, and its `ModelMeta` (kind "mdm";
    `source_format` says which of the above it was). dtype / device: parameters' dtype and device.
    block_size: the block size of a published block-diffusion checkpoint whose files do not state
    it. Raises CheckpointError if it is not an MDM (`metadata.require_kind`; `role` says what the
    caller uses it as), or if its files are incomplete or inconsistent; UserError for a dtype or
    device that is not one (`ar2mdm.common.modeling.loading_options`). device_map / max_memory /
    offload_folder: spread it over devices, CPU memory and disk (`conversion.checkpoints.load_ar`).
    """
    dtype, device, _ = loading_options(dtype, device)
    placement = placement_options(device_map, max_memory, offload_folder, device=device)
    path, hub = localize(path)
    loaded = _load_local_mdm(path, dtype=dtype, device=device, role=role, block_size=block_size, placement=placement)
    if placement and not is_dispatched(loaded.model):  # a published layout or a GGUF, read on the CPU
        dispatch(loaded.model, placement, dtype=dtype)  # in place (accelerate adds hooks, moves weights)
    return loaded.from_hub(hub)


def _load_local_mdm(
    path: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    role: str,
    block_size: int | None,
    placement: Placement,
) -> Loaded:
    forced, plain = split_format(str(path)) if isinstance(path, str) else (None, path)
    folder = Path(plain).expanduser()
    if folder.is_file() and folder.suffix.lower() == ".gguf":
        if gguf_family(folder) is None:
            require_kind(folder, "mdm", role)  # raises: a GGUF of an AR architecture
        return load_gguf_mdm(folder, dtype=dtype, device=device)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a folder; an MDM checkpoint is a folder (ar2mdm.json, or a published "
            "MDM's files as downloaded) or a Dream/LLaDA .gguf file."
        )
    require_kind(path, "mdm", role)
    if not (folder / META_FILE).is_file():
        family = forced or detect_family(folder)
        if family is not None:
            return load_published(folder, family, dtype=dtype, device=device, block_size=block_size)
    meta = ModelMeta.load(folder)
    meta.source_format = meta.source_format or "ar2mdm"
    model, tokenizer = load_hf_folder(folder, dtype=dtype, device=device, placement=placement)
    if getattr(model.config, "is_causal", True):
        raise CheckpointError(
            f"{folder}/config.json has is_causal true: the folder was changed after training; "
            "an MDM must attend bidirectionally."
        )
    if not placement:
        model.to(device)
    model.eval()
    return Loaded(model=model, tokenizer=tokenizer, meta=meta)
