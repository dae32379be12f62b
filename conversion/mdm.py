"""What turns an AR checkpoint into an MDM checkpoint, besides training: the mask token and the files.

Absorbing diffusion needs a token that means "unknown". Two policies:

* "add": a new special token "<|mask|>" is added to the tokenizer. If the embedding matrix has no
  spare row for it, it is resized; the new input-embedding row is set to the MEAN of the existing
  rows (a neutral starting point the network already knows how to process), and so is the LM-head
  row when the head is not tied to the embedding (a tied head shares the row).
* an existing id (e.g. an unused reserved token): nothing is changed; the id is only recorded.

An MDM checkpoint is an ordinary HF folder (safetensors weights, config with is_causal = False so
any transformers code attends bidirectionally, tokenizer with the mask token) plus `ar2mdm.json`
(`ModelMeta` with kind "mdm", mask_id, shift, noise, schedule, block_size, and training details
in `extra`). `load_mdm` reads it back, safetensors only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from conversion.attention import make_bidirectional
from conversion.checkpoints import Loaded, load_hf_folder
from conversion.errors import CheckpointError, UserError
from conversion.metadata import ModelMeta

MASK_TOKEN = "<|mask|>"


def add_mask_token(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, policy: str | int = "add"
) -> int:
    """Give the model a mask token according to `policy` ("add" or an existing id); return its id.

    "add" reuses the tokenizer's own mask token if it has one; otherwise it mutates the tokenizer (new special token) and, if needed, the model (resized embeddings,
    new rows = mean of the old ones). An id (int or digit string) must be < the embedding size.
    """
    n_rows = model.get_input_embeddings().weight.shape[0]
    if isinstance(policy, str) and policy != "add":
        if not policy.strip().isdigit():
            raise UserError(
                f"mask token policy {policy!r} is neither 'add' nor a token id (a non-negative integer)."
            )
        policy = int(policy)
    if isinstance(policy, int):
        if not 0 <= policy < n_rows:
            raise UserError(
                f"mask token id {policy} is outside the model's vocabulary (0..{n_rows - 1}); pick "
                "an unused id inside it, or use 'add'."
            )
        return policy

    existing = getattr(tokenizer, "mask_token_id", None)
    if existing is not None and 0 <= int(existing) < n_rows:
        # The tokenizer already reserves a mask token (the model organism does): use it as is.
        return int(existing)
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
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
        # mean_resizing=False: we set the new row ourselves (exactly the mean, no random draw).
        model.resize_token_embeddings(mask_id + 1, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[mask_id] = mean_in
        out = model.get_output_embeddings()
        if mean_out is not None:
            out.weight[mask_id] = mean_out
        if mean_bias is not None:
            out.bias[mask_id] = mean_bias
    return mask_id


def save_mdm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    meta: ModelMeta,
    folder: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an MDM checkpoint: HF folder (safetensors, is_causal=False) + ar2mdm.json (last).

    `state_dict` overrides the model's own (e.g. gathered from FSDP shards).
    """
    if meta.kind != "mdm":
        raise UserError(f"save_mdm writes MDM checkpoints; got meta.kind={meta.kind!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_bidirectional(model)
    model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    meta.save(folder)  # written last: its presence marks a complete checkpoint
    return folder


def load_mdm(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Loaded:
    """Load an MDM checkpoint written by `save_mdm` / `train`: model (eval, bidirectional),
    tokenizer, and its `ModelMeta` (kind "mdm"). Raises CheckpointError if it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; an MDM checkpoint is a folder with ar2mdm.json.")
    meta = ModelMeta.load(folder)
    if meta.kind != "mdm":
        raise CheckpointError(
            f"{folder} holds a {meta.kind!r} checkpoint, not an MDM; load it with checkpoints.load_ar."
        )
    model, tokenizer = load_hf_folder(folder, dtype=dtype)
    if getattr(model.config, "is_causal", True):
        raise CheckpointError(
            f"{folder}/config.json has is_causal true: the folder was changed after training; "
            "an MDM must attend bidirectionally."
        )
    model.to(device)
    model.eval()
    return Loaded(model=model, tokenizer=tokenizer, meta=meta)
