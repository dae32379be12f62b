"""Head activation patching on IOI and the logit lens, on real checkpoints, through `probe`.

For each model: render IOI examples for its reading mode (AR: read after the prompt; MDM: the
answer masked in place, read where its shift says), run clean and corrupted (ABC) inputs, then
patch each head's clean output into the corrupted run (denoising) and measure the logit
difference logit(IO) - logit(S) at the answer's read position. Normalised score per head:

    (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)      (means over examples)

1 = this head alone restores the clean behaviour, 0 = no effect. All heads of a layer are patched
in one batched pass (one copy of the batch per head, each copy patched at its own rows).
The logit lens reads the clean residual stream after the embedding and after every layer through
the final norm and the unembedding: rank of the correct first answer token (0 = top-1).

Writes, under --out: `<model>-ioi-heads.html` (layers x heads heatmap), `logit-lens.html` (rank
by layer), and `probe_results.json` (every number). Figures load plotly.js from its CDN so the
files stay small; the JSON holds the same data.

    python scripts/probe_results.py --n 16 --n-organism 64 --out docs/results/probe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ar2mdm.common  # noqa: F401  (process settings before transformers is imported: common.env)

# isort: split
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ar2mdm.tasks import collate, generate_aligned, get_task, render
from probe import ProbedModel, answer_logit_diff, logit_lens
from probe.lens import read_targets

MODELS = {"smollm2": "smollm2", "organism-ar": "organism", "organism-mdm": "runs/organism-mdm-sft"}


def ioi_batch(pm: ProbedModel, n: int, seed: int):
    tok = pm.tokenizer
    mode = pm.config.kind
    task = get_task("ioi", tok)
    examples = generate_aligned(task, n, tok, seed, modes=(mode,), mask_id=pm.config.mask_id)
    rendered = [render(ex, tok, mode, shift=pm.config.shift, mask_id=pm.config.mask_id) for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return rendered, collate(rendered, pad)


@torch.no_grad()
def head_patching(pm: ProbedModel, rendered, batch) -> dict:
    """Denoising activation patching of every head; returns the scores and the baselines."""
    heads = [n for n in pm.senders() if ".H" in n]
    clean_logits, clean = pm.run_with_cache(batch, heads)
    corrupted_inputs = {"input_ids": batch.corrupted_ids, "attention_mask": batch.attention_mask}
    corrupted_logits = pm(corrupted_inputs)
    ld_clean = answer_logit_diff(clean_logits, rendered)
    ld_corrupted = answer_logit_diff(corrupted_logits, rendered)
    H, N, T = pm.config.n_heads, *batch.input_ids.shape
    stacked = {"input_ids": batch.corrupted_ids.repeat(H, 1), "attention_mask": batch.attention_mask.repeat(H, 1)}
    scores = torch.zeros(pm.config.n_layers, H)
    denominator = ld_clean.mean() - ld_corrupted.mean()
    for layer in range(pm.config.n_layers):
        with pm.intervene() as iv:
            for h in range(H):
                rows = torch.zeros(H * N, T, dtype=torch.bool)
                rows[h * N : (h + 1) * N] = True
                iv.set(f"L{layer}.H{h}", clean[f"L{layer}.H{h}"].repeat(H, 1, 1), pos=rows)
            patched = answer_logit_diff(pm(stacked), rendered * H).view(H, N)
        scores[layer] = (patched.mean(1) - ld_corrupted.mean()) / denominator
    return {"scores": scores, "ld_clean": ld_clean, "ld_corrupted": ld_corrupted, "clean_logits": clean_logits}


def run_model(label: str, source: str, n: int, seed: int) -> dict:
    t0 = time.perf_counter()
    pm = ProbedModel.from_checkpoint(source)
    rendered, batch = ioi_batch(pm, n, seed)
    patch = head_patching(pm, rendered, batch)
    _, cache = pm.run_with_cache(batch, ["L0.resid_pre", "L*.resid_post"])
    pos, correct, _ = read_targets(batch)
    lens = logit_lens(pm, cache, pos, correct)
    seconds = time.perf_counter() - t0
    scores = patch["scores"]
    top = sorted(
        ((float(scores[i, h]), f"L{i}.H{h}") for i in range(scores.shape[0]) for h in range(scores.shape[1])),
        reverse=True,
    )
    return {
        "model": label,
        "source": source,
        "kind": pm.config.kind,
        "shift": pm.config.shift,
        "backend": pm.backend_name,
        "n_examples": n,
        "seq_len": int(batch.input_ids.shape[1]),
        "layers": pm.config.n_layers,
        "heads": pm.config.n_heads,
        "mean_ld_clean": float(patch["ld_clean"].mean()),
        "mean_ld_corrupted": float(patch["ld_corrupted"].mean()),
        "accuracy_clean": float((patch["ld_clean"] > 0).float().mean()),
        "head_scores": scores.tolist(),
        "top_heads": top[:8],
        "lens_points": lens.points,
        "lens_mean_rank": lens.mean_rank().tolist(),
        "lens_median_rank": lens.ranks.float().median(1).values.tolist(),
        "lens_top1": (lens.ranks == 0).float().mean(1).tolist(),
        "seconds": seconds,
        "example": rendered[0].example.prompt,
    }


def heatmap(result: dict) -> go.Figure:
    scores = result["head_scores"]
    fig = go.Figure(
        go.Heatmap(
            z=scores,
            x=[f"H{h}" for h in range(result["heads"])],
            y=[f"L{i}" for i in range(result["layers"])],
            colorscale="RdBu",
            zmid=0,
            colorbar={"title": "restored"},
        )
    )
    fig.update_layout(
        title=f"IOI head patching (clean -> corrupted), {result['model']} ({result['kind']}), "
        f"n={result['n_examples']}; LD clean {result['mean_ld_clean']:.2f}, corrupted {result['mean_ld_corrupted']:.2f}",
        xaxis_title="head",
        yaxis_title="layer",
        yaxis={"autorange": "reversed"},
        height=max(300, 24 * result["layers"] + 150),
        width=700,
    )
    return fig


def lens_figure(results: list[dict]) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[r["model"] for r in results])
    for i, r in enumerate(results, start=1):
        x = ["embed"] + [f"L{j}" for j in range(r["layers"])]
        fig.add_trace(
            go.Scatter(x=x, y=r["lens_mean_rank"], name=f"{r['model']} mean", mode="lines+markers"), row=1, col=i
        )
        fig.add_trace(
            go.Scatter(x=x, y=r["lens_median_rank"], name=f"{r['model']} median", mode="lines", line={"dash": "dot"}),
            row=1,
            col=i,
        )
        fig.update_yaxes(
            type="log", title_text="rank of IO (0 = top-1; log axis shows rank + 1)" if i == 1 else None, row=1, col=i
        )
    for trace in fig.data:  # log axis: plot rank + 1
        trace.y = [v + 1 for v in trace.y]
    fig.update_layout(
        title="Logit lens on IOI: rank of the correct answer token after each layer", height=420, width=1200
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--n", type=int, default=16, help="IOI examples for SmolLM2 (30 layers: the slow one)")
    ap.add_argument("--n-organism", type=int, default=64, help="IOI examples for the organism models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/probe"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for label in args.models:
        n = args.n if label == "smollm2" else args.n_organism
        result = run_model(label, MODELS[label], n, args.seed)
        results.append(result)
        heatmap(result).write_html(args.out / f"{label}-ioi-heads.html", include_plotlyjs="cdn")
        top = ", ".join(f"{name} {score:.2f}" for score, name in result["top_heads"][:5])
        print(
            f"{label}: LD clean {result['mean_ld_clean']:.2f} corrupted {result['mean_ld_corrupted']:.2f} "
            f"acc {result['accuracy_clean']:.2f}; top heads {top}; lens mean rank "
            f"{[round(v, 1) for v in result['lens_mean_rank']]}; {result['seconds']:.0f}s",
            flush=True,
        )
    lens_figure(results).write_html(args.out / "logit-lens.html", include_plotlyjs="cdn")
    (args.out / "probe_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
