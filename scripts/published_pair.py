"""A published-pair comparison at model scale: a Qwen2 ARM and a Dream-layout MDM, opened and compared.

The device check of issue 15: random replicas of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14
heads, 2 KV heads, MLP 4864, 151,936 embedding rows: 494 M parameters), one written as a plain
Qwen2 ARM and one in Dream's layout (model_type "Dream", mask_token_id), are opened with
`ProbedModel.from_checkpoint(..., dtype, device)` (the published-family reader for the MDM) and
compared with `analyses.compare.compare` on a small pool. Writes load.json (parameters, predicted
and measured memory, load and compare seconds) and the compare report (report.json, summary.md,
report.html) under --out; no weights are kept.

    python -m scripts.published_pair --size 0.5b --device cuda --dtype bf16 --out results/pair  # on a GPU
    python -m scripts.published_pair --size tiny --out /tmp/pair                                # CPU check

tests/test_published.py runs the tiny size on CPU (the same code path).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from analyses.compare import CompareOptions, compare, markdown_summary, write_report
from ar2mdm.common.modeling import parse_device, parse_dtype
from benchmarks.bench_load_memory import write_replica
from conversion.memory import GiB, predict_load_bytes
from probe import ProbedModel

SIZES = {  # hidden, layers, MLP, heads, KV heads, embedding rows
    "tiny": (64, 2, 128, 4, 2, 512),
    "0.5b": (896, 24, 4864, 14, 2, 151_936),
}


def run(size: str, device: str, dtype: str, out: Path, pool: int = 16) -> dict:
    """Build the pair, open and compare it; write load.json and the report to `out`; return load.json."""
    dev, dt = parse_device(device), parse_dtype(dtype)
    hidden, layers, inter, heads, kv, vocab = SIZES[size]
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"size": size, "device": str(dev), "dtype": str(dt)}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for role, layout, seed in (("ar", "qwen2", 0), ("mdm", "dream", 1)):
            folders[role] = Path(tmp) / role
            n = write_replica(
                folders[role], hidden, layers, inter, heads=heads, kv_heads=kv, vocab=vocab, layout=layout, seed=seed
            )
        record["n_params"] = n
        record["predicted_gib_per_model"] = predict_load_bytes(n, dt, file_bytes=2 * n) / GiB
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        ar = ProbedModel.from_checkpoint(str(folders["ar"]), expect="ar", dtype=dt, device=dev, backend="torch")
        mdm = ProbedModel.from_checkpoint(str(folders["mdm"]), expect="mdm", dtype=dt, device=dev, backend="torch")
        record["load_seconds"] = time.perf_counter() - t0
        record["mdm_source_format"] = mdm.meta.source_format
        record["loaded_dtype"] = str(next(mdm.model.parameters()).dtype)
        if dev.type == "cuda":
            record["measured_gib_after_load_pair"] = torch.cuda.memory_allocated(dev) / GiB
        opts = CompareOptions(
            tasks=("ioi", "greater_than"),
            pool_size=pool,
            steps=2,
            n_boot=100,
            batch_size=8,
            faithfulness=False,
            ablations=False,
            neurons=False,
            causal=False,
            denoising=(),
            common_correct=False,
            null_pair=False,
        )
        t0 = time.perf_counter()
        result = compare(ar, mdm, opts, labels={"ar": f"qwen2-{size}", "mdm": f"dream-{size}"}, log=print)
        record["compare_seconds"] = time.perf_counter() - t0
        if dev.type == "cuda":
            record["measured_peak_gib"] = torch.cuda.max_memory_allocated(dev) / GiB
        write_report(result, out, title=f"Qwen2 vs Dream-layout replicas ({size}, {dtype}, {dev})")
        record["tasks"] = {t: e["n"] for t, e in result.data["tasks"].items()}
    (out / "load.json").write_text(json.dumps(record, indent=2))
    print(markdown_summary(result.data))
    print(json.dumps(record, indent=2))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--pool", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run(args.size, args.device, args.dtype, args.out, args.pool)


if __name__ == "__main__":
    main()
