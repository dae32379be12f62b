"""Per-device peak memory of an ARM/MDM pair spread over several devices, with an attribution on top.

`predict_device_peaks(configs, n_devices=, batch=, seq_len=, method=, dtype=)` splits each model as
a balanced device map does (`--device-map balanced`: decoder layers in contiguous, equal runs; the
embedding with the first device, the final norm and LM head with the last) and adds the working
memory of one attribution run (`analyses.attribution_memory.predict_memory`, the larger of the
pair's, since `compare` attributes one model at a time while both stay loaded):

- weights: counted per module on the meta device (no memory), in `dtype`;
- the attribution's phases: every term that is a sum over layers (sender values, deltas, receiver
  gradients, the autograd state of a pass, the probe's gradient points) is split in proportion to
  the decoder layers a device holds, because each layer's activations live where the layer runs;
  the logits (and their gradient) go with the LM head to the last device; the score matrix and the
  product's float32 chunk to the first (the map's main device).

A device's peak is its weights plus its share of the largest phase. This is a prediction, checked
on one device against measured peaks (`benchmarks/bench_attribution_memory.py`); the split itself
is the rule above, not yet measured on GPUs. `python -m analyses.device_memory` prints the table for
the reference pairs (Qwen2.5-7B + Dream-7B, Qwen3-30B-A3B + RND1-30B-A3B) on 2 x 80 GB.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from analyses.attribution_memory import GIB, meta_model, predict_memory, shape_of


@dataclass(frozen=True)
class DevicePlan:
    """Bytes per device (index 0 = the main device): weights of every model, the attribution's share,
    and their sum (`peaks`); layers: the decoder layers each device holds (of the first model)."""

    weights: tuple[int, ...]
    analysis: tuple[int, ...]
    peaks: tuple[int, ...]
    layers: tuple[range, ...]
    method: str
    batch: int
    seq_len: int

    def describe(self, capacity: int | None = None) -> str:
        rows = []
        for d, (w, a, p) in enumerate(zip(self.weights, self.analysis, self.peaks, strict=True)):
            fits = "" if capacity is None else ("  fits" if p <= capacity else "  DOES NOT FIT")
            rows.append(
                f"device {d} (layers {self.layers[d].start}-{self.layers[d].stop - 1}): weights {w / GIB:.1f} GiB "
                f"+ {self.method} {a / GIB:.1f} GiB = {p / GIB:.1f} GiB{fits}"
            )
        return "\n".join(rows)


def layer_split(n_layers: int, n_devices: int) -> tuple[range, ...]:
    """Contiguous runs of decoder layers, as equal as they can be (the first devices take one more)."""
    if n_devices < 1 or n_layers < n_devices:
        raise ValueError(f"cannot split {n_layers} layers over {n_devices} devices")
    size, extra = divmod(n_layers, n_devices)
    out, start = [], 0
    for d in range(n_devices):
        stop = start + size + (1 if d < extra else 0)
        out.append(range(start, stop))
        start = stop
    return tuple(out)


def weight_split(config, dtype: torch.dtype, n_devices: int) -> tuple[int, ...]:
    """Bytes of `config`'s model on each device of a balanced map (tied weights counted once)."""
    model, _ = meta_model(config, dtype)
    shape, *_ = shape_of(config)
    runs = layer_split(shape.n_layers, n_devices)
    owner = {i: d for d, run in enumerate(runs) for i in run}
    out = [0] * n_devices
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        layer = _layer_index(name)
        if layer is not None:
            device = owner[layer]
        elif "embed" in name or ".wte." in name or ".wpe." in name:
            device = 0
        else:  # final norm, LM head
            device = n_devices - 1
        out[device] += p.numel() * p.element_size()
    return tuple(out)


def _layer_index(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:], strict=False):
        if a in ("layers", "h") and b.isdigit():
            return int(b)
    return None


def predict_device_peaks(
    configs: Sequence,
    *,
    n_devices: int,
    batch: int,
    seq_len: int,
    method: str = "eap-ig-inputs",
    dtype: torch.dtype = torch.bfloat16,
) -> DevicePlan:
    """The per-device peaks of the models `configs` (transformers configs; an ARM and its MDM) all
    loaded over `n_devices` devices with a balanced map, while `method` attributes the one of them
    that needs the most, on batches of `batch` rows of `seq_len` tokens. See the module docstring."""
    weights = [0] * n_devices
    for config in configs:
        for d, b in enumerate(weight_split(config, dtype, n_devices)):
            weights[d] += b
    best: list[int] | None = None
    for config in configs:
        share = _analysis_split(config, n_devices, batch, seq_len, method, dtype)
        if best is None or max(share) > max(best):
            best = share
    assert best is not None, "no model configs given"
    shape, *_ = shape_of(configs[0])
    peaks = tuple(w + a for w, a in zip(weights, best, strict=True))
    return DevicePlan(
        tuple(weights), tuple(best), peaks, layer_split(shape.n_layers, n_devices), method, batch, seq_len
    )


def _analysis_split(config, n_devices: int, batch: int, seq_len: int, method: str, dtype: torch.dtype) -> list[int]:
    est = predict_memory(config, batch=batch, seq_len=seq_len, method=method, dtype=dtype, device="cuda", weights=0)
    shape, _, _, vocab = shape_of(config)
    a = torch.empty((), dtype=dtype).element_size()
    logits = batch * seq_len * vocab * a
    main = est.terms.get("product chunk", 0) + est.terms.get("scores", 0)
    # what of each phase is the logits (last device) and what the product's chunk and scores (first)
    at_last = {"caches": 2 * logits, "passes": 2 * logits, "patching": 2 * logits, "product": 0}
    at_first = {"product": main}
    runs = layer_split(shape.n_layers, n_devices)
    share = [0] * n_devices
    for phase, total in est.phases.items():
        last, first = at_last.get(phase, 0), at_first.get(phase, 0)
        spread = max(0, total - last - first)
        for d, run in enumerate(runs):
            value = spread * len(run) // shape.n_layers
            value += last if d == n_devices - 1 else 0
            value += first if d == 0 else 0
            share[d] = max(share[d], value)
    return share


def auto_max_memory(
    configs: Sequence,
    free: dict[int, int],
    *,
    batch: int,
    seq_len: int,
    method: str = "eap-ig-inputs",
    dtype: torch.dtype = torch.bfloat16,
) -> dict[int, int]:
    """What `--device-map auto` gives accelerate as max_memory for an analysis: each GPU's `free`
    bytes less the attribution's predicted share on it (`predict_device_peaks` over those GPUs), so
    the weights leave room for the analysis that follows. free: {GPU index: free bytes}."""
    plan = predict_device_peaks(configs, n_devices=len(free), batch=batch, seq_len=seq_len, method=method, dtype=dtype)
    return {gpu: max(0, free[gpu] - share) for gpu, share in zip(sorted(free), plan.analysis, strict=True)}


def free_gpu_memory() -> dict[int, int]:
    """{GPU index: free bytes} of the CUDA devices torch sees (empty without any)."""
    if not torch.cuda.is_available():
        return {}
    return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}


# --- the reference pairs ---------------------------------------------------------------------------

QWEN25_7B = dict(
    model_type="qwen2",
    hidden_size=3584,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
    vocab_size=152064,
    tie_word_embeddings=False,
)
QWEN3_30B_A3B = dict(  # RND1-30B-A3B keeps this layout (RESEARCH.md section 7)
    model_type="qwen3_moe",
    hidden_size=2048,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    intermediate_size=6144,
    moe_intermediate_size=768,
    num_experts=128,
    num_experts_per_tok=8,
    vocab_size=151936,
    tie_word_embeddings=False,
)

# The published MoE diffusion LMs' layouts (docs/FORMATS.md): LLaDA-MoE-7B-A1B read as Qwen3-MoE
# (values from its model card and paper: 16 layers, 64 experts, top-8, expert width 1024; vocab
# 157184 as the Ling tokenizer, not read from its config.json here); LLaDA2.0-mini read as
# GLM-4-MoE (SarvamMoE), values from a loader fixture mirroring its config (20 layers, 256
# experts top-8 in groups, one shared expert, first layer dense).
LLADA_MOE_7B = dict(
    model_type="qwen3_moe",
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=128,
    intermediate_size=8192,
    moe_intermediate_size=1024,
    num_experts=64,
    num_experts_per_tok=8,
    vocab_size=157184,
    tie_word_embeddings=False,
)
LLADA2_MINI = dict(
    model_type="sarvam_moe",
    hidden_size=2048,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    intermediate_size=5120,
    moe_intermediate_size=512,
    n_routed_experts=256,
    n_shared_experts=1,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    first_k_dense_replace=1,
    vocab_size=157184,
    tie_word_embeddings=False,
)
# (model, its layout, the AR source's layout or None)
MOE_MODELS = (
    ("LLaDA-MoE-7B-A1B", LLADA_MOE_7B, None),
    ("LLaDA2.0-mini / Ling-mini-2.0", LLADA2_MINI, LLADA2_MINI),
    ("RND1-30B-A3B / Qwen3-30B-A3B", QWEN3_30B_A3B, QWEN3_30B_A3B),
    ("SDAR-30B-A3B / Qwen3-30B-A3B-Base", QWEN3_30B_A3B, QWEN3_30B_A3B),
)


def moe_table(dtype: torch.dtype = torch.bfloat16) -> str:
    """A Markdown table of the published MoE diffusion LMs: parameters, parameters a token uses
    (top-k experts), the weights' bytes in `dtype` (every expert is resident), the pair's."""
    from analyses.attribution_memory import active_parameters

    size = torch.empty((), dtype=dtype).element_size()
    name = str(dtype).removeprefix("torch.")
    rows = [
        f"| model (/ AR source) | parameters | active per token | weights in {name} | the pair |",
        "|---|---|---|---|---|",
    ]
    for title, fields, ar in MOE_MODELS:
        total, active = active_parameters(config_of(fields))
        pair = "(no AR source)"
        if ar is not None:
            pair = f"{(total + active_parameters(config_of(ar))[0]) * size / GIB:.1f} GiB"
        rows.append(f"| {title} | {total / 1e9:.2f} B | {active / 1e9:.2f} B | {total * size / GIB:.1f} GiB | {pair} |")
    return "\n".join(rows)


def config_of(fields: dict):
    """The transformers config a dict of config.json fields (with its model_type) describes."""
    from transformers import AutoConfig

    data = dict(fields)
    return AutoConfig.for_model(data.pop("model_type"), **data)


PAIRS = {
    "Qwen2.5-7B + Dream-v0-Base-7B": (QWEN25_7B, QWEN25_7B),
    "Qwen3-30B-A3B + RND1-30B-A3B": (QWEN3_30B_A3B, QWEN3_30B_A3B),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-device peak memory of the reference pairs, split over GPUs.")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--gib", type=float, default=80 * 10**9 / GIB, help="memory of each device in GiB")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--method", default="eap-ig-inputs")
    parser.add_argument("--moe", action="store_true", help="print the published MoE models' parameters and bf16 bytes")
    args = parser.parse_args(argv)
    if args.moe:
        print(moe_table())
        return 0
    for name, raw in PAIRS.items():
        configs = [config_of(fields) for fields in raw]
        plan = predict_device_peaks(
            configs, n_devices=args.devices, batch=args.batch, seq_len=args.seq_len, method=args.method
        )
        print(f"{name}, bf16, {args.method} at {args.batch} x {args.seq_len} over {args.devices} devices:")
        print(plan.describe(int(args.gib * GIB)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
