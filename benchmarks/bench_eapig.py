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


# forward+backward passes each gradient method runs per batch (forward-only passes counted as
# forward+backward: a bound, as in the reference EAP-IG code's accounting), m = steps, L = layers
PASSES = {
    "eap": lambda m, L: 2,
    "relp": lambda m, L: 2,
    "relp-ah": lambda m, L: 2,
    "gim": lambda m, L: 2,
    "eap-ig-inputs": lambda m, L: m + 2,
    "eap-gp": lambda m, L: 2 * m + 2,
    "eap-ig-activations": lambda m, L: (2 * L + 1) * m + 2,
}
DEFAULT_METHODS = ("eap", "relp", "gim", "eap-ig-inputs", "eap-gp")


def measure(
    model_name: str,
    batch_size: int,
    steps: int,
    repeats: int,
    backend: str,
    device: str,
    kv: str = "grouped",
    methods: tuple[str, ...] = DEFAULT_METHODS,
) -> dict:
    """Each gradient method's time against its pass bound: PASSES[method] forward+backward passes
    of the plain model of `model_name` (a load_ar source) on the same batch, the fastest it runs
    (SDPA attention where the family supports it, no hooks; the same weights). kv "per-query"
    ungroups the model first (per-query-head k/v receivers; the baseline passes run the
    ungrouped model too)."""
    loaded = load_ar(model_name, device=device)
    pm = ProbedModel.from_checkpoint(loaded, backend=backend, ungroup_kv=kv == "per-query")
    batch = ioi_batch(pm, batch_size, seed=0)
    model = pm.model
    dev = next(model.parameters()).device
    ids, mask = batch.input_ids.to(dev), batch.attention_mask.to(dev)
    targets = Targets.of(batch.items)
    plain_attention = "sdpa" if pm._sdpa else "eager"

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def forward_backward() -> None:
        model.set_attn_implementation(plain_attention)
        try:
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
            metric_values("logit_diff", logits, targets).sum().backward()
            sync()
        finally:
            model.set_attn_implementation("eager")

    def runner(method: str):
        def run() -> None:
            attribute(pm, batch, method=method, steps=steps, batch_size=None)
            sync()

        return run

    fns = {"fwd_bwd": forward_backward, **{m: runner(m) for m in methods}}
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        order = list(fns.items())
        for label, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    memory = {k: extra_peak_mib(fn) for k, fn in fns.items()}
    n_edges = len(Graph(pm.shape))
    L = pm.config.n_layers
    return {
        "benchmark": "gradient_methods",
        "model": model_name,
        "backend": pm.backend_name,
        "device": str(dev),
        "batch": list(ids.shape),
        "steps": steps,
        "edges": n_edges,
        "kv_receivers": pm.config.kv_receivers,
        "baseline_attention": plain_attention,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "fwd_bwd_s": med["fwd_bwd"],
        "seconds": {m: med[m] for m in methods},
        "passes": {m: PASSES[m](steps, L) for m in methods},
        "ratio": {m: med[m] / (PASSES[m](steps, L) * med["fwd_bwd"]) for m in methods},
        "extra_peak_rss_mib": memory,
        "process_peak_rss_mib": peak_rss_mb(),
        "target": f"ratio <= {TARGET}",
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
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="gradient methods, comma-separated")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    r = measure(
        args.model,
        args.batch,
        args.steps,
        args.repeats,
        args.backend,
        args.device,
        args.kv_receivers,
        tuple(args.methods.split(",")),
    )
    print(
        f"{r['model']} ({r['backend']} backend, {r['device']}), IOI batch {r['batch'][0]} x {r['batch'][1]} tokens, "
        f"{r['edges']} edges ({r['kv_receivers']} k/v receivers), m = {r['steps']}, {r['threads']} threads, "
        f"median of {r['repeats']}"
    )
    print(
        f"one forward+backward of the plain model ({r['baseline_attention']}, no hooks): {1e3 * r['fwd_bwd_s']:.1f} ms"
    )
    for m, ratio in r["ratio"].items():
        print(
            f"{m:<20} {1e3 * r['seconds'][m]:9.1f} ms = {ratio:.3f} x {r['passes'][m]} fwd+bwd   (target <= {TARGET})"
            f"   extra peak RSS +{r['extra_peak_rss_mib'][m]:.0f} MiB"
        )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
