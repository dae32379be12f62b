"""analyses.device_memory: the per-device split of a pair's weights and an attribution's memory."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from analyses.attribution_memory import parameter_count, predict_memory
from analyses.device_memory import layer_split, predict_device_peaks, weight_split


def _config(**extra) -> LlamaConfig:
    fields = dict(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaConfig(**{**fields, **extra})


def test_layer_split_is_contiguous_and_balanced() -> None:
    assert layer_split(28, 2) == (range(0, 14), range(14, 28))
    assert layer_split(5, 2) == (range(0, 3), range(3, 5))
    assert layer_split(4, 4) == tuple(range(i, i + 1) for i in range(4))


def test_weights_split_add_up_and_sit_where_a_balanced_map_puts_them() -> None:
    config = _config()
    one = weight_split(config, torch.bfloat16, 1)
    two = weight_split(config, torch.bfloat16, 2)
    total = parameter_count(config) * 2  # bf16: 2 bytes a parameter
    assert one == (total,) and sum(two) == total
    d, v, f = 64, 1000, 128
    layer = 2 * d * d + 2 * d * (d // 2) + 3 * d * f + 2 * d  # q, o; k, v (2 kv heads of 16); MLP; two norms
    assert two == ((v * d + 3 * layer) * 2, (3 * layer + d + v * d) * 2)  # embed first; final norm, head last


def test_one_device_is_the_single_device_prediction_and_two_share_it() -> None:
    config = _config()
    est = predict_memory(config, batch=4, seq_len=32, method="eap-ig-inputs", dtype=torch.bfloat16, device="cuda")
    one = predict_device_peaks([config], n_devices=1, batch=4, seq_len=32, dtype=torch.bfloat16)
    assert one.peaks == (est.peak,)
    two = predict_device_peaks([config, config], n_devices=2, batch=4, seq_len=32, dtype=torch.bfloat16)
    assert sum(two.weights) == 2 * est.weights  # both models loaded
    assert max(two.analysis) < est.analysis <= sum(two.analysis)  # split, none lost
    logits = 4 * 32 * 1000 * 2
    assert two.analysis[1] - two.analysis[0] >= logits  # the logits sit with the head


def test_auto_max_memory_leaves_each_gpu_the_attribution_share(tmp_path) -> None:
    """`--device-map auto` on GPUs: max_memory = free - the predicted EAP-IG share of that GPU."""
    from analyses.device_memory import auto_max_memory

    config = _config()
    plan = predict_device_peaks([config, config], n_devices=2, batch=4, seq_len=128, dtype=torch.bfloat16)
    free = {0: 80 * 2**30, 1: 60 * 2**30}
    got = auto_max_memory([config, config], free, batch=4, seq_len=128, dtype=torch.bfloat16)
    assert got == {0: free[0] - plan.analysis[0], 1: free[1] - plan.analysis[1]}


def test_model_config_reads_a_published_mdm_without_loading_it(tmp_path) -> None:
    import replicas

    from conversion.checkpoints import model_config

    dream = replicas.dream(tmp_path)
    config = model_config(str(dream.path))
    assert config.model_type == "qwen2" and config.num_hidden_layers >= 1  # Dream maps onto Qwen2
    assert model_config(str(replicas.ar_partner(dream, tmp_path))).model_type == "qwen2"


def test_moe_parameters_active_per_token_and_shape_by_hand() -> None:
    """A GLM-4-MoE layout (layer 0 dense, layers 1-2: 8 experts top-2 + a shared expert): every
    expert is resident; a token runs 2 routed experts and the shared one."""
    from transformers import Glm4MoeConfig

    from analyses.attribution_memory import active_parameters, shape_of
    from analyses.device_memory import moe_table

    d, v, f, fe, e, k = 64, 1000, 128, 32, 8, 2
    config = Glm4MoeConfig(
        vocab_size=v, hidden_size=d, intermediate_size=f, moe_intermediate_size=fe, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, n_routed_experts=e, num_experts_per_tok=k,
        n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1, tie_word_embeddings=False,
        use_qk_norm=False,
    )  # fmt: skip
    total, active = active_parameters(config)
    attention = 4 * d * d + 2 * d  # q, k, v, o; two norms
    dense = 3 * d * f
    moe = e * 3 * d * fe + 3 * d * fe + e * d + e  # experts, shared expert, router, expert bias (a buffer: not counted)
    assert total == 2 * v * d + d + 3 * attention + dense + 2 * (moe - e)
    assert total - active == 2 * (e - k) * 3 * d * fe
    shape = shape_of(config)[0]
    assert (shape.n_experts, shape.moe_layers, shape.shared_expert) == (e, (1, 2), True)
    table = moe_table()
    assert "| RND1-30B-A3B / Qwen3-30B-A3B | 30.53 B | 3.35 B |" in table  # Qwen3-30B-A3B: 30.5B, 3.3B active
    assert "| LLaDA2.0-mini / Ling-mini-2.0 | 16.26 B | 1.43 B |" in table  # its card: 16B, 1.4B active
