"""Generation evals: task accuracy, NFE and speed per sampler; generative perplexity with entropy.

Task accuracy. Each example is laid out as its checkpoint reads it (`ar2mdm.tasks.render`): for an
MDM the answer span is masked in place (prompt, masks, suffix); for an ARM the answer follows
the AR prompt. The span has the reference answer's length L (an oracle length, the same for every
sampler, so samplers are compared on equal terms). Samplers with a step budget get
steps = max(1, round(L * fraction)) for each NFE fraction asked (1, 1/2, 1/4 by default); the
threshold sampler decides its own number of calls. The decoded span goes to the task's exact
checker (IOI: the right name; Countdown: the expression is evaluated; sudoku: the grid is
checked; a JSONL task with ``"check": "gsm"`` rows: the final number, `gsm_match`).

Per (task, sampler, fraction) we report accuracy, NFE (model calls each sequence needed, mean),
generated tokens per second and wall time. `figure` draws accuracy against NFE per sampler.

Generative perplexity. Samples are decoded to text, re-tokenised with a reference ARM's
tokenizer, and scored by it in chunks of at most its context; gen-PPL = exp(total NLL / total
scored tokens). Low-entropy, repetitive text games gen-PPL, so `gen_ppl` always returns the mean
unigram entropy of the samples (in nats, over each sample's reference-tokenizer tokens) with it.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lm_eval.filters.extraction import RegexFilter
from tqdm.auto import tqdm

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import device_of, pad_id, position_ids, right_pad
from ar2mdm.sampling import SAMPLERS, ModelContext, build_sampler, check_prompts, make_canvas, run, takes_steps
from ar2mdm.tasks import Example, Task, render
from conversion.checkpoints import Loaded

FRACTIONS = (1.0, 0.5, 0.25)


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler by name with options; `label` names it in tables and plots."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class EvalRow:
    task: str
    sampler: str
    fraction: float | None
    n: int
    accuracy: float
    nfe: float
    nfe_by: dict[str, float]
    tokens: int
    seconds: float
    tokens_per_s: float


# --- answers --------------------------------------------------------------------------------------

# lm-evaluation-harness's gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0): its two answer
# filters, "strict-match" and "flexible-extract", and the normalisation of its exact-match metric.
GSM_STRICT = RegexFilter(r"#### (\-?[0-9\.\,]+)")
GSM_FLEXIBLE = RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
GSM_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def gsm_answer(text: str) -> str | None:
    """The final numeric answer of a GSM-style solution as lm-evaluation-harness's gsm8k task reads
    it: the number after '####' (its strict-match filter) if there is one, else the last number in
    the text (flexible-extract); then its exact-match normalisation (commas, '$' and a final '.'
    removed, lower case). None if there is no number.

    >>> gsm_answer("so 3 + 4 = 7 #### 7"), gsm_answer("It costs $1,250."), gsm_answer("none")
    ('7', '1250', None)
    """
    for extract in (GSM_STRICT, GSM_FLEXIBLE):
        ((found,),) = extract.apply([[text]], [{}])
        if found != extract.fallback:
            break
    else:
        return None
    for pattern in GSM_IGNORE:
        found = re.sub(pattern, "", found)
    return found.lower() or None


def gsm_match(generated: str, reference: str) -> bool:
    """Exact match of the final numbers of a generation and a reference (`gsm_answer`: the
    harness's gsm8k scoring)."""
    got, want = gsm_answer(generated), gsm_answer(reference)
    return got is not None and got == want


# --- what to evaluate on ----------------------------------------------------------------------------


def task_sets(loaded: Loaded, names: Sequence[str], n: int, *, seed: int = 0) -> dict[str, tuple[Task, list[Example]]]:
    """(task, examples) per task name for this checkpoint.

    A checkpoint descended from the model organism gets the organism's own task options and its
    held-out evaluation examples (prompts its training never saw); any other checkpoint gets the
    built-in tasks restricted to its tokenizer, n examples that render cleanly (`generate_aligned`).
    A name ending in .jsonl is a user task file (`ar2mdm.tasks.load_jsonl_task`; up to n rows).
    """
    from ar2mdm.tasks import get_task

    tok, meta = loaded.tokenizer, loaded.meta
    if not names:
        raise UserError("no tasks given; pass e.g. --tasks ioi,countdown.")
    from conversion.organism import is_organism

    if is_organism(meta.source) and not any(x.endswith(".jsonl") for x in names):
        from conversion.organism import build_tasks, eval_examples

        tasks = build_tasks(tok)
        unknown = [x for x in names if x not in tasks]
        if unknown:
            raise UserError(f"unknown task(s) {unknown}; the organism's tasks are {sorted(tasks)}.")
        examples = eval_examples(n, eval_seed=seed)
        return {x: (tasks[x], examples[x]) for x in names}
    from ar2mdm.tasks import load_jsonl_task

    out = {}
    for x in names:
        if x.endswith(".jsonl"):
            task = load_jsonl_task(x)
            exs = task.generate(min(n, len(task.examples)), seed)
            out[task.name] = (task, exs)
            continue
        task = get_task(x, tok)
        out[x] = (task, task.generate_aligned(n, tok, seed, mask_id=meta.mask_id))
    return out


def ar_scorer(loaded: Loaded, source: str | None = None) -> torch.nn.Module:
    """The AR model ARPC scores with: `source` if given, else the ARM the MDM was converted from
    (its metadata's `source`)."""
    from conversion.checkpoints import load_any

    where = source or loaded.meta.source
    if not where:
        raise UserError("ARPC needs an AR scorer and this MDM records no source model; pass --ar-scorer PATH.")
    role = "ARPC's AR scorer (--ar-scorer)" if source else "ARPC's AR scorer (the MDM's source)"
    try:
        scorer = load_any(where, expect="ar", role=role).model
    except UserError as err:
        if source:
            raise UserError(f"{role} {where!r} could not be loaded: {err}") from None
        raise UserError(
            f"ARPC's AR scorer {where!r} (the MDM's source) could not be loaded: {err} Pass --ar-scorer PATH."
        ) from None
    device = device_of(loaded.model)
    return scorer.to(device)


# --- task accuracy --------------------------------------------------------------------------------


def _steps_for(spec: SamplerSpec, length: int, fraction: float | None) -> dict[str, Any]:
    if takes_steps(spec.name) and fraction is not None and "steps" not in spec.options:
        return {"steps": max(1, round(length * fraction))}
    return {}


def _with_scorer(spec: SamplerSpec, scorer: torch.nn.Module | None) -> dict[str, Any]:
    """The spec's options, plus the AR scorer for samplers that need one (`Sampler.needs_scorer`)."""
    return dict(spec.options) | ({"scorer": scorer} if SAMPLERS.get(spec.name).needs_scorer else {})


def needs_scorer(specs: Sequence[SamplerSpec]) -> bool:
    """Whether any of `specs` needs an AR scorer (load one with `ar_scorer`)."""
    return any(SAMPLERS.get(s.name).needs_scorer for s in specs)


def answer_checker(task: Task):
    """The task's own checker, except for examples whose meta says {"check": "gsm"}: those are
    scored by the final number (`gsm_match`)."""

    def check(example: Example, generated: str) -> bool:
        if example.meta.get("check") == "gsm":
            return gsm_match(generated, example.answer)
        return bool(task.check(example, generated))

    return check


def task_accuracy(
    loaded: Loaded,
    task: Task,
    examples: Sequence[Example],
    spec: SamplerSpec,
    *,
    fraction: float | None = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    scorer: torch.nn.Module | None = None,
    check: Any = None,
) -> EvalRow:
    """Accuracy of `loaded` on `examples` with sampler `spec` (see the module docstring)."""
    if not examples:
        raise UserError(f"no examples to evaluate for task {task.name!r}.")
    model, tok, meta = loaded.model, loaded.tokenizer, loaded.meta
    ctx = ModelContext.from_meta(meta, tok, model)
    mode = "mdm" if meta.kind == "mdm" else "ar"
    rendered = [render(ex, tok, mode, shift=meta.shift, mask_id=meta.mask_id) for ex in examples]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(rendered):
        groups[len(r.answer_ids)].append(i)
    device = device_of(model)
    solved, tokens, seconds = 0, 0, 0.0
    nfe_rows: list[float] = []
    nfe_by: dict[str, float] = defaultdict(float)
    check = check or answer_checker(task)
    for length, idx in sorted(groups.items()):
        sampler = build_sampler(spec.name, **_with_scorer(spec, scorer), **_steps_for(spec, length, fraction))
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            prompts, suffixes = [], []
            for i in chunk:
                r = rendered[i]
                head = int(r.answer_positions[0])
                prompts.append(r.input_ids[:head].tolist())
                suffixes.append(r.input_ids[head + length :].tolist() if mode == "mdm" else [])
            canvas, am = make_canvas(
                prompts,
                length,
                mask_id=ctx.placeholder,
                pad_id=ctx.pad_id,
                suffixes=suffixes,
                context_length=ctx.context_length,
            )
            result = run(sampler, model, canvas.to(device), am.to(device), ctx, seed=seed, row_ids=chunk)
            seconds += result.seconds
            tokens += length * len(chunk)
            nfe_rows += result.row_nfe.float().tolist()
            for role, calls in result.nfe_by.items():
                nfe_by[role] += calls * len(chunk)
            for row, i in enumerate(chunk):
                answer = tok.decode(result.generated(row))
                solved += bool(check(rendered[i].example, answer))
    n = len(examples)
    return EvalRow(
        task=task.name,
        sampler=spec.title,
        fraction=fraction if takes_steps(spec.name) else None,
        n=n,
        accuracy=solved / n,
        nfe=sum(nfe_rows) / n,
        nfe_by={k: v / n for k, v in nfe_by.items()},
        tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / max(seconds, 1e-9),
    )


def evaluate_samplers(
    loaded: Loaded,
    task_sets: Mapping[str, tuple[Task, Sequence[Example]]],
    specs: Sequence[SamplerSpec],
    *,
    fractions: Sequence[float] = FRACTIONS,
    batch_size: int = 16,
    seed: int = 0,
    scorer: torch.nn.Module | None = None,
    progress: bool = True,
) -> list[EvalRow]:
    """`task_accuracy` for every task x sampler x NFE fraction (fractions only for samplers with a
    step budget); one progress bar over all runs."""
    jobs = []
    for name, (task, exs) in task_sets.items():
        for spec in specs:
            for frac in fractions if takes_steps(spec.name) else (None,):
                jobs.append((name, task, exs, spec, frac))
    rows = []
    bar = tqdm(jobs, desc="eval", disable=not progress)
    for name, task, exs, spec, frac in bar:
        bar.set_postfix_str(f"{name} {spec.title} {frac or ''}")
        rows.append(
            task_accuracy(loaded, task, exs, spec, fraction=frac, batch_size=batch_size, seed=seed, scorer=scorer)
        )
    return rows


# --- open generation and gen-PPL --------------------------------------------------------------------


@dataclass
class Samples:
    texts: list[str]
    token_ids: list[list[int]]
    nfe: float
    seconds: float
    tokens_per_s: float


def generate_texts(
    loaded: Loaded,
    prompts: Sequence[str],
    spec: SamplerSpec,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    seed: int = 0,
    scorer: torch.nn.Module | None = None,
) -> Samples:
    """Continue each prompt by `max_new_tokens` tokens with `spec`; texts are the continuations.
    Raises UserError for an empty prompt (`check_prompts`, by number) and for a prompt that does
    not leave room for `max_new_tokens` in the model's context (`make_canvas`, before any run)."""
    check_prompts(prompts, "prompt")
    model, tok, meta = loaded.model, loaded.tokenizer, loaded.meta
    ctx = ModelContext.from_meta(meta, tok, model)
    sampler = build_sampler(spec.name, **_with_scorer(spec, scorer))
    device = device_of(model)
    texts, ids_out, nfe, seconds = [], [], 0.0, 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in chunk]
        canvas, am = make_canvas(
            encoded, max_new_tokens, mask_id=ctx.placeholder, pad_id=ctx.pad_id, context_length=ctx.context_length
        )
        rows = list(range(start, start + len(chunk)))
        result = run(sampler, model, canvas.to(device), am.to(device), ctx, seed=seed, row_ids=rows)
        seconds += result.seconds
        nfe += float(result.row_nfe.float().sum())
        for row in range(len(chunk)):
            gen = result.generated(row)
            if ctx.eos_id is not None and ctx.eos_id in gen:
                gen = gen[: gen.index(ctx.eos_id)]
            ids_out.append(gen)
            texts.append(tok.decode(gen, skip_special_tokens=True))
    total = max_new_tokens * len(prompts)
    return Samples(texts, ids_out, nfe / max(len(prompts), 1), seconds, total / max(seconds, 1e-9))


def unigram_entropy(token_lists: Sequence[Sequence[int]]) -> float:
    """Mean over samples of the entropy (nats) of each sample's token unigram distribution.

    >>> round(unigram_entropy([[1, 1, 2, 2]]), 6) == round(math.log(2), 6)
    True
    """
    values = []
    for toks in token_lists:
        if not toks:
            continue
        counts = Counter(toks)
        n = len(toks)
        values.append(-sum(c / n * math.log(c / n) for c in counts.values()))
    return sum(values) / len(values) if values else 0.0


@torch.no_grad()
def gen_ppl(
    texts: Sequence[str],
    reference: Loaded,
    *,
    context: Sequence[str] | None = None,
    chunk: int | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Perplexity of `texts` under the reference ARM (re-tokenised, scored in chunks of at most
    `chunk` tokens, default the model's context), with the samples' unigram entropy.

    context: optional prompts; each text is scored given its prompt (the prompt's tokens are
    conditioned on, not scored). Returns gen_ppl, nll (mean per token), tokens, entropy.
    """
    model, tok = reference.model, reference.tokenizer
    if reference.meta.kind != "ar":
        raise UserError("gen-PPL needs an autoregressive reference model (kind 'ar').")
    limit = chunk or int(
        getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 1024)
    )
    device = device_of(model)
    total_nll, total_tokens = 0.0, 0
    sample_tokens: list[list[int]] = []
    rows: list[tuple[list[int], int]] = []  # (ids, index of the first scored token)
    for i, text in enumerate(texts):
        prefix = list(tok(context[i], add_special_tokens=True)["input_ids"]) if context else []
        if not prefix and tok.bos_token_id is not None:
            prefix = [tok.bos_token_id]
        body = list(tok(text, add_special_tokens=False)["input_ids"])
        sample_tokens.append(body)
        if not body:
            continue
        ids = prefix + body
        # chunks of `limit` tokens; each chunk after the first restarts from its own first token
        first = len(prefix)
        for s in range(0, len(ids), limit):
            piece = ids[s : s + limit]
            begin = max(1, first - s)
            if begin < len(piece):
                rows.append((piece, begin))
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        ids, am = right_pad([p for p, _ in part], pad_id(tok))
        am = am.to(device)
        logits = model(input_ids=ids.to(device), attention_mask=am, position_ids=position_ids(am)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(device)
        nll = -logp.gather(-1, target[..., None]).squeeze(-1)  # [B, W-1], token j+1 given <= j
        for b, (p, begin) in enumerate(part):
            scored = nll[b, begin - 1 : len(p) - 1]
            total_nll += float(scored.sum())
            total_tokens += scored.numel()
    mean = total_nll / max(total_tokens, 1)
    return {
        "gen_ppl": math.exp(mean) if total_tokens else float("nan"),
        "nll": mean,
        "tokens": total_tokens,
        "entropy": unigram_entropy(sample_tokens),
    }


# --- reports --------------------------------------------------------------------------------------


def figure(rows: Sequence[EvalRow]):  # -> plotly Figure
    """Accuracy against NFE, one panel per task, one line per sampler."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = sorted({r.task for r in rows})
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True)
    samplers = sorted({r.sampler for r in rows})
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
    ]
    for c, task in enumerate(tasks, start=1):
        for k, name in enumerate(samplers):
            pts = sorted((r.nfe, r.accuracy, r.tokens_per_s) for r in rows if r.task == task and r.sampler == name)
            if not pts:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] for p in pts],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    line={"color": palette[k % len(palette)]},
                    hovertemplate="NFE %{x:.2f}<br>accuracy %{y:.3f}<br>%{customdata:.0f} tok/s",
                    customdata=[p[2] for p in pts],
                ),
                row=1,
                col=c,
            )
        fig.update_xaxes(title_text="NFE per sequence", type="log", row=1, col=c)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], row=1, col=1)
    fig.update_layout(title="Task accuracy against model calls, per sampler", height=420, width=420 * len(tasks) + 160)
    return fig


def table(rows: Sequence[EvalRow]) -> str:
    """A Markdown table of the rows."""
    lines = ["| task | sampler | steps | accuracy | NFE | tokens/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        steps = "adaptive" if r.fraction is None else f"L x {r.fraction:g}"
        lines.append(f"| {r.task} | {r.sampler} | {steps} | {r.accuracy:.3f} | {r.nfe:.2f} | {r.tokens_per_s:.0f} |")
    return "\n".join(lines)


def write_report(
    rows: Sequence[EvalRow], out: str | Path, *, extra: Mapping[str, Any] | None = None, plotlyjs: bool | str = True
) -> Path:
    """results.json (rows + extra), results.md (table) and generation.html (figure) in `out`.

    plotlyjs: True embeds plotly.js (the page works offline, ~4 MB); "cdn" links it (small files
    for a repository)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": [asdict(r) for r in rows], **(extra or {})}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(table(rows) + "\n")
    if rows:
        figure(rows).write_html(out / "generation.html", include_plotlyjs=plotlyjs)
    return out
