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
