"""run_with_cache time as a ratio to a plain forward of the same model on the same batch.

The cached pass records every head output, every MLP output and the residual stream before and
after every layer (plus embed): `names=["embed", "L*.H*", "L*.mlp", "L*.resid_*"]`. Plain and
cached passes are timed interleaved in one process (machine noise hits both alike); we report the
median of `--repeats` pairs per backend. Targets (issue 16): ratio <= 1.10 for the torch backend,
<= 1.25 for nnsight and TransformerLens.

The plain forward is the same model object the probe runs (eager attention, which the probe needs
to expose patterns); a second baseline is the model as transformers loads it by default (sdpa).

Memory: the peak of the process's resident set during one pass minus its size before the pass
(sampled every millisecond from /proc/self/statm by a background thread), for a plain and for a
cached pass, and the bytes the cache holds. Torch's CPU tensors are not seen by `tracemalloc`, so
RSS is the honest measure here; the process's overall high-water mark (`resource`) is printed too.

    python -m benchmarks.bench_probe                      # SmolLM2-135M, batch 8 x 20 tokens
    python -m benchmarks.bench_probe --backends torch nnsight tl --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from conversion.checkpoints import load_ar
from probe import ProbedModel

NAMES = ["embed", "L*.H*", "L*.mlp", "L*.resid_pre", "L*.resid_post"]
TARGETS = {"torch": 1.10, "nnsight": 1.25, "tl": 1.25}  # run_with_cache time / plain forward time at most


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def extra_peak_mib(fn: Callable[[], object], interval: float = 0.001) -> float:
    """Peak RSS while `fn` runs minus RSS before it, sampled every `interval` seconds."""
    start = rss_mib()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], rss_mib()) - start


def measure(model_name: str, backends: list[str], batch: int, seq_len: int, repeats: int) -> dict:
    """Plain, sdpa and cached pass times and memory of `model_name` (a load_ar source) per backend."""
    loaded = load_ar(model_name)
    sdpa = load_ar(model_name).model  # the default attention, untouched by the probe
    gen = torch.Generator().manual_seed(0)
    vocab = loaded.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    results = {}
    pms = {b: ProbedModel.from_checkpoint(loaded, backend=b) for b in backends}
    model = loaded.model  # now eager and frozen: what every backend runs

    def plain(m) -> None:
        with torch.no_grad():
            m(input_ids=ids, attention_mask=mask, use_cache=False)

    plain(model)
    plain(sdpa)
    plain_extra = extra_peak_mib(lambda: plain(model))
    for name, pm in pms.items():
        pm.run_with_cache(ids, names=NAMES)  # warm-up
        held = {}
        cached_extra = extra_peak_mib(lambda: held.update(out=pm.run_with_cache(ids, names=NAMES)))  # noqa: B023
        cache = held.pop("out")[1]
        n_tensors, cache_mb = len(cache), cache.nbytes / 2**20
        del cache
        t_plain, t_sdpa, t_cache = [], [], []
        for i in range(repeats):
            steps = [
                ("plain", lambda: plain(model)),
                ("sdpa", lambda: plain(sdpa)),
                ("cache", lambda pm=pm: pm.run_with_cache(ids, names=NAMES)),
            ]
            for label, fn in steps if i % 2 == 0 else steps[::-1]:
                t0 = time.perf_counter()
                fn()
                {"plain": t_plain, "sdpa": t_sdpa, "cache": t_cache}[label].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in (("plain", t_plain), ("sdpa", t_sdpa), ("cache", t_cache))}
        results[name] = {
            "plain_eager_s": med["plain"],
            "plain_sdpa_s": med["sdpa"],
            "run_with_cache_s": med["cache"],
            "ratio": med["cache"] / med["plain"],
            "ratio_vs_sdpa": med["cache"] / med["sdpa"],
            "cached_tensors": n_tensors,
            "cache_mib": cache_mb,
            "extra_peak_mib_cached_pass": cached_extra,
        }
    return {
        "benchmark": "probe_run_with_cache",
        "model": model_name,
        "batch": batch,
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "names": NAMES,
        "extra_peak_mib_plain_pass": plain_extra,
        "process_peak_rss_mib": peak_rss_mb(),
        "backends": results,
        "targets": TARGETS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="any load_ar source (default: smollm2)")
    ap.add_argument("--backends", nargs="+", default=["torch", "nnsight", "tl"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()
    res = measure(args.model, args.backends, args.batch, args.seq_len, args.repeats)
    print(
        f"{args.model}, batch {args.batch} x {args.seq_len} tokens, {res['threads']} threads, "
        f"median of {args.repeats}; plain pass: +{res['extra_peak_mib_plain_pass']:.0f} MiB peak; "
        f"process peak RSS {res['process_peak_rss_mib']:.0f} MiB"
    )
    print(
        f"{'backend':<8} {'plain ms':>9} {'sdpa ms':>8} {'cache ms':>9} {'ratio':>6} {'vs sdpa':>8} "
        f"{'tensors':>8} {'cache MiB':>10} {'pass peak MiB':>14}"
    )
    for name, r in res["backends"].items():
        print(
            f"{name:<8} {1e3 * r['plain_eager_s']:>9.1f} {1e3 * r['plain_sdpa_s']:>8.1f} "
            f"{1e3 * r['run_with_cache_s']:>9.1f} {r['ratio']:>6.3f} {r['ratio_vs_sdpa']:>8.3f} "
            f"{r['cached_tensors']:>8} {r['cache_mib']:>10.1f} {r['extra_peak_mib_cached_pass']:>+14.0f}"
            + (f"   (target <= {TARGETS[name]:.2f})" if name in TARGETS else "")
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
