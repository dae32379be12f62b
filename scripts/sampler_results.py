"""Measure every sampler on the organism's MDM (and optionally gen-PPL on a SmolLM2 conversion).

    python scripts/sampler_results.py --mdm runs/organism-mdm-sft \
        [--uniform-mdm runs/organism-mdm-sft-uniform] [--n 200] [--out docs/results/sampling]
    python scripts/sampler_results.py --smollm2-mdm runs/smollm2-mdm-cpu --out docs/results/sampling

Organism: accuracy, NFE and tokens/s on IOI and Countdown for each sampler at step budgets
L, L/2, L/4 (L = answer length), batch size 1 so tokens/s is per sequence; the threshold sampler
at several tau on every task (its speed against low-confidence decoding); the AR organism as a
baseline. SmolLM2: continuations of held-out SOTU openings, gen-PPL under SmolLM2 itself
(re-tokenised) with unigram entropy, per sampler, and the AR model's own samples for reference.
Writes JSON, Markdown tables and plotly HTML into --out.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from analyses.generation import (
    SamplerSpec,
    ar_scorer,
    evaluate_samplers,
    gen_ppl,
    generate_texts,
    table,
    task_sets,
    write_report,
)
from conversion.checkpoints import load_any, load_ar

ORGANISM_SPECS = [
    SamplerSpec("ancestral", {"temperature": 0.0}),
    SamplerSpec("low-confidence"),
    SamplerSpec("margin"),
    SamplerSpec("entropy"),
    SamplerSpec("threshold", {"tau": 0.9}),
    SamplerSpec("remask", {"temperature": 0.0, "strategy": "cap", "eta": 0.05}),
    SamplerSpec("arpc", {"temperature": 0.0}),
]


def organism(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    mdm = load_any(args.mdm)
    ar = load_ar("organism")
    scorer = ar_scorer(mdm)
    sets = task_sets(mdm, ["ioi", "countdown"], args.n)
    rows = evaluate_samplers(mdm, sets, ORGANISM_SPECS, batch_size=1, scorer=scorer)
    rows += evaluate_samplers(
        ar, task_sets(ar, ["ioi", "countdown"], args.n), [SamplerSpec("ar", label="ar (organism ARM)")], batch_size=1
    )
    write_report(rows, out / "organism", extra={"mdm": args.mdm, "n": args.n, "batch_size": 1}, plotlyjs="cdn")
    print(table(rows))

    # Threshold against low-confidence on every task, several tau, cache on and off.
    all_tasks = ["ioi", "greater_than", "induction", "countdown", "infilling", "sudoku"]
    tsets = task_sets(mdm, all_tasks, args.n)
    specs = [SamplerSpec("low-confidence")] + [
        SamplerSpec("threshold", {"tau": tau, "cache": cache}, f"threshold tau={tau} cache={cache}")
        for tau in (0.9, 0.7, 0.5)
        for cache in ("prefix", "none")
    ]
    trows = evaluate_samplers(mdm, tsets, specs, fractions=(1.0,), batch_size=1)
    write_report(trows, out / "threshold", extra={"mdm": args.mdm, "n": args.n, "batch_size": 1}, plotlyjs="cdn")
    print(table(trows))
    return {"organism": [asdict(r) for r in rows], "threshold": [asdict(r) for r in trows]}


def uniform(args: argparse.Namespace) -> None:
    uni = load_any(args.uniform_mdm)
    sets = task_sets(uni, ["ioi", "countdown"], args.n)
    specs = [
        SamplerSpec("uniform", {"temperature": 0.0}, "uniform T=0"),
        SamplerSpec("uniform", {"temperature": 1.0}, "uniform T=1"),
    ]
    rows = evaluate_samplers(uni, sets, specs, batch_size=1)
    write_report(
        rows, Path(args.out) / "uniform", extra={"mdm": args.uniform_mdm, "n": args.n, "batch_size": 1}, plotlyjs="cdn"
    )
    print(table(rows))


def smollm2(args: argparse.Namespace) -> dict:
    from conversion.data import load_texts

    out = Path(args.out) / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    mdm = load_any(args.smollm2_mdm)
    ref = load_ar("smollm2")
    docs = load_texts("sotu")["text"]
    # Openings of the last documents (the held-out end of the corpus), first ~12 words.
    prompts = [" ".join(d.split()[:12]) for d in docs[-args.prompts :]]
    results = {}
    specs = [
        SamplerSpec("ancestral", {"temperature": 1.0}),
        SamplerSpec("low-confidence", {"temperature": 0.0}),
        SamplerSpec("low-confidence", {"temperature": 1.0}, "low-confidence T=1"),
        SamplerSpec("entropy"),
        SamplerSpec("threshold", {"tau": 0.9}),
        SamplerSpec("remask", {"temperature": 1.0}),
        SamplerSpec("arpc", {"temperature": 1.0}),
    ]
    scorer = ref.model
    for spec in specs:
        s = generate_texts(mdm, prompts, spec, max_new_tokens=args.max_new_tokens, batch_size=8, scorer=scorer)
        results[spec.title] = {
            **gen_ppl(s.texts, ref, context=prompts),
            "nfe": s.nfe,
            "tokens_per_s": s.tokens_per_s,
            "example": s.texts[0][:300],
        }
        print(spec.title, {k: v for k, v in results[spec.title].items() if k != "example"})
    for spec in [
        SamplerSpec("ar", {"temperature": 1.0}, "SmolLM2 AR T=1"),
        SamplerSpec("ar", {"temperature": 0.0}, "SmolLM2 AR greedy"),
    ]:
        s = generate_texts(ref, prompts, spec, max_new_tokens=args.max_new_tokens, batch_size=8)
        results[spec.title] = {
            **gen_ppl(s.texts, ref, context=prompts),
            "nfe": s.nfe,
            "tokens_per_s": s.tokens_per_s,
            "example": s.texts[0][:300],
        }
        print(spec.title, {k: v for k, v in results[spec.title].items() if k != "example"})
    payload = {
        "mdm": args.smollm2_mdm,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "results": results,
    }
    (out / "genppl.json").write_text(json.dumps(payload, indent=2))
    lines = ["| sampler | gen-PPL | unigram entropy (nats) | NFE | tokens/s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['gen_ppl']:.1f} | {r['entropy']:.2f} | {r['nfe']:.0f} | {r['tokens_per_s']:.1f} |")
    (out / "genppl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mdm", help="organism MDM folder (absorbing)")
    parser.add_argument("--uniform-mdm", help="organism MDM folder trained with uniform noise")
    parser.add_argument("--smollm2-mdm", help="SmolLM2 MDM folder for gen-PPL")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="docs/results/sampling")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AR2MDM_THREADS", "1")))
    if args.mdm:
        organism(args)
    if args.uniform_mdm:
        uniform(args)
    if args.smollm2_mdm:
        smollm2(args)


if __name__ == "__main__":
    main()
