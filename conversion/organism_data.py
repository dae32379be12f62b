"""What the model organism learns from: its tasks, tokenizer, training stream and held-out sets.

- `TASK_NAMES`, `TASK_OPTIONS`: every built-in task suite (`ar2mdm.tasks.task_names(builtin=True)`; a
  plugin's task does not change the embedded default) with the options the organism uses for
  it; `build_tasks` builds them.
- `build_tokenizer` / `organism_tokenizer`: the word-level byte BPE (see `conversion.organism`).
- `MixtureStream`: the infinite, seeded stream of training batches over the task mixture.
- `held_out_sets` / `eval_examples`: held-out evaluation examples from seeds training never uses
  (for tasks in `HOLDOUT_PROMPTS` their prompts are kept out of training); `task_examples` /
  `task_corpus`: fresh examples for post-training the organism into an MDM (`--data tasks`).

Every random stream is `ar2mdm.common.seeding.derive_seed` of a label ("tokenizer", "layout", "train",
"eval", "convert"), the task and the seed, so streams never overlap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from ar2mdm.common.errors import UserError
from ar2mdm.common.modeling import pad_id
from ar2mdm.common.seeding import derive_seed
from ar2mdm.diffusion.attention import causal_allowed, same_document, to_additive
from ar2mdm.tasks import Example, Task, get_task, task_names

PAD, BOS, EOS, UNK, MASK = "<pad>", "<bos>", "<eos>", "<unk>", "<mask>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, MASK)

# Words keep their leading space; digits and punctuation are single pre-tokens; a run of spaces
# leaves its last space to the word after it (the GPT-2 convention).
PRETOKEN_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s+(?!\S)|\s+"

# The organism learns every built-in task suite (local first), whatever plugins are loaded.
TASK_NAMES: tuple[str, ...] = task_names(builtin=True)

# Options the organism's tasks are built with (train and eval). Countdown uses numbers 1..10 and
# targets up to 100: three numbers and + - * as in the reference study, at a size a 10-minute
# model can learn; the other tasks use their defaults. Pass the same options to `get_task` when
# evaluating the organism elsewhere.
TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "ioi": {},
    "greater_than": {},
    "induction": {},
    "countdown": {"n_numbers": 3, "max_number": 10, "max_target": 100},
    "infilling": {},
    "sudoku": {},
}

# What training (the organism's stream and its MDM post-training data) adds to TASK_OPTIONS:
# Greater-Than also draws start years x09 (answers 1..9), the year its corruption uses, so the
# corrupted input is one the model knows instead of an unseen year (see ar2mdm.tasks.greater_than).
# Evaluation and the comparison's pools use TASK_OPTIONS alone.
TRAINING_OPTIONS: dict[str, dict[str, Any]] = {"greater_than": {"min_tens": 0}}

# Tasks whose prompt space is large enough to hold evaluation prompts out of training.
HOLDOUT_PROMPTS: frozenset[str] = frozenset({"ioi", "induction", "countdown", "sudoku"})
# Held-out examples per task the organism is evaluated on (`OrganismConfig.eval_examples`'s default):
# post-training data leaves their prompts out.
EVAL_EXAMPLES = 200


def example_texts(example: Example) -> list[str]:
    """Every string of `example` a model or a metric may tokenise (clean, corrupted, candidates)."""
    ex = example
    texts = [ex.text, ex.ar_text, ex.corrupted_prompt + ex.answer + (ex.corrupted_suffix or ex.suffix)]
    if ex.corrupted_ar_prompt is not None:
        texts.append(ex.corrupted_ar_prompt + ex.answer)
    texts += [ex.prompt + c for c in (*ex.correct, *ex.counterfactual)]
    return texts


def build_tokenizer(texts: Sequence[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in which every word, digit and mark of `texts` is one token.

    Deterministic: the same texts (in any order) give the same vocabulary. See the module
    docstring for the scheme.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,  # a ceiling never reached: training stops when every pre-token is whole
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        mask_token=MASK,
        clean_up_tokenization_spaces=False,
        model_max_length=10_000,
    )


def build_tasks(tokenizer: PreTrainedTokenizerFast | None = None, *, training: bool = False) -> dict[str, Task]:
    """The organism's six tasks with `TASK_OPTIONS` (full word lists when tokenizer is None);
    `training` adds `TRAINING_OPTIONS` (the task distributions training draws from)."""
    return {
        name: get_task(
            name, tokenizer, **TASK_OPTIONS.get(name, {}), **(TRAINING_OPTIONS if training else {}).get(name, {})
        )
        for name in TASK_NAMES
    }


def organism_tokenizer(n_per_task: int = 500, seed: int = 0) -> PreTrainedTokenizerFast:
    """The tokenizer trained on `n_per_task` examples of every task (full word lists)."""
    texts: list[str] = []
    for name, task in build_tasks(None).items():
        for ex in task.generate(n_per_task, derive_seed("tokenizer", name, seed)):
            texts += example_texts(ex)
    return build_tokenizer(texts)


# --- data -----------------------------------------------------------------------------------------


@runtime_checkable
class MixtureSettings(Protocol):
    """The parts of `OrganismConfig` the stream reads."""

    mixture: dict[str, int]
    infill_in_place: float
    answer_weight: float
    max_positions: int
    pack_length: int


def prompt_key(example: Example) -> str:
    """The prompt a model reads an example by (its AR prompt where it has one)."""
    return example.ar_prompt if example.ar_prompt is not None else example.prompt


@dataclass
class Batch:
    """A training batch. input_ids/weights: [B, T]; weights is 0 on padding.

    Unpacked (attention_mask None): one sequence per row, right-padded; causal attention needs no
    mask since no real token attends to a later pad. Packed: several sequences per row, each with
    positions from 0 (`position_ids` [B, T]) and attending only to itself (`attention_mask`
    [B, 1, T, T], 0 / -inf: causal within its sequence, pads blocked).
    """

    input_ids: Int[Tensor, "batch pos"]
    weights: Float[Tensor, "batch pos"]
    n_tokens: int
    attention_mask: Float[Tensor, "batch 1 pos pos"] | None = None
    position_ids: Int[Tensor, "batch pos"] | None = None

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for the model's forward."""
        if self.attention_mask is None:
            return {"input_ids": self.input_ids}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


class MixtureStream:
    """An infinite, seeded stream of training batches over the task mixture.

    Batch i is a pure function of (seed, i): each task draws `cfg.mixture[task]` examples from its
    own seed stream, skipping prompts in `exclude` (the held-out prompts).
    """

    def __init__(
        self,
        tasks: Mapping[str, Task],
        tokenizer: PreTrainedTokenizerFast,
        cfg: MixtureSettings,
        seed: int,
        exclude: Mapping[str, set[str]] | None = None,
    ) -> None:
        self.tasks = tasks
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.seed = seed
        self.exclude = exclude or {}
        self.rng = random.Random(derive_seed("layout", seed))
        self._pools: dict[str, Iterator[Example]] = {
            name: self._examples(name) for name in cfg.mixture if cfg.mixture[name] > 0
        }

    def _examples(self, name: str) -> Iterator[Example]:
        chunk = 0
        held_out = self.exclude.get(name, set())
        while True:
            for ex in self.tasks[name].generate(256, derive_seed("train", name, self.seed, chunk)):
                if prompt_key(ex) not in held_out:
                    yield ex
            chunk += 1

    def _sequence(self, ex: Example) -> tuple[str, str, str, bool]:
        """(head, answer, tail, close): the text is head + answer + tail, then <eos> if `close`
        (not after the answer of a task whose text does not end there: `Task.text_ends_at_answer`);
        the answer is weighted."""
        if ex.suffix and self.rng.random() < self.cfg.infill_in_place:
            return ex.prompt, ex.answer, ex.suffix, True
        return prompt_key(ex), ex.answer, "", getattr(self.tasks[ex.task], "text_ends_at_answer", True)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            parts = [
                self._sequence(next(self._pools[name])) for name in self._pools for _ in range(self.cfg.mixture[name])
            ]
            yield self.encode(parts)

    def encode(self, parts: Sequence[tuple[str, str, str, bool]]) -> Batch:
        """Tokenise (head, answer, tail, close) into `<bos> text [<eos>]` rows with loss weights."""
        tok = self.tokenizer
        heads = tok([p[0] for p in parts])["input_ids"]
        heads_ans = tok([p[0] + p[1] for p in parts])["input_ids"]
        full = tok([p[0] + p[1] + p[2] for p in parts])["input_ids"]
        rows = [ids + [tok.eos_token_id] if p[3] else ids for ids, p in zip(full, parts, strict=True)]
        T = max(map(len, rows))
        if T > self.cfg.max_positions:
            raise UserError(
                f"a training sequence is {T} tokens, more than max_positions={self.cfg.max_positions}; "
                "raise OrganismConfig.max_positions or shorten the task options."
            )
        weights: list[list[float]] = []
        for row, h, ha in zip(rows, heads, heads_ans, strict=True):
            w = [0.0] + [1.0] * (len(row) - 1)  # targets are positions 1.. (the token predicted there)
            w[len(h) : len(ha)] = [self.cfg.answer_weight] * (len(ha) - len(h))
            if len(ha) == len(row) - 1 and row[-1] == tok.eos_token_id:  # no tail: <eos> is part of the answer
                w[-1] = self.cfg.answer_weight
            weights.append(w)
        n_tokens = int(sum(len(r) for r in rows))
        if self.cfg.pack_length and self.cfg.pack_length >= T:
            return _packed(rows, weights, self.cfg.pack_length, pad_id(tok), n_tokens)
        ids = torch.full((len(rows), T), pad_id(tok), dtype=torch.long)
        wt = torch.zeros((len(rows), T))
        for b, (row, w) in enumerate(zip(rows, weights, strict=True)):
            ids[b, : len(row)] = torch.tensor(row)
            wt[b, : len(w)] = torch.tensor(w)
        return Batch(ids, wt, n_tokens)


def _packed(rows: Sequence[list[int]], weights: Sequence[list[float]], length: int, pad: int, n_tokens: int) -> Batch:
    """Pack sequences into rows of `length` tokens (first fit, longest first; deterministic), each
    sequence with its own positions and a causal mask confined to it. A sequence's first weight
    is 0 (its <bos> is never a target), so the loss terms are those of the unpacked batch."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if free >= len(rows[i]):
                bins[b].append(i)
                room[b] -= len(rows[i])
                break
        else:
            bins.append([i])
            room.append(length - len(rows[i]))
    ids = torch.full((len(bins), length), pad, dtype=torch.long)
    wt = torch.zeros((len(bins), length))
    pos = torch.zeros((len(bins), length), dtype=torch.long)
    doc = torch.full((len(bins), length), -1, dtype=torch.long)
    for b, members in enumerate(bins):
        at = 0
        for d, i in enumerate(members):
            n = len(rows[i])
            ids[b, at : at + n] = torch.tensor(rows[i])
            wt[b, at : at + n] = torch.tensor(weights[i])
            pos[b, at : at + n] = torch.arange(n)
            doc[b, at : at + n] = d
            at += n
    valid = doc >= 0
    allowed = causal_allowed(len(bins), length) & same_document(doc)
    return Batch(ids, wt, n_tokens, to_additive(allowed, valid), pos)


def eval_examples(n: int = 200, eval_seed: int = 0) -> dict[str, list[Example]]:
    """The organism's held-out evaluation examples, n per task (prompts training never saw)."""
    return held_out_sets(build_tasks(), n, eval_seed)


def held_out_sets(tasks: Mapping[str, Task], n: int, seed: int) -> dict[str, list[Example]]:
    """n held-out examples per task, from seeds training never uses, distinct prompts."""
    sets: dict[str, list[Example]] = {}
    for name, task in tasks.items():
        seen: set[str] = set()
        kept: list[Example] = []
        for ex in task.generate(n + n // 4 + 8, derive_seed("eval", name, seed)):
            key = prompt_key(ex)
            if name in HOLDOUT_PROMPTS and key in seen:
                continue
            seen.add(key)
            kept.append(ex)
            if len(kept) == n:
                break
        sets[name] = kept
    return sets


def task_examples(n_per_task: int = 3000, seed: int = 0, *, eval_seed: int = 0) -> list[Example]:
    """Fresh examples of the six tasks (with `TASK_OPTIONS`) for post-training the organism.

    Drawn from seed streams that neither the organism's training nor its evaluation uses;
    prompts of the held-out evaluation sets of the organism trained with `eval_seed` are left out,
    so an MDM evaluated on those sets never saw them. In task order, seeded.
    """
    tasks = build_tasks(training=True)
    held_out = {
        name: {prompt_key(ex) for ex in exs}
        for name, exs in held_out_sets(build_tasks(), EVAL_EXAMPLES, eval_seed).items()
        if name in HOLDOUT_PROMPTS
    }
    out: list[Example] = []
    for name, task in tasks.items():
        for ex in task.generate(n_per_task, derive_seed("convert", name, seed)):
            if prompt_key(ex) in held_out.get(name, ()):
                continue
            out.append(ex)
    return out


def task_corpus(n_per_task: int = 3000, seed: int = 0, *, eval_seed: int = 0) -> list[str]:
    """Documents of task text for the organism's diffusion post-training (`--data tasks`).

    The examples of `task_examples`, each as its in-place text (the answer between prompt and
    suffix, the natural layout for a diffusion model); infilling examples also give their AR form.
    """
    docs: list[str] = []
    for ex in task_examples(n_per_task, seed, eval_seed=eval_seed):
        docs.append(ex.text)
        if ex.suffix:
            docs.append(ex.ar_text)
    random.Random(derive_seed("convert-order", seed)).shuffle(docs)
    return docs


def is_organism(source: str | Path | None) -> bool:
    """Whether a checkpoint's source (`ModelMeta.source`) is a model organism: the cached one
    ("organism") or a folder `train_organism` wrote (its report.json lists the task options)."""
    if source is None:
        return False
    if str(source) == "organism":
        return True
    report = Path(source) / "report.json"
    try:
        return report.is_file() and "task_options" in json.loads(report.read_text())
    except (OSError, ValueError):
        return False
