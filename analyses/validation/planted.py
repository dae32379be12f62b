"""A planted shift and a planted non-shift: model pairs whose answer to claim (b) is known.

Claim (b) of `analyses.compare` says the MDM puts more of its top-K node mass in the first third
of the layers than the ARM on global tasks (`analyses.compare.claims`). Real pairs cannot tell us
whether the pipeline (EAP-IG node scores -> top-K layer distribution -> paired bootstrap ->
pooled claim -> verdict) would see such a shift if it were there, or stay silent if it were not.
These hand-set pairs can: the layer of every circuit is planted, so the verdict is certain.

Every model is a 3-layer version of `analyses.validation.groundtruth`'s GPT-2 (4 heads a layer,
d_model 128, residual blocks lifted by an orthonormal zero-mean basis, LayerNorm made the
identity with eps 1e8 / gain 1e4, its word-level tokenizer). With 3 layers the thirds of
`analyses.depth.distribution.region` are L0 | L1 | L2: only layer 0 is early. Two tasks, under
registered task names used as labels only (`TASKS[name].kind` decides local or global):

- "ioi" (local): "w1 w2 w3 w4 w5" -> " w1". Read at position 5 (BOS is position 0).
  Corruption: w1 becomes another word (the counterfactual answer).
- "countdown" (global): "w1 ... w7" -> " w2", with a two-word suffix after the answer that only
  the MDM reading sees ("w1 ... w7 [mask] s1 s2"). Read at position 7 in both readings (shift
  on: logits[i - 1] predict token i). Corruption: w2 becomes another word.

Each task has one *copy head*: a positional head whose query at the task's read position selects
the source position (1 or 2; every other position falls back to BOS), whose value reads the
word's token code (special tokens read as 0, so the fallback copies nothing) and whose output
writes GAIN on that word's answer coordinate, which the unembedding reads. Every other head and
MLP is a distractor writing only junk no circuit component reads. The local copy head is L2.H1
in every model; the global one sits in layer `global_layer`, head 3:

    pair       ARM (causal)          MDM (bidirectional, ModelMeta kind "mdm", mask at the answer)
    shift      local L2, global L2   local L2, global L0
    no-shift   local L2, global L2   local L2, global L2   (the ARM's weights, made bidirectional)

Why the verdict is certain. On every clean input the logit of the answer is GAIN and every other
logit 0 (corrupted: GAIN on the counterfactual), so the logit difference goes from GAIN to -GAIN
and both models answer every example: the common-correct pool is the whole set. The copy head's
attention reads positions only, and the metric is linear in its value, so EAP-IG is exact on it:
its node score (the sum of its outgoing edges) is 2 GAIN in size, and every other node scores 0
up to float rounding (distractors write junk only; no circuit component reads ANS). So the top-K
nodes are the copy head plus rounding noise, the early mass of a task is 1 if its copy head is in
layer 0 and 0 otherwise, and the paired bootstrap resamples only that:

- shift: global early mass MDM - ARM = 1 - 0 = 1 in every replicate: interval [1, 1], claim (b)
  "holds"; local task 0 - 0 = 0.
- no-shift: 0 - 0 = 0 on both tasks, interval [0, 0] inside the equivalence margin: claim (b)
  reads "no difference".

(up to the rounding-noise nodes' share of the top-K mass, below 1e-7). The null pairs (each model attributed
twice) read "no difference" in both. `python -m analyses.validation.planted` prints the table.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GPT2LMHeadModel

from analyses.compare import CompareOptions, CompareResult, compare
from analyses.validation.groundtruth import (
    GAIN,
    MASK_ID,
    SPECIALS,
    WORDS,
    Weights,
    build_model,
    emit,
    position_query,
    select,
    word_tokenizer,
)
from ar2mdm.common.errors import UserError
from ar2mdm.common.metadata import ModelMeta
from ar2mdm.diffusion.attention import make_bidirectional
from ar2mdm.tasks import TASKS, Example
from probe.model import ProbedModel

N_LAYERS = 3  # thirds of depth L0 | L1 | L2: layer 0 is early, layer 2 late
LOCAL, GLOBAL = "ioi", "countdown"  # registered task names, used as labels (kinds local / global)
# task -> (prompt words, source position of the answer, read position); BOS is position 0
LAYOUT: dict[str, tuple[int, int, int]] = {LOCAL: (5, 1, 5), GLOBAL: (7, 2, 7)}
SUFFIX_WORDS = 2  # the global task's suffix (MDM reading only)
LOCAL_HEAD = (2, 1)
GLOBAL_HEAD = 3  # head index of the global copy head; its layer is what the pairs plant
LATE, EARLY = 2, 0
PAIRS: dict[str, int] = {"shift": EARLY, "no-shift": LATE}  # pair -> the MDM's global copy layer
EXPECTED: dict[str, dict[str, float]] = {  # pair -> task -> early mass MDM - ARM (module docstring)
    "shift": {LOCAL: 0.0, GLOBAL: 1.0},
    "no-shift": {LOCAL: 0.0, GLOBAL: 0.0},
}
N_EXAMPLES, SEED = 12, 0
OPTIONS = CompareOptions(
    tasks=(LOCAL, GLOBAL),
    pool_size=N_EXAMPLES,
    steps=5,
    k_nodes=3,  # the default for 15 nodes: the copy head and two rounding-noise nodes
    n_boot=200,
    faithfulness=False,
    ablations=False,
    neurons=False,
    causal=False,
    denoising=(),
)


# --- the models -------------------------------------------------------------------------------------


def _copy_head(w: Weights, layer: int, head: int, task: str) -> None:
    """The task's copy head (module docstring): attends from its read position to its source
    position and writes GAIN on the answer coordinate of the word found there."""
    _, source, read = LAYOUT[task]
    value = select("TOK")
    value[: len(SPECIALS)] = 0.0  # specials (the BOS fallback) copy nothing
    w.head(layer, head, position_query(lambda i: source if i == read else -1), select("POS"), value, emit("ANS", GAIN))


def planted_model(global_layer: int, *, mdm: bool = False, seed: int = SEED) -> ProbedModel:
    """A 3-layer hand-set GPT-2: local copy head L2.H1, global copy head L{global_layer}.H3,
    distractors everywhere else (drawn from `seed`). mdm: bidirectional, with ModelMeta kind
    "mdm" (shift on, mask id `MASK_ID`), so the toolkit renders and reads it as an MDM."""
    if not 0 <= global_layer < N_LAYERS:
        raise UserError(f"global_layer must be in [0, {N_LAYERS}), got {global_layer}.")

    def circuit(w: Weights) -> set[tuple[int, int]]:
        _copy_head(w, *LOCAL_HEAD, LOCAL)
        _copy_head(w, global_layer, GLOBAL_HEAD, GLOBAL)
        return {LOCAL_HEAD, (global_layer, GLOBAL_HEAD)}

    model: GPT2LMHeadModel = build_model(seed, circuit, n_layers=N_LAYERS)
    tok = word_tokenizer()
    if not mdm:
        return ProbedModel(model, tok, backend="torch")
    meta = ModelMeta(kind="mdm", family="gpt2", shift=True, mask_id=MASK_ID)
    return ProbedModel(make_bidirectional(model), tok, meta, backend="torch")


# --- the examples -----------------------------------------------------------------------------------


def planted_examples(task: str, n: int = N_EXAMPLES, seed: int = SEED) -> list[Example]:
    """n examples of a planted task (module docstring): distinct words, the answer the word at the
    task's source position; the corruption replaces that word (the counterfactual answer)."""
    if task not in LAYOUT:
        raise UserError(f"no planted task {task!r}; choose {LOCAL!r} or {GLOBAL!r}.")
    n_words, source, _ = LAYOUT[task]
    n_suffix = SUFFIX_WORDS if task == GLOBAL else 0
    rng = random.Random(f"{seed}:{task}")
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, n_words + n_suffix + 1)
        prompt, suffix, other = words[:n_words], words[n_words:-1], words[-1]
        corrupted = [other if i == source - 1 else t for i, t in enumerate(prompt)]
        out.append(
            Example(
                task=task,
                prompt=" ".join(prompt),
                answer=" " + prompt[source - 1],
                corrupted_prompt=" ".join(corrupted),
                suffix="".join(" " + t for t in suffix),
                correct=(" " + prompt[source - 1],),
                counterfactual=(" " + other,),
                meta={"planted": True},
            )
        )
    return out


def hand_answer(task: str, ids: Int[Tensor, " pos"]) -> int:
    """The answer token id computed by hand from a rendering's ids (either reading): the token at
    the task's source position."""
    return int(ids[LAYOUT[task][1]])


def planted_pairs(
    n: int = N_EXAMPLES, seed: int = SEED
) -> dict[str, tuple[ProbedModel, ProbedModel, dict[str, list[Example]]]]:
    """{"shift": (ARM, MDM, examples), "no-shift": (ARM, MDM, examples)}: one ARM (both copy heads
    in layer 2), an MDM whose global copy head is in layer 0 ("shift") or layer 2 ("no-shift"),
    and n examples per task name (`LOCAL`, `GLOBAL`), ready for `compare(..., examples=)`."""
    examples = {task: planted_examples(task, n, seed) for task in (LOCAL, GLOBAL)}
    out = {}
    for name, layer in PAIRS.items():
        out[name] = (planted_model(LATE, seed=seed), planted_model(layer, mdm=True, seed=seed), examples)
    return out


def read_logits(pm: ProbedModel, ids: Int[Tensor, " pos"], read: int) -> Float[Tensor, " vocab"]:
    """The logits a model gives at position `read` of one unpadded input."""
    with torch.no_grad():
        return pm.model(ids[None]).logits[0, read].double()


# --- measuring --------------------------------------------------------------------------------------


def measure(n: int = N_EXAMPLES, seed: int = SEED, options: CompareOptions = OPTIONS) -> dict[str, CompareResult]:
    """`compare` on both planted pairs (silent), pair name -> result."""
    results = {}
    for name, (ar, mdm, examples) in planted_pairs(n, seed).items():
        labels = {"ar": "planted ARM", "mdm": f"planted MDM ({name})"}
        results[name] = compare(ar, mdm, options, labels=labels, examples=examples, log=lambda _: None)
    return results


def _number(x: float) -> str:
    return f"{x:+.6f}" if x == 0 or abs(x) >= 1e-3 else f"{x:+.1e}"  # rounding noise shown as such


def _interval(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("estimate") is None:
        return "-"
    if d.get("low") is None:
        return _number(d["estimate"])
    return f"{_number(d['estimate'])} [{_number(d['low'])}, {_number(d['high'])}]"


def summary(results: Mapping[str, CompareResult]) -> str:
    """Two Markdown tables: early mass per pair and task, and claim (b) with its null controls."""
    lines = [
        "| pair | task (kind) | pool | early mass ARM | early mass MDM | MDM - ARM [95% CI] | expected |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for task, entry in res.data["tasks"].items():
            cmp = entry["depth"]["compare"]
            lines.append(
                f"| {name} | {task} ({TASKS[task].kind}) | {entry['n']} | {_number(cmp['a']['early_mass'])} "
                f"| {_number(cmp['b']['early_mass'])} | {_interval(cmp['early_mass_diff'])} | {EXPECTED[name][task]:+.1f} |"
            )
    lines += ["", "| pair | claim (b) effect [95% CI] | verdict | null ARM | null MDM |", "|---|---|---|---|---|"]
    for name, res in results.items():
        b = res.claims["b"]
        null = {p: f"{v['verdict']} ({_interval(v['interval'])})" for p, v in b["null"].items()}
        lines.append(
            f"| {name} | {_interval(b['interval'])} | {b['verdict']} "
            f"| {null.get('null_ar', '-')} | {null.get('null_mdm', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the planted pairs' early masses and claim (b) verdicts (`summary`)."""
    parser = argparse.ArgumentParser(prog="python -m analyses.validation.planted", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=N_EXAMPLES, help="examples per task")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the models are tiny: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = replace(OPTIONS, pool_size=args.examples)
    print(summary(measure(args.examples, args.seed, options)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
