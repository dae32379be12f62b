"""A faithfulness curve at SmolLM2 scale (70,651 edges): its wall time against plain forwards.

EAP-IG (m = 5) scores SmolLM2-135M's edges on IOI (64 pairs, AR reading, batch 8); the
faithfulness curve then patches, for each of 10 circuit sizes (0.1 % to 100 % of the edges: the
top edges kept clean, every other edge patched to its corrupted value), the whole complement at
once. A patched pass shares each sender's delta among its edges and reads a receiver's patched sum
off the running sum when most edges are patched (`probe.edits.PassEdits`), so its cost is a
forward pass plus at most half an addition per edge. Printed: the curve (faithfulness per size),
its wall time, and that time as a ratio to the plain forward passes it stands for (10 sizes + the
clean and corrupted runs, per batch), measured in the same run. Then the top EAP-IG edges are
patched exactly, one pass each (`attribute(..., method="exact", edges=...)`), the check of the
estimate a user runs at this scale.

    python -m benchmarks.bench_faithfulness              # about 3 minutes on 2 cores
    python -m benchmarks.bench_faithfulness --n 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
from analyses.batching import batches
from analyses.circuits import attribute, faithfulness_curve
from analyses.graph import spearman
from ar2mdm.tasks import get_task, render
from probe import ProbedModel

SIZES_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=64, help="IOI pairs.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps m.")
    parser.add_argument("--exact-top", type=int, default=20, help="Also patch this many top EAP-IG edges exactly.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pm = ProbedModel.from_checkpoint(args.model, backend="torch")
    task = get_task("ioi", pm.tokenizer)
    examples = task.generate_aligned(args.n, pm.tokenizer, seed=0, modes=("ar",))
    items = [render(e, pm.tokenizer, "ar") for e in examples]
    t0 = time.perf_counter()
    graph = attribute(pm, items, method="eap-ig-inputs", steps=args.steps, batch_size=args.batch_size)
    attribution_s = time.perf_counter() - t0
    total = len(graph.edges)
    sizes = sorted({max(1, round(f * total)) for f in SIZES_FRACTIONS})
    t0 = time.perf_counter()
    curve = faithfulness_curve(pm, items, graph, sizes, batch_size=args.batch_size)
    curve_s = time.perf_counter() - t0
    # the plain forwards the curve stands for: per batch, one per size plus clean and corrupted
    t0 = time.perf_counter()
    n_forwards = 0
    with torch.no_grad():
        for batch in batches(pm, items, args.batch_size):
            for _ in range(len(sizes) + 2):
                pm({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
                n_forwards += 1
    forwards_s = time.perf_counter() - t0
    top = graph.top(args.exact_top)
    t0 = time.perf_counter()
    exact = attribute(pm, items, method="exact", batch_size=args.batch_size, edges=top, nodes=False)
    exact_s = time.perf_counter() - t0
    pairs = [(graph.score(e), exact.score(e)) for e in top]
    result = {
        "model": args.model,
        "edges": total,
        "n": len(items),
        "batch_size": args.batch_size,
        "attribution_seconds": attribution_s,
        "curve_seconds": curve_s,
        "plain_forwards_seconds": forwards_s,
        "plain_forwards": n_forwards,
        "ratio_curve_to_plain_forwards": curve_s / forwards_s,
        "sizes": curve.sizes,
        "kept": curve.kept,
        "values": curve.values,
        "cpr": curve.area,
        "exact_top": {
            "edges": top,
            "eap_ig": [a for a, _ in pairs],
            "exact": [b for _, b in pairs],
            "seconds": exact_s,
            "spearman": spearman([a for a, _ in pairs], [b for _, b in pairs]),
        },
        "clean": curve.clean,
        "corrupt": curve.corrupt,
    }
    print(f"{args.model}: {total} edges, IOI n={len(items)}, batch {args.batch_size}")
    print(f"EAP-IG (m={args.steps}): {attribution_s:.1f} s")
    print(f"faithfulness curve, {len(sizes)} sizes: {curve_s:.1f} s = {curve_s / 60:.1f} min")
    print(f"  the same number of plain forwards ({n_forwards}): {forwards_s:.1f} s; ratio {curve_s / forwards_s:.2f}")
    for size, kept, f in zip(curve.sizes, curve.kept, curve.values, strict=True):
        print(f"  top {size:>6} edges ({kept:>6} after pruning): faithfulness {f:.3f}")
    print(f"  CPR (area) {curve.area:.3f}")
    print(
        f"exact patching of the top {len(top)} EAP-IG edges: {exact_s:.1f} s; Spearman with EAP-IG "
        f"{result['exact_top']['spearman']:.2f}"
    )
    for edge, (a, b) in zip(top[:5], pairs[:5], strict=False):
        print(f"  {edge:>22}: EAP-IG {a:+.4f}  exact {b:+.4f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
