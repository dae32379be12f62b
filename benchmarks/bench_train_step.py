"""MDM training-step throughput as a ratio to a plain AR fine-tuning step of the same model.

Both steps do the same work (one forward, one backward, one AdamW update over the same batch and
sequence length); the MDM step adds noise sampling and a bidirectional attention layout. The two
are timed interleaved in one process, so machine noise hits both alike; we report the median of
`--repeats` paired measurements and the ratio tokens/s(MDM) / tokens/s(AR). Target: >= 0.9.

    python -m benchmarks.bench_train_step                 # SmolLM2-135M shape, random init
    python -m benchmarks.bench_train_step --model smollm2 # the real weights (same FLOPs)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from conversion.objective import DiffusionOptions, ar_loss, diffusion_loss

TARGET = 0.9  # tokens/s(MDM) / tokens/s(AR) at least this


def smollm2_shaped(vocab_size: int = 49153) -> torch.nn.Module:
    """A random-init Llama with SmolLM2-135M's dimensions (no weights needed: same FLOPs)."""
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def measure(model_name: str, batch: int, seq_len: int, repeats: int, bf16: bool) -> dict:
    """Median AR and MDM step throughput of `model_name` ("smollm2-shape" or a load_ar source)."""
    if model_name == "smollm2-shape":
        model = smollm2_shaped()
    else:
        from conversion.checkpoints import load_ar

        model = load_ar(model_name).model
    model.train()
    vocab = model.get_input_embeddings().weight.shape[0]
    mask_id = vocab - 1
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, vocab - 1, (batch, seq_len), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    options = DiffusionOptions()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def ar_step() -> None:
        with autocast:
            out = ar_loss(model, x0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def mdm_step(step: int) -> None:
        with autocast:
            out = diffusion_loss(model, x0, options, mask_id=mask_id, step=step, generator=gen)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ar_step()  # warm-up both paths (allocations, kernels)
    mdm_step(0)
    ar_times, mdm_times = [], []
    for i in range(repeats):
        order = ("ar", "mdm") if i % 2 == 0 else ("mdm", "ar")
        for kind in order:
            t0 = time.perf_counter()
            ar_step() if kind == "ar" else mdm_step(i + 1)
            (ar_times if kind == "ar" else mdm_times).append(time.perf_counter() - t0)
    tokens = batch * seq_len
    ar_s, mdm_s = statistics.median(ar_times), statistics.median(mdm_times)
    return {
        "benchmark": "train_step",
        "model": model_name,
        "batch": batch,
        "seq_len": seq_len,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "ar_tokens_per_s": tokens / ar_s,
        "mdm_tokens_per_s": tokens / mdm_s,
        "ratio_mdm_over_ar": ar_s / mdm_s,
        "target": f">= {TARGET}",
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-shape", help="smollm2-shape (random init) or any load_ar source")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    res = measure(args.model, args.batch, args.seq_len, args.repeats, args.bf16)
    print(f"{'benchmark':<12} {'AR tok/s':>10} {'MDM tok/s':>10} {'ratio':>7}  target")
    print(
        f"{'train_step':<12} {res['ar_tokens_per_s']:>10.1f} {res['mdm_tokens_per_s']:>10.1f} {res['ratio_mdm_over_ar']:>7.3f}  {res['target']}"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
