"""Memory of a LoRA conversion against a full one: trainable parameters, optimizer state, peak RSS.

The same conversion (`conversion.train.train`, the real code path: load, mask token, packing,
diffusion loss, AdamW, a checkpoint, the merged MDM written at the end) runs twice, each in a
fresh process so that no memory is left over: once training every weight, once with `--lora`
(before them, an unmeasured LoRA run fills the data cache, so both read the packed text alike).
Each child reports

* trainable parameters (ar2mdm.json: `extra["lora"]`, or every weight) and their share;
* optimizer-state bytes: the AdamW moments and step counts in the checkpoint's
  optimizer.safetensors (the full state, as the run held it);
* the steady training peak: the largest resident set during steps 2 .. N - 1 (sampled every
  millisecond from /proc/self/statm; every gradient and optimizer moment exists by then), and the
  process peak (`resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end: loading, the checkpoint
  and the merged MDM included);
* checkpoint bytes (weights part) and the median training throughput from train.jsonl (noisy on
  a shared machine: not what this benchmark is for).

The children run with MALLOC_MMAP_THRESHOLD_=131072, so that glibc maps large tensors and returns
them when freed: the resident set then follows the bytes alive (as a GPU allocator's peak, which
decides whether a run fits, does) instead of keeping freed heap. The parent prints both rows, the
ratios LoRA / full of the same run, and the difference of the two steady peaks against what it
should be for each weight that LoRA freezes: at least AdamW's two fp32 moments (8 bytes, resident
all the time), at most those and its fp32 gradient (12 bytes; less in practice, since gradients
grow during the backward pass while the activations it frees shrink).

    python -m benchmarks.bench_lora --json docs/results/lora/bench_lora.json   # SmolLM2-135M, ~6 min
    python -m benchmarks.bench_lora --model organism --steps 3                 # the organism, ~1.5 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.bench_probe import peak_rss_mb, rss_mib

MiB = 2**20
DEFAULT_LORA = "r=8,alpha=16"  # every linear layer but the head, and the mask row
# bytes kept per trained fp32 weight besides the weight itself: AdamW's two moments (always), and
# its gradient (during the backward pass and the step)
MOMENT_BYTES, GRADIENT_BYTES = 8, 4
RATIOS = (
    "trainable_params",
    "optimizer_state_bytes",
    "checkpoint_weight_bytes",
    "steady_peak_rss_mib",
    "process_peak_rss_mib",
    "tokens_per_s",
)
DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "F64": 8}


def _tensors(file: Path) -> tuple[int, int]:
    """(elements, bytes) of the tensors in a safetensors file, from its header."""
    from safetensors import safe_open

    elements = size = 0
    with safe_open(str(file), framework="pt") as f:
        for name in f.keys():
            t = f.get_slice(name)
            numel = 1
            for d in t.get_shape():
                numel *= d
            elements += numel
            size += numel * DTYPE_BYTES.get(t.get_dtype(), 4)
    return elements, size


def child(mode: str, model: str, data: str, steps: int, seq_len: int, batch: int, lora: str, out: Path) -> dict:
    """One conversion of `steps` steps in this process (mode "full", "lora", or "warm-up": a LoRA
    run that fills the data cache); its measurements (sizes in bytes, resident sets in MiB)."""
    import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)
    from ar2mdm.common.metadata import ModelMeta
    from conversion.runfolder import read_log
    from conversion.train import TrainConfig, train

    window = {"on": False, "start": 0.0, "peak": 0.0}
    stop = threading.Event()

    def hook(done: int) -> None:  # the window: from the end of step 1 to the end of step N - 1
        if done == 1:
            window.update(on=True, start=rss_mib(), peak=rss_mib())
        if done == steps - 1:
            window["on"] = False

    def sample() -> None:
        while not stop.is_set():
            if window["on"]:
                window["peak"] = max(window["peak"], rss_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    config = TrainConfig(
        model=model,
        data=data,
        out=str(out),
        steps=steps,
        seq_len=seq_len,
        batch_size=batch,
        lr=1e-4,
        save_every=steps,
        device="cpu",
        lora="" if mode == "full" else lora,
    )
    train(config, on_step=hook)
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    extra = ModelMeta.load(out).extra
    ckpt = out / "checkpoint"
    if mode == "full":  # every weight of the MDM (a tied head counted once)
        trainable = total = _tensors(out / "model.safetensors")[0]
    else:
        trainable, total = extra["lora"]["trainable_params"], extra["lora"]["total_params"]
    rates = [r["tokens_per_s"] for r in read_log(out) if r["kind"] == "train"][1:]  # step 1 warms up
    return {
        "mode": mode,
        "lora": extra["options"]["lora"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": trainable / total,
        "optimizer_state_bytes": _tensors(ckpt / "optimizer.safetensors")[1],
        "checkpoint_weight_bytes": _tensors(ckpt / "model.safetensors")[1],
        "rss_after_step1_mib": window["start"],
        "steady_peak_rss_mib": window["peak"],
        "process_peak_rss_mib": peak_rss_mb(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "tokens_per_s": statistics.median(rates) if rates else float("nan"),
        "wall_s": wall,
    }


def measure(model: str, data: str, steps: int, seq_len: int, batch: int, lora: str) -> dict:
    """Both conversions, each in its own process; the rows and the ratios LoRA / full."""
    rows = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        for mode, n in (("warm-up", 3), ("full", steps), ("lora", steps)):
            argv = [sys.executable, "-m", "benchmarks.bench_lora", "--child", mode, "--model", model, "--data", data]
            argv += ["--steps", str(n), "--seq-len", str(seq_len), "--batch", str(batch), "--lora", lora]
            argv += ["--out", str(Path(tmp) / mode)]
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=root, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"the {mode} conversion failed:\n{proc.stderr[-3000:]}")
            rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    full, lo = rows["full"], rows["lora"]
    frozen = full["trainable_params"] - lo["trainable_params"]
    return {
        "benchmark": "lora",
        "model": model,
        "data": data,
        "steps": steps,
        "seq_len": seq_len,
        "batch": batch,
        "threads": os.cpu_count(),
        "rows": [full, lo],
        "ratios_lora_over_full": {key: lo[key] / full[key] for key in RATIOS},
        "steady_peak_saved_mib": full["steady_peak_rss_mib"] - lo["steady_peak_rss_mib"],
        "steady_peak_saved_expected_mib": [MOMENT_BYTES * frozen / MiB, (MOMENT_BYTES + GRADIENT_BYTES) * frozen / MiB],
    }


def format_table(res: dict) -> str:
    """The printed report: one row per mode, the ratios, the saving against its expectation."""
    lines = [
        f"{'mode':<5} {'trainable':>12} {'share':>8} {'optim MiB':>10} {'ckpt MiB':>9} "
        f"{'steady peak MiB':>16} {'process peak MiB':>17} {'tok/s':>7}"
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['mode']:<5} {r['trainable_params']:>12,} {r['trainable_share']:>8.2%} "
            f"{r['optimizer_state_bytes'] / MiB:>10.1f} {r['checkpoint_weight_bytes'] / MiB:>9.1f} "
            f"{r['steady_peak_rss_mib']:>16.0f} {r['process_peak_rss_mib']:>17.0f} {r['tokens_per_s']:>7.0f}"
        )
    names = {k: k.removesuffix("_bytes").removesuffix("_mib").replace("_", " ") for k in RATIOS}
    lines.append("lora/full: " + ", ".join(f"{names[k]} {v:.3f}" for k, v in res["ratios_lora_over_full"].items()))
    lines.append(
        f"steady training peak saved: {res['steady_peak_saved_mib']:.0f} MiB measured, "
        "{:.0f} to {:.0f} MiB expected (8 to 12 bytes per frozen weight)".format(*res["steady_peak_saved_expected_mib"])
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="any `load_ar` source (smollm2, organism, an HF folder)")
    ap.add_argument("--data", default="sotu", help="a corpus name or text files (`data.load_texts`)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (>= 3)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lora", default=DEFAULT_LORA, help="the --lora setting of the LoRA run")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--child", choices=("warm-up", "full", "lora"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 3:
        ap.error("--steps must be >= 3 (the steady peak is read over steps 2 .. N - 1)")
    if args.child:
        row = child(args.child, args.model, args.data, args.steps, args.seq_len, args.batch, args.lora, args.out)
        print(json.dumps(row))
        return 0
    res = measure(args.model, args.data, args.steps, args.seq_len, args.batch, args.lora)
    print(format_table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
