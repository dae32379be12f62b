"""A plain-torch forward pass of four mixture-of-experts diffusion LM families, read straight from their checkpoints.

It takes the tensors under the names each family publishes and follows each family's own modeling
code. It does not use transformers, so the tests can compare it with transformers' Qwen3MoeForCausalLM
and Glm4MoeForCausalLM. Everything runs in float64. The rules, and where each comes from (line numbers
are approximate):

Common (all four):
  RMSNorm is y = w * x / sqrt(mean(x^2) + eps). Experts are SiLU-gated: down(silu(gate x) * up x).
  Attention uses GQA (each kv head repeated), scale 1/sqrt(head_dim) and a softmax. RoPE is
  rotate-half: inv_freq = theta^(-arange(0, rot, 2)/rot), cos/sin = cat(angles, angles), applied to
  the first `rot` dims of each head. The q/k norms are RMSNorms over head_dim, one per head, applied
  before RoPE.

LLaDA-MoE (model_type "llada", architectures ["LLaDAMoEModelLM"]), from ZHZisZZ/dllm
dllm/pipelines/llada/models/modeling_lladamoe.py and configuration_lladamoe.py (the same code as
inclusionAI/dInfer tools/modeling_fused_lladamoe.py):
  - Attention is bidirectional (is_causal=False, ~339).
  - head_dim = hidden_size // num_attention_heads (~332).
  - q_norm/k_norm exist iff qk_layernorm (~351-375). Then q/k/v are clamped if clip_qkv is set (~378-381).
  - Rotary covers int(head_dim * partial_rotary_factor) dims (~238-275).
  - A layer is MoE iff moe_layer_freq[i] != 0 (~719). Dense layers use dense_intermediate_size.
  - Router: softmax over all experts, plus mlp.expert_bias if the checkpoint holds it (the biased
    values are the weights), then top-k. There is no renormalisation: norm_topk_prob is hard-coded
    False (~663-683).
  - MoE layers have a shared expert (layers.{i}.shared_expert) iff shared_expert_intermediate_size
    is set (~726, ~795).

LLaDA2.x (model_type "llada2_moe"), from ZHZisZZ/dllm dllm/pipelines/llada2/models/modeling_llada2_moe.py
(the same gate as inclusionAI/dInfer python/dinfer/model/modeling_llada2_moe.py ~494-546):
  - attention.query_key_value holds all q heads, then all k heads, then all v heads (~451-499).
  - query/key_layernorm are applied iff use_qk_norm.
  - Rotary covers int(head_dim * partial_rotary_factor) dims (~184-195).
  - Layers i < first_k_dense_replace are dense.
  - Gate (~214-283): sigmoid; choice = scores + expert_bias; each of n_group groups scores the sum
    of its top-2 choice values; keep topk_group groups; take the top-k choice values among the kept
    experts. The weights are the unbiased scores, divided by their sum + 1e-20 (if k > 1), times
    routed_scaling_factor.
  - shared_experts is added (~315-340).
  - Attention is block-causal, block 32 (generate() ~1276, ~1349-1358).
  - num_key_value_heads 0 means num_attention_heads (the llada21 copy).

RND1 (model_type "rnd1"), from RadicalNumerics/RND1 rnd/modeling_rnd.py (Qwen3-MoE blocks):
  - Attention is bidirectional (~103, ~158-166).
  - Every layer is MoE (~187-198).
  - Router: softmax, top-k, renormalise iff norm_topk_prob (~297-309).
  - The logits are plain here. The one-position shift belongs to its sampler (rnd/sampling.py ~220).

SDAR-MoE (model_type "sdar_moe"), from InternLM/lmdeploy pytorch/models/sdar_moe.py and
pytorch/configurations/sdar.py, sgl-project/sglang srt/dllm/config.py, and JetAstra/SDAR
generate.py ~84-86:
  - Same tensors and router as RND1.
  - A layer is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
  - Attention is block-causal, with block config["block_size"] (default 4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

Tensors = dict[str, torch.Tensor]
Routing = dict[int, tuple[torch.Tensor, torch.Tensor]]
FAMILIES = ("llada", "llada2_moe", "rnd1", "sdar_moe")


class _Layout:
    """What differs between the families, read from one config.json."""

    def __init__(self, cfg: dict, block_size: int | None) -> None:
        family = cfg.get("model_type")
        if family == "llada" and "LLaDAMoEModelLM" not in cfg.get("architectures", []):
            raise ValueError(f"model_type 'llada' with architectures {cfg.get('architectures')} is not LLaDA-MoE")
        if family not in FAMILIES:
            raise ValueError(f"unknown mixture-of-experts family: model_type {family!r}")
        self.family: str = family
        n = cfg["num_hidden_layers"]
        self.n_layers: int = n
        self.heads: int = cfg["num_attention_heads"]
        self.kv_heads: int = cfg.get("num_key_value_heads") or self.heads  # LLaDA2.1: 0 means all heads
        self.eps: float = cfg["rms_norm_eps"]
        self.theta: float = cfg["rope_theta"]
        self.top_k: int = cfg["num_experts_per_tok"]
        self.n_experts: int = cfg["num_experts"]
        self.clip_qkv: float | None = cfg.get("clip_qkv") if family == "llada" else None
        self.renormalise: bool = family != "llada" and bool(cfg.get("norm_topk_prob", False))
        self.fused_qkv: bool = family == "llada2_moe"
        self.embed: str = "model.word_embeddings.weight" if self.fused_qkv else "model.embed_tokens.weight"
        self.block: int | None = None  # None: bidirectional attention
        if family == "llada":
            self.head_dim: int = cfg["hidden_size"] // self.heads
            self.qk_norm: bool = bool(cfg.get("qk_layernorm", False))
            factor = cfg.get("partial_rotary_factor") or 1.0
            self.moe: list[bool] = [f != 0 for f in cfg["moe_layer_freq"]]
            self.shared: str | None = "shared_expert" if cfg.get("shared_expert_intermediate_size") else None
        elif family == "llada2_moe":
            self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
            self.qk_norm = bool(cfg.get("use_qk_norm", True))
            factor = cfg.get("partial_rotary_factor", 0.5)
            self.moe = [i >= cfg.get("first_k_dense_replace", 0) for i in range(n)]
            self.shared = "mlp.shared_experts" if cfg.get("num_shared_experts") is not None else None
            self.n_group: int = cfg["n_group"]
            self.topk_group: int = cfg["topk_group"]
            self.scaling: float = cfg["routed_scaling_factor"]
            self.block = block_size or 32
        else:  # rnd1 and sdar_moe: Qwen3-MoE layout
            self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
            self.qk_norm = True
            factor = 1.0
            self.shared = None
            if family == "rnd1":
                self.moe = [True] * n
            else:
                only, step = cfg.get("mlp_only_layers") or [], cfg.get("decoder_sparse_step") or 1
                self.moe = [i not in only and self.n_experts > 0 and (i + 1) % step == 0 for i in range(n)]
                self.block = block_size or cfg.get("block_size") or 4
        self.rot: int = int(self.head_dim * factor)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _linear(x: torch.Tensor, t: Tensors, name: str) -> torch.Tensor:
    """x @ W.T (+ b): the bias is used where the checkpoint holds one."""
    return torch.nn.functional.linear(x, t[f"{name}.weight"], t.get(f"{name}.bias"))


def _mlp(x: torch.Tensor, t: Tensors, prefix: str) -> torch.Tensor:
    gate = torch.nn.functional.silu(_linear(x, t, f"{prefix}.gate_proj"))
    return _linear(gate * _linear(x, t, f"{prefix}.up_proj"), t, f"{prefix}.down_proj")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] dims of each head; x [B, T, heads, D], cos/sin [B, T, rot]."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    cos, sin = cos[:, :, None], sin[:, :, None]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _rope_tables(positions: torch.Tensor, rot: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # [B, T, rot / 2]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def _attention(
    x: torch.Tensor, t: Tensors, p: str, lay: _Layout, rope: tuple[torch.Tensor, torch.Tensor], allowed: torch.Tensor
) -> torch.Tensor:
    """Self-attention of layer prefix p; allowed [B, T, T] says which keys each query sees."""
    b, n, _ = x.shape
    hd = lay.head_dim
    if lay.fused_qkv:
        qkv = _linear(x, t, f"{p}.attention.query_key_value").view(b, n, lay.heads + 2 * lay.kv_heads, hd)
        q, k, v = qkv.split([lay.heads, lay.kv_heads, lay.kv_heads], dim=2)
        q_norm, k_norm, out = f"{p}.attention.query_layernorm", f"{p}.attention.key_layernorm", f"{p}.attention.dense"
    else:
        q = _linear(x, t, f"{p}.self_attn.q_proj").view(b, n, lay.heads, hd)
        k = _linear(x, t, f"{p}.self_attn.k_proj").view(b, n, lay.kv_heads, hd)
        v = _linear(x, t, f"{p}.self_attn.v_proj").view(b, n, lay.kv_heads, hd)
        q_norm, k_norm, out = f"{p}.self_attn.q_norm", f"{p}.self_attn.k_norm", f"{p}.self_attn.o_proj"
    if lay.qk_norm:
        q = _rms_norm(q, t[f"{q_norm}.weight"], lay.eps)
        k = _rms_norm(k, t[f"{k_norm}.weight"], lay.eps)
    if lay.clip_qkv is not None:  # LLaDA-MoE: after the norms, before RoPE
        q, k, v = (z.clamp(-lay.clip_qkv, lay.clip_qkv) for z in (q, k, v))
    q, k = _rope(q, *rope), _rope(k, *rope)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, heads, T, D]
    group = lay.heads // lay.kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    probs = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)  # all-padding rows: 0
    return _linear((probs @ v).transpose(1, 2).reshape(b, n, lay.heads * hd), t, out)


def _softmax_router(
    logits: torch.Tensor, k: int, renormalise: bool, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA-MoE, RND1, SDAR-MoE: softmax over all experts (+ LLaDA-MoE's optional bias), top-k."""
    probs = logits.softmax(-1)
    if bias is not None:
        probs = probs + bias
    weights, ids = probs.topk(k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(-1, keepdim=True)
    return ids, weights


def _group_sigmoid_router(logits: torch.Tensor, bias: torch.Tensor, lay: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA2: sigmoid scores; the bias and the groups choose; the unbiased scores weigh."""
    n, e = logits.shape
    scores = logits.sigmoid()
    choice = scores + bias
    group_scores = choice.view(n, lay.n_group, e // lay.n_group).topk(2, dim=-1).values.sum(-1)
    kept = group_scores.topk(lay.topk_group, dim=-1).indices
    group_mask = torch.zeros(n, lay.n_group, dtype=torch.bool).scatter_(1, kept, True)
    expert_mask = group_mask.repeat_interleave(e // lay.n_group, dim=1)
    ids = choice.masked_fill(~expert_mask, float("-inf")).topk(lay.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if lay.top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return ids, weights * lay.scaling


def _moe(x: torch.Tensor, t: Tensors, p: str, lay: _Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse MoE block on x [N, H]; returns (output, expert ids [N, k], weights [N, k])."""
    logits = _linear(x, t, f"{p}.mlp.gate")
    if lay.family == "llada2_moe":
        ids, weights = _group_sigmoid_router(logits, t[f"{p}.mlp.gate.expert_bias"], lay)
    else:
        ids, weights = _softmax_router(logits, lay.top_k, lay.renormalise, t.get(f"{p}.mlp.expert_bias"))
    out = torch.zeros_like(x)
    for e in range(lay.n_experts):
        rows, slot = (ids == e).nonzero(as_tuple=True)
        if rows.numel():
            out.index_add_(0, rows, weights[rows, slot, None] * _mlp(x[rows], t, f"{p}.mlp.experts.{e}"))
    if lay.shared is not None:
        out = out + _mlp(x, t, f"{p}.{lay.shared}")
    return out, ids, weights


def _positions_and_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, block: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [B, T] and allowed [B, T, T]: bidirectional or block-causal, padded keys hidden."""
    b, n = input_ids.shape
    index = torch.arange(n)
    if attention_mask is None:
        tokens = torch.ones(b, n, dtype=torch.bool)
    else:
        tokens = attention_mask.to(torch.bool)
        if (tokens[:, 1:] & ~tokens[:, :-1]).any():
            raise ValueError("attention_mask must be right padding (1s then 0s in every row)")
    # Positions count the tokens; with right padding that is 0..T-1 (padding goes on counting).
    positions = torch.where(tokens, tokens.long().cumsum(-1) - 1, index.expand(b, n))
    allowed = tokens[:, None, :].expand(b, n, n)
    if block is not None:
        blocks = index // block
        allowed = allowed & (blocks[None, :] <= blocks[:, None])[None]
    return positions, allowed


def reference_forward(
    folder: Path, input_ids: torch.Tensor, *, block_size: int | None = None, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, Routing]:
    """(logits [B, T, V] float64, routing: MoE layer index -> (expert ids [B*T, k] sorted ascending,
    weights [B*T, k] in the same order)).

    block_size overrides the block of the block-causal families (LLaDA2: 32, SDAR-MoE: config or 4)
    and is ignored by the bidirectional ones. attention_mask [B, T] is 1 for tokens, 0 for right padding.
    """
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    lay = _Layout(cfg, block_size)
    t = {name: w.to(torch.float64) for name, w in load_file(str(folder / "model.safetensors")).items()}
    b, n = input_ids.shape
    positions, allowed = _positions_and_mask(input_ids, attention_mask, lay.block)
    rope = _rope_tables(positions, lay.rot, lay.theta)
    h = t[lay.embed][input_ids]
    routing: Routing = {}
    for i in range(lay.n_layers):
        p = f"model.layers.{i}"
        h = h + _attention(_rms_norm(h, t[f"{p}.input_layernorm.weight"], lay.eps), t, p, lay, rope, allowed)
        x = _rms_norm(h, t[f"{p}.post_attention_layernorm.weight"], lay.eps).reshape(b * n, -1)
        if lay.moe[i]:
            out, ids, weights = _moe(x, t, p, lay)
            ids, order = ids.sort(dim=-1)
            routing[i] = (ids, weights.gather(1, order))
        else:
            out = _mlp(x, t, f"{p}.mlp")
        h = h + out.view(b, n, -1)
    h = _rms_norm(h, t["model.norm.weight"], lay.eps)
    head = t["lm_head.weight"] if "lm_head.weight" in t else t[lay.embed]  # tied only where no lm_head is stored
    return h @ head.T, routing
