"""Model FLOPs utilisation (MFU) of a conversion run: the FLOPs a training step needs, per token,
against the device's peak.

The count follows the PaLM paper's appendix B (Chowdhery et al. 2022): a forward and backward pass
costs 6 FLOPs per weight of every matrix multiply and token, plus 12 * layers * heads * head_dim *
seq_len per token for the attention scores and their weighted sum. Embeddings are lookups (no
FLOPs); the LM head is a matrix multiply (counted even when tied to the embedding). Norm weights
and biases are counted as if they were matrix weights (well under 0.1% of a real model). An MDM row
attends to all of its seq_len tokens, so the attention term uses seq_len, not the causal half
(PaLM counts seq_len for causal models too, so figures are comparable with published MFU).
Recomputation (activation checkpointing) is not counted: MFU, not hardware FLOPs utilisation.

Peaks are the dense bf16 tensor-core figures of the vendors' data sheets, matched by the name
torch reports for the GPU; `--peak-tflops` sets one for any other device (the CPU has none, so a
CPU run logs TFLOP/s and no MFU).
"""

from __future__ import annotations

import torch

# Fields of a train.jsonl record that measure time, not the run (they differ between equal runs).
TIMING_FIELDS = ("tokens_per_s", "tflops", "mfu")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; the first
# name contained in torch.cuda.get_device_name() wins, so longer names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("H200", 989.4),
    ("H20", 148.0),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def matmul_parameters(model: torch.nn.Module, *, trained: bool | None = None) -> int:
    """Weights that take part in a matrix multiply per token (int): every parameter but those of
    embedding lookups (token and learned position embeddings), plus the LM head, also when it is
    tied to the token embedding. trained: count only the weights that get a gradient (True), only
    the frozen ones (False), or all (None). peft's trainable-token row (one d_model vector per
    trained embedding row under LoRA) counts as a weight: negligible."""

    def counted(p: torch.nn.Parameter) -> bool:
        return trained is None or p.requires_grad == trained

    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = sum(p.numel() for p in model.parameters() if id(p) not in lookups and counted(p))
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) in lookups and counted(head.weight):
        total += head.weight.numel()
    return total


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of a row of `seq_len` tokens (PaLM, app. B):
    6 per weight that trains (forward 2, gradient of the input 2, of the weight 2), 4 per frozen
    weight (no weight gradient: the base weights of a LoRA conversion), plus attention's
    12 L H Q T.

    Raises ValueError for seq_len < 1.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attention = 12.0 * cfg.num_hidden_layers * heads * head_dim * seq_len
    return 6.0 * matmul_parameters(model) - 2.0 * matmul_parameters(model, trained=False) + attention


def peak_tflops(device: torch.device, override: float = 0.0) -> float | None:
    """The dense bf16 peak (TFLOP/s) of `device`: `override` when > 0, the data-sheet figure of a
    known GPU, else None (CPUs and unknown GPUs: no MFU is logged)."""
    if override > 0:
        return override
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def utilisation(tokens_per_s: float, per_token: float, peak: float | None) -> dict[str, float]:
    """Log fields from the run's tokens/s (all processes together): achieved TFLOP/s and, when
    `peak` (TFLOP/s of all the run's devices together) is known, MFU = achieved / peak."""
    achieved = tokens_per_s * per_token / 1e12
    out = {"tflops": achieved}
    if peak:
        out["mfu"] = achieved / peak
    return out
