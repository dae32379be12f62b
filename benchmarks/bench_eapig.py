"""EAP-IG wall time as a ratio to (m + 2) forward+backward passes on the same batch, and memory.

EAP-IG on inputs (`analyses.circuits.attribute(method="eap-ig-inputs", steps=m)`) runs a clean and
a corrupted forward pass, then m forward+backward passes at interpolated embeddings with
gradients at every receiver (each head's q/k/v input, each MLP's, logits), and finally one
[senders x receivers] product. Its natural unit of cost is therefore (m + 2) forward+backward
passes of the plain model on the same batch: the baseline here is the same model object (eager
attention, frozen weights, as the probe runs it) differentiating the same metric with respect to
its input embeddings. Target: ratio <= 1.2 (issue 16). EAP (one forward, one forward+backward) is timed
against 2 forward+backward passes the same way.

Timings are interleaved (machine noise hits both alike): each repeat times one EAP-IG call,
one EAP call and (m + 2) baseline passes; medians over repeats. Memory: peak resident set during
one call minus the resident set before it (sampled every millisecond, as benchmarks/bench_probe.py
does; torch's CPU tensors are invisible to tracemalloc); on CUDA also torch's peak allocation.

    python -m benchmarks.bench_eapig                       # SmolLM2-135M, IOI, batch 8, m = 5
    python -m benchmarks.bench_eapig --model organism --batch 32 --repeats 7
    python -m benchmarks.bench_eapig --kv-receivers per-query   # TransformerLens's ungrouped graph
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from analyses.circuits import attribute
from analyses.graph import Graph
from analyses.metrics import Targets, metric_values
from ar2mdm.tasks import collate, generate_aligned, get_task, render
from benchmarks.bench_probe import extra_peak_mib, peak_rss_mb
from conversion.checkpoints import load_ar
from probe import ProbedModel

TARGET = 1.2  # EAP-IG time / (m + 2) forward+backward times at most this


def ioi_batch(pm: ProbedModel, n: int, seed: int):
    tok = pm.tokenizer
    examples = generate_aligned(get_task("ioi", tok), n, tok, seed, modes=("ar",))
    items = [render(ex, tok, "ar") for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return collate(items, pad)


def measure(
    model_name: str, batch_size: int, steps: int, repeats: int, backend: str, device: str, kv: str = "grouped"
) -> dict:
    """EAP-IG and EAP times against the plain forward+backward of `model_name` (a load_ar source);
    kv "per-query" ungroups the model first (per-query-head k/v receivers; the baseline passes
    then run the ungrouped model too)."""
    loaded = load_ar(model_name, device=device)
    pm = ProbedModel.from_checkpoint(loaded, backend=backend, ungroup_kv=kv == "per-query")
    batch = ioi_batch(pm, batch_size, seed=0)
    model = pm.model
    dev = next(model.parameters()).device
    ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    targets = Targets.of(batch.items)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def forward_backward() -> None:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        metric_values("logit_diff", logits, targets).sum().backward()
        sync()

    def eap_ig() -> None:
        attribute(pm, batch, method="eap-ig-inputs", steps=steps, batch_size=None)
        sync()

    def eap() -> None:
        attribute(pm, batch, method="eap", batch_size=None)
        sync()

    forward_backward(), eap_ig(), eap()  # warm-up
    times: dict[str, list[float]] = {"fwd_bwd": [], "eap_ig": [], "eap": []}
    for i in range(repeats):
        order = [("eap_ig", eap_ig), ("eap", eap)] + [("fwd_bwd", forward_backward)] * (steps + 2)
        for label, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    memory = {"fwd_bwd": extra_peak_mib(forward_backward), "eap_ig": extra_peak_mib(eap_ig), "eap": extra_peak_mib(eap)}
    cuda = {}
    if dev.type == "cuda":
        for label, fn in (("fwd_bwd", forward_backward), ("eap_ig", eap_ig)):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            cuda[label] = (torch.cuda.max_memory_allocated() - base) / 2**20
    n_edges = len(Graph(pm.shape))
    return {
        "benchmark": "eap_ig",
        "model": model_name,
        "backend": pm.backend_name,
        "device": str(dev),
        "batch": list(ids.shape),
        "steps": steps,
        "edges": n_edges,
        "kv_receivers": pm.config.kv_receivers,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "fwd_bwd_s": med["fwd_bwd"],
        "eap_ig_s": med["eap_ig"],
        "eap_s": med["eap"],
        "ratio_eap_ig": med["eap_ig"] / ((steps + 2) * med["fwd_bwd"]),
        "ratio_eap": med["eap"] / (2 * med["fwd_bwd"]),
        "extra_peak_rss_mib": memory,
        "cuda_extra_peak_mib": cuda,
        "process_peak_rss_mib": peak_rss_mb(),
        "target": f"ratio_eap_ig <= {TARGET}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="any load_ar source (default: smollm2)")
    ap.add_argument("--batch", type=int, default=8, help="IOI examples in the batch")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="torch", help="probe backend (torch has the least overhead)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--kv-receivers", default="grouped", choices=["grouped", "per-query"])
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    r = measure(args.model, args.batch, args.steps, args.repeats, args.backend, args.device, args.kv_receivers)
    m = args.steps
    print(
        f"{r['model']} ({r['backend']} backend, {r['device']}), IOI batch {r['batch'][0]} x {r['batch'][1]} tokens, "
        f"{r['edges']} edges ({r['kv_receivers']} k/v receivers), m = {m}, {r['threads']} threads, median of {r['repeats']}"
    )
    print(f"one forward+backward (baseline): {1e3 * r['fwd_bwd_s']:.1f} ms")
    print(
        f"EAP-IG (inputs):  {1e3 * r['eap_ig_s']:.1f} ms = {r['ratio_eap_ig']:.3f} x ({m} + 2) fwd+bwd   (target <= {TARGET})"
    )
    print(f"EAP:              {1e3 * r['eap_s']:.1f} ms = {r['ratio_eap']:.3f} x 2 fwd+bwd")
    mem = r["extra_peak_rss_mib"]
    print(
        f"extra peak RSS: fwd+bwd +{mem['fwd_bwd']:.0f} MiB, EAP-IG +{mem['eap_ig']:.0f} MiB, EAP +{mem['eap']:.0f} MiB; "
        f"process peak {r['process_peak_rss_mib']:.0f} MiB"
    )
    if r["cuda_extra_peak_mib"]:
        print(f"CUDA extra peak: {r['cuda_extra_peak_mib']}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
