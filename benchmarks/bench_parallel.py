"""Parallel decoding against one-token-per-call decoding: accuracy vs tokens/s and NFE, per rule
and cache, in one run (Fast-dLLM's trade-off curve), plus each cache's drift.

    python -m benchmarks.bench_parallel --mdm runs/organism-mdm-copy \
        --task runs/long-answer/copy-eval.jsonl [--n 100] [--rounds 3] [--block-length 8] \
        [--json docs/results/sampling/parallel/results.json] [--html .../curve.html]
    python -m benchmarks.bench_parallel --continuations --mdm runs/smollm2-mdm-cpu \
        [--prompts 8] [--max-new-tokens 128] [--block-length 32] [--json ...]

The baseline is low-confidence decoding at one token per call (LLaDA's sampler), same blocks, no
cache. Every other row sweeps a rule (threshold tau, factor f) and a cache (none, prefix, dual).
Each round runs every setting once on the same examples (batch 1, so tokens/s is per sequence)
and the median tokens/s over rounds is reported as a ratio to the baseline's median in the same
run (this machine is noisy; the ratios are what to compare). Accuracy and NFE are deterministic
(temperature 0). The issue's target: >= 5x tokens/s at <= 1 point accuracy loss.

Drift: for each cache, the largest |cached - recomputed| logit over the positions a step may
commit, per step, on the first examples (`ar2mdm.sampling.cache.drift`; decoding one token per call so
that every call after a block's first reuses the cache), next to the spread of those logits
(their standard deviation over the vocabulary, mean over positions) for scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from analyses.generation import SamplerSpec, task_accuracy, task_sets
from conversion.checkpoints import load_any

TARGET_RATIO = 5.0
MAX_LOSS = 0.01  # accuracy points (as a fraction) the fast setting may lose


def specs(block_length: int | None) -> list[SamplerSpec]:
    """The baseline first, then the sweep."""
    bl = {"block_length": block_length}
    out = [SamplerSpec("low-confidence", dict(bl), "low-confidence, 1 token/call")]
    for cache in ("none", "prefix", "dual"):
        for tau in (0.95, 0.9, 0.8, 0.7, 0.5):
            out.append(
                SamplerSpec("threshold", {**bl, "tau": tau, "cache": cache}, f"threshold tau={tau} cache={cache}")
            )
        for f in (0.5, 1.0, 2.0, 4.0):
            out.append(SamplerSpec("factor", {**bl, "factor": f, "cache": cache}, f"factor f={f} cache={cache}"))
    return out


def measure_drift(loaded, task, examples, block_length: int | None, n: int = 8) -> dict[str, dict[str, float]]:
    """Per cache: mean and max per-step drift over `n` examples, and the logit spread. An
    example rendered for MDM reading (`ar2mdm.tasks.render`) is already its canvas: prompt, a mask per
    answer token, suffix."""
    from ar2mdm.sampling import ModelContext, ThresholdSampler, drift
    from ar2mdm.sampling.base import mdm_forward_kwargs
    from ar2mdm.tasks import render

    model, tok, meta = loaded.model, loaded.tokenizer, loaded.meta
    ctx = ModelContext.from_meta(meta, tok, model)
    rendered = [render(ex, tok, "mdm", shift=meta.shift, mask_id=meta.mask_id) for ex in examples[:n]]
    out = {}
    for cache in ("prefix", "dual"):
        steps: list[float] = []
        for r in rendered:
            ids = r.input_ids[None]
            # tau = 1: one token per call, so every call after a block's first reuses the cache
            sampler = ThresholdSampler(tau=1.0, cache=cache, block_length=block_length)
            steps += drift(sampler, model, ids, torch.ones_like(ids), ctx)
        out[cache] = {"mean": statistics.mean(steps), "max": max(steps), "steps": len(steps)}
    # the spread of the logits the drift is read against: std over the vocabulary at the
    # positions the first call predicts
    ids = rendered[0].input_ids[None]
    with torch.no_grad():
        logits = model(**mdm_forward_kwargs(ctx, ids, torch.ones_like(ids), torch.float32)).logits[0].float()
    out["logit_spread"] = float(logits[rendered[0].read_positions].std(-1).mean())
    out["kind"] = "block diffusion" if meta.block_size else "bidirectional"
    return out


def measure(mdm: str | Path, task: str, n: int = 100, rounds: int = 3, block_length: int | None = 8) -> dict:
    loaded = load_any(mdm)
    task_obj, examples = next(iter(task_sets(loaded, [task], n).values()))
    sweep = specs(block_length)
    speed: dict[str, list[float]] = {s.title: [] for s in sweep}
    rows = {}
    task_accuracy(loaded, task_obj, examples[:4], sweep[0], batch_size=1)  # warm-up
    for _ in range(rounds):
        for spec in sweep:
            row = task_accuracy(loaded, task_obj, examples, spec, batch_size=1)
            speed[spec.title].append(row.tokens_per_s)
            rows[spec.title] = row
    base = statistics.median(speed[sweep[0].title])
    table = []
    for spec in sweep:
        r = rows[spec.title]
        med = statistics.median(speed[spec.title])
        table.append(
            {
                "setting": spec.title,
                "sampler": spec.name,
                "options": dict(spec.options),
                "tokens_per_s": med,
                "ratio": med / base,
                "nfe": r.nfe,
                "accuracy": r.accuracy,
            }
        )
    return {
        "mdm": str(mdm),
        "task": task,
        "n": len(examples),
        "answer_tokens": round(rows[sweep[0].title].tokens / len(examples), 1),
        "rounds": rounds,
        "block_length": block_length,
        "threads": torch.get_num_threads(),
        "rows": table,
        "drift": measure_drift(loaded, task_obj, examples, block_length),
    }


def continuation_specs(block_length: int | None) -> list[SamplerSpec]:
    """Settings for long continuations: the baseline first."""
    bl = {"block_length": block_length}
    out = [SamplerSpec("low-confidence", dict(bl), "low-confidence, 1 token/call")]
    for cache in ("prefix", "dual"):
        for tau in (0.9, 0.7, 0.5):
            out.append(
                SamplerSpec("threshold", {**bl, "tau": tau, "cache": cache}, f"threshold tau={tau} cache={cache}")
            )
    for f in (1.0, 2.0):
        out.append(SamplerSpec("factor", {**bl, "factor": f, "cache": "dual"}, f"factor f={f} cache=dual"))
    return out


def measure_continuations(
    mdm: str | Path, reference: str, prompts: int = 8, max_new_tokens: int = 128, block_length: int | None = 32
) -> dict:
    """gen-PPL (under the AR `reference`, re-tokenised), unigram entropy, NFE and tokens/s of each
    setting continuing the openings of the last `prompts` SOTU documents (held out of the
    conversions' training tail) by `max_new_tokens` tokens, batch 1, temperature 0."""
    from analyses.generation import gen_ppl, generate_texts
    from conversion.checkpoints import load_ar
    from conversion.data import load_texts

    loaded, ref = load_any(mdm), load_ar(reference)
    docs = load_texts("sotu")["text"]
    texts = [" ".join(d.split()[:12]) for d in docs[-prompts:]]
    rows = []
    for spec in continuation_specs(block_length):
        s = generate_texts(loaded, texts, spec, max_new_tokens=max_new_tokens, batch_size=1)
        scored = gen_ppl(s.texts, ref, context=texts)
        rows.append(
            {
                "setting": spec.title,
                "sampler": spec.name,
                "options": dict(spec.options),
                "tokens_per_s": s.tokens_per_s,
                "nfe": s.nfe,
                "gen_ppl": scored["gen_ppl"],
                "entropy": scored["entropy"],
                "example": s.texts[0][:200],
            }
        )
        print(
            f"  {spec.title:36s} {s.tokens_per_s:7.1f} tok/s  NFE {s.nfe:6.1f}  gen-PPL {scored['gen_ppl']:8.1f}",
            flush=True,
        )
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["ratio"] = r["tokens_per_s"] / base
    return {
        "mdm": str(mdm),
        "reference": reference,
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "block_length": block_length,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def fastest_at_equal_ppl(rows: Sequence[dict], tolerance: float = 0.05) -> dict:
    """The fastest setting whose gen-PPL is within `tolerance` (relative) of the baseline's."""
    base = rows[0]["gen_ppl"]
    ok = [r for r in rows[1:] if r["gen_ppl"] <= base * (1 + tolerance)]
    return max(ok, key=lambda r: r["ratio"]) if ok else rows[0]


def best_within(rows: Sequence[dict], loss: float = MAX_LOSS) -> dict:
    """The fastest setting whose accuracy is at most `loss` below the baseline's (rows[0])."""
    base = rows[0]["accuracy"]
    ok = [r for r in rows[1:] if r["accuracy"] >= base - loss - 1e-12]
    return max(ok, key=lambda r: r["ratio"]) if ok else rows[0]


def figure(res: dict):
    """Plotly figure: accuracy against tokens/s ratio (left) and against NFE (right), one trace
    per (rule, cache), the baseline as a star."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy vs tokens/s (x baseline)", "accuracy vs NFE"))
    groups: dict[str, list[dict]] = {}
    for r in res["rows"][1:]:
        key = f"{r['sampler']} cache={r['options'].get('cache')}"
        groups.setdefault(key, []).append(r)
    for key, rs in groups.items():
        text = [r["setting"].split(" cache")[0] for r in rs]
        for col, x in ((1, [r["ratio"] for r in rs]), (2, [r["nfe"] for r in rs])):
            fig.add_trace(
                go.Scatter(x=x, y=[r["accuracy"] for r in rs], mode="lines+markers", name=key, text=text,
                           legendgroup=key, showlegend=col == 1),
                row=1, col=col,
            )  # fmt: skip
    b = res["rows"][0]
    for col, x in ((1, 1.0), (2, b["nfe"])):
        fig.add_trace(
            go.Scatter(x=[x], y=[b["accuracy"]], mode="markers", marker={"symbol": "star", "size": 14},
                       name=b["setting"], legendgroup="base", showlegend=col == 1),
            row=1, col=col,
        )  # fmt: skip
    fig.update_xaxes(title_text="tokens/s ratio to low-confidence", type="log", row=1, col=1)
    fig.update_xaxes(title_text="model calls per sequence (NFE)", row=1, col=2)
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_layout(
        title=f"{Path(res['task']).name}: {res['n']} examples, {res['answer_tokens']} answer tokens, block {res['block_length']}",
        height=480, width=1100,
    )  # fmt: skip
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mdm", default="runs/organism-mdm-copy")
    ap.add_argument("--task", default="runs/long-answer/copy-eval.jsonl")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block-length", type=int, default=8, help="0 = the whole answer as one block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--continuations", action="store_true", help="gen-PPL of long continuations instead of a task")
    ap.add_argument("--reference", default="smollm2", help="AR model scoring gen-PPL (--continuations)")
    ap.add_argument("--prompts", type=int, default=8, help="continuations: SOTU openings")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="continuations: tokens generated")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--html", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.continuations:
        res = measure_continuations(
            args.mdm, args.reference, args.prompts, args.max_new_tokens, args.block_length or None
        )
        best = fastest_at_equal_ppl(res["rows"])
        base = res["rows"][0]
        print(
            f"fastest at gen-PPL within 5% of the baseline's ({base['gen_ppl']:.1f}): {best['setting']}: "
            f"{best['ratio']:.2f}x tokens/s, NFE {best['nfe']:.1f} vs {base['nfe']:.1f}, gen-PPL {best['gen_ppl']:.1f}"
        )
        res["best"] = best
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=1))
        return
    res = measure(args.mdm, args.task, args.n, args.rounds, args.block_length or None)
    rows = res["rows"]
    base = rows[0]
    print(
        f"{res['task']}: {res['n']} examples, {res['answer_tokens']} answer tokens, block {res['block_length']}, "
        f"batch 1, {res['rounds']} rounds, {res['threads']} thread(s)"
    )
    print(f"{'setting':36s} {'tok/s':>8s} {'ratio':>6s} {'NFE':>6s} {'acc':>6s} {'d acc':>6s}")
    for r in rows:
        print(
            f"{r['setting']:36s} {r['tokens_per_s']:8.1f} {r['ratio']:6.2f} {r['nfe']:6.2f} "
            f"{r['accuracy']:6.3f} {r['accuracy'] - base['accuracy']:+6.3f}"
        )
    best = best_within(rows)
    met = best["ratio"] >= TARGET_RATIO
    print(
        f"fastest within {MAX_LOSS * 100:.0f} point: {best['setting']}: {best['ratio']:.2f}x tokens/s, "
        f"NFE {best['nfe']:.2f} vs {base['nfe']:.2f}, accuracy {best['accuracy']:.3f} vs {base['accuracy']:.3f} "
        f"(target >= {TARGET_RATIO:.0f}x: {'met' if met else 'NOT met'})"
    )
    d = res["drift"]
    print(
        f"drift ({d['kind']} checkpoint, logit spread {d['logit_spread']:.2f}): "
        + ", ".join(
            f"{c} mean {d[c]['mean']:.4f} max {d[c]['max']:.4f} over {d[c]['steps']} steps" for c in ("prefix", "dual")
        )
    )
    res["best"] = best
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        figure(res).write_html(str(args.html), include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
