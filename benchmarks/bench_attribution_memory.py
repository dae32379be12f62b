"""Peak memory of EAP-IG: predicted (analyses.attribution_memory) against measured, three sizes.

Each size runs in a fresh process (no memory left over from earlier runs): load the model, run one
plain forward pass (the weights are read lazily from their file, so this pages them in), then
measure the resident set's high-water mark during `attribute(..., method="eap-ig-inputs")` minus
the resident set before it (sampled every millisecond; torch's CPU tensors are invisible to
tracemalloc). glibc keeps freed memory in its heap, so the resident set runs above the bytes alive;
`--malloc-mmap` repeats each size with MALLOC_MMAP_THRESHOLD_=131072 (large tensors mapped and
returned to the system on free), which tracks the bytes alive closely and is what the prediction
models. The process peak of the SmolLM2 IOI-64 run (batch 8, m = 5) is the must-show figure.

Sizes: the organism, SmolLM2-135M (real weights) and a random-init Llama of 0.48 B parameters
(SmolLM2's tokenizer and vocabulary, d_model 1280, 24 layers, 20 heads, 4 KV heads, MLP 3456).
The predicted peaks of Llama-3-8B and Qwen2.5-7B in bf16 on an 80 GB GPU are printed after.

    python -m benchmarks.bench_attribution_memory --malloc-mmap                 # about 5 minutes
    python -m benchmarks.bench_attribution_memory --sizes smollm2 --examples 64 --offload disk
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
from analyses.device_memory import QWEN25_7B, config_of

SIZES = ("organism", "smollm2", "0.5b")
LARGE = {
    "Llama-3-8B": dict(
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "Qwen2.5-7B": QWEN25_7B,  # one definition, shared with analyses.device_memory
}
GPU_BYTES = 80 * 10**9


def random_05b():
    """(model, tokenizer): a random-init 0.48 B Llama with SmolLM2's tokenizer (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conversion.checkpoints import load_ar

    tok = load_ar("smollm2").tokenizer
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=1280,
        num_hidden_layers=24,
        num_attention_heads=20,
        num_key_value_heads=4,
        intermediate_size=3456,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), tok


def one(size: str, examples: int, batch: int, steps: int, offload: str) -> dict:
    """Measure one size in this process (called in a fresh subprocess)."""
    import torch

    from analyses.attribution_memory import predict_for
    from analyses.circuits import attribute
    from benchmarks.bench_eapig import ioi_batch
    from benchmarks.bench_probe import extra_peak_mib, peak_rss_mb, rss_mib
    from conversion.checkpoints import load_ar
    from probe import ProbedModel

    if size == "0.5b":
        model, tok = random_05b()
        pm = ProbedModel(model, tok, backend="torch")
    else:
        pm = ProbedModel.from_checkpoint(load_ar(size), backend="torch")
    data = ioi_batch(pm, examples, seed=0)
    with torch.no_grad():
        pm.model(input_ids=data.input_ids[:batch], attention_mask=data.attention_mask[:batch])
    predicted = predict_for(pm, batch=batch, seq_len=data.input_ids.shape[1], method="eap-ig-inputs", offload=offload)
    before = rss_mib()
    t0 = time.perf_counter()
    extra = extra_peak_mib(
        lambda: attribute(pm, data, method="eap-ig-inputs", steps=steps, batch_size=batch, offload=offload)
    )
    return {
        "size": size,
        "parameters": sum(p.numel() for p in pm.model.parameters()),
        "examples": examples,
        "batch": batch,
        "seq_len": data.input_ids.shape[1],
        "steps": steps,
        "offload": offload,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "seconds": time.perf_counter() - t0,
        "rss_before_mib": before,
        "measured_extra_mib": extra,
        "process_peak_mib": peak_rss_mb(),
        "predicted": predicted.to_dict(),
        "predicted_extra_mib": predicted.analysis / 2**20,
    }


def large_predictions() -> list[dict]:
    import torch

    from analyses.attribution_memory import predict_memory

    rows = []
    for name, fields in LARGE.items():
        config = config_of(fields)
        for seq_len in (20, 128, 512):
            est = predict_memory(config, batch=8, seq_len=seq_len, dtype=torch.bfloat16, device="cuda")
            fits = 0
            for b in (1, 2, 4, 8, 16, 32, 64, 128):
                if (
                    predict_memory(config, batch=b, seq_len=seq_len, dtype=torch.bfloat16, device="cuda").peak
                    <= GPU_BYTES
                ):
                    fits = b
            rows.append(
                {
                    "model": name,
                    "seq_len": seq_len,
                    "batch": 8,
                    "peak_gib": est.peak / 2**30,
                    "weights_gib": est.weights / 2**30,
                    "largest_batch_in_80GB": fits,
                    "counted": est.counted,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--examples", type=int, default=8, help="IOI examples (batch 8 each)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--offload", default="none", choices=("none", "cpu", "disk"))
    ap.add_argument("--malloc-mmap", action="store_true", help="also measure each size with MALLOC_MMAP_THRESHOLD_")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.examples, args.batch, args.steps, args.offload)))
        return
    results = []
    for size in args.sizes.split(","):
        for fixed in (False, True) if args.malloc_mmap else (False,):
            env = dict(os.environ)
            if fixed:
                env["MALLOC_MMAP_THRESHOLD_"] = "131072"
            cmd = [sys.executable, "-m", "benchmarks.bench_attribution_memory", "--one", size]
            cmd += ["--examples", str(args.examples), "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--offload", args.offload]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{size}: the measuring process failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            malloc = "mmap threshold 128 KiB" if fixed else "default malloc"
            print(
                f"{size:9s} {r['parameters'] / 1e6:6.0f} M params, {r['examples']} IOI x {r['seq_len']} tokens, "
                f"batch {r['batch']}, m = {r['steps']}, offload {r['offload']}, {malloc}: "
                f"predicted +{r['predicted_extra_mib']:.0f} MiB, measured +{r['measured_extra_mib']:.0f} MiB "
                f"(ratio {r['measured_extra_mib'] / r['predicted_extra_mib']:.2f}); process peak "
                f"{r['process_peak_mib']:.0f} MiB; {r['seconds']:.1f} s",
                flush=True,
            )
    large = large_predictions()
    print("\npredicted EAP-IG (inputs, m = 5) peaks in bf16 on one 80 GB GPU:")
    for r in large:
        print(
            f"  {r['model']:11s} batch 8 x {r['seq_len']:3d} tokens: {r['peak_gib']:.1f} GiB "
            f"(weights {r['weights_gib']:.1f}); largest batch that fits: {r['largest_batch_in_80GB']}"
        )
    if args.json:
        args.json.write_text(json.dumps({"measured": results, "large": large}, indent=2))


if __name__ == "__main__":
    main()
