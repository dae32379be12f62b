"""Per-query-head key/value receivers on grouped-query models: the "ungrouped" graph.

Under grouped-query attention (n_kv_heads < n_heads) ar2mdm's graph keys k/v receivers per
key/value head: `L{l}.H{g}.k` is the input of key head g, which serves r = n_heads / n_kv_heads
query heads. TransformerLens's ungrouped setting (`ungroup_grouped_query_attention`), which the
reference EAP-IG code (hannamw/EAP-IG) runs on, keys them per query head instead: each query head
reads its own copy of the key and value inputs, so an edge into `L{l}.H{h}.k` changes the keys
only query head h sees.

`ungroup_kv_heads` makes a model compute exactly that: the k and v projections are widened to
n_heads heads, head h holding a copy of its group's weights (and bias), and the attention modules
stop repeating key/value heads (`num_key_value_groups = 1`). The forward pass is the same
function of the input (each query head meets the same keys and values as before; logits agree to
float rounding), but every query head now has private key/value inputs, so the probe's usual
per-head machinery (caches, receiver gradients, edge patching) sees per-query-head receivers,
and a graph built on the ungrouped model has TransformerLens's ungrouped edges. A per-KV-head
edge score is the sum of its r per-query-head scores (gradients add over the copies; checked in
tests/test_ungroup.py).

The cost is memory: the k and v weights grow r-fold (Llama-3-8B, r = 4: +0.75 GiB in bf16).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ar2mdm.common.errors import UserError
from probe.layout import Layout

# Attribute set on an ungrouped model: its number of key/value heads before ungrouping.
UNGROUPED_FROM = "ar2mdm_kv_heads_before_ungrouping"


def ungroup_kv_heads(model: PreTrainedModel) -> PreTrainedModel:
    """Widen `model`'s key/value projections to one head per query head, in place; return it.

    A model without grouped-query attention is returned unchanged. Its config's
    `num_key_value_heads` becomes `num_attention_heads` (so a saved copy reloads ungrouped).

    Raises UserError for a model whose attention has no separate k/v projections (a fused qkv
    matrix) or that does not repeat key/value heads through `num_key_value_groups`, the way
    transformers' Llama, Mistral, Qwen2/3 and Gemma 2/3 do.
    """
    layout = Layout(model)
    n_heads, n_kv, d_head = layout.n_heads, layout.n_kv_heads, layout.d_head
    if n_kv == n_heads:
        return model
    r = n_heads // n_kv
    what = f"{type(model).__name__} (model_type {getattr(model.config, 'model_type', '?')!r})"
    for i, blk in enumerate(layout.blocks):
        if blk.k is None or blk.v is None or getattr(blk.attn, "num_key_value_groups", None) != r:
            raise UserError(
                f"{what}: block {i} has no separate k/v projections repeated over {r} query heads "
                "(num_key_value_groups); per-query-head k/v receivers are built for Llama, Mistral, "
                "Qwen2/3 and Gemma 2/3 style attention. Use the grouped graph (the default)."
            )
        if not isinstance(blk.k, nn.Linear) or not isinstance(blk.v, nn.Linear):
            raise UserError(
                f"{what}: block {i}'s key/value projections are not plain nn.Linear layers (quantised?); "
                "per-query-head k/v receivers need them. Load the model unquantised, or use the grouped graph."
            )
    for blk in layout.blocks:  # every block checked first: a refused model is left unchanged
        for name in ("k_proj", "v_proj"):
            setattr(blk.attn, name, _widened(getattr(blk.attn, name), n_kv, d_head, r))
        blk.attn.num_key_value_groups = 1
    model.config.num_key_value_heads = n_heads
    setattr(model, UNGROUPED_FROM, n_kv)
    return model


@torch.no_grad()
def _widened(proj: nn.Linear, n_kv: int, d_head: int, r: int) -> nn.Linear:
    """A projection to n_kv * r heads, head g * r + j a copy of head g (same device and dtype)."""
    d_in = proj.in_features
    weight = proj.weight.reshape(n_kv, d_head, d_in).repeat_interleave(r, 0).reshape(-1, d_in)
    out = nn.Linear(d_in, weight.shape[0], bias=proj.bias is not None, device=weight.device, dtype=weight.dtype)
    out.weight.copy_(weight)
    if proj.bias is not None:
        out.bias.copy_(proj.bias.reshape(n_kv, d_head).repeat_interleave(r, 0).reshape(-1))
    out.weight.requires_grad_(proj.weight.requires_grad)
    if out.bias is not None:
        out.bias.requires_grad_(proj.bias.requires_grad)
    return out
