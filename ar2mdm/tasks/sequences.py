"""Long-answer sequence tasks (copy, reverse, sort) for measuring parallel decoding.

"Copy: apple river table ... ." -> " apple river table ..." (32 words by default). Every answer
token is determined by the prompt, so a model that has learned the task is confident at many
positions at once: the setting where parallel decoding (threshold / factor rules, Fast-dLLM) can
commit several tokens per model call. The built-in suites answer in 1-6 tokens, where it cannot.

These are not registered suites (the model organism's vocabulary and mixture stay as they are):
`sequence_examples` draws `Example`s, `write_jsonl` writes them in the user-task format
(`ar2mdm.tasks.jsonl`), which both `ar2mdm convert --sft --data FILE.jsonl` (post-training) and
`ar2mdm eval --tasks FILE.jsonl` / `analyses.generation.task_sets` (evaluation; exact match of the
whole answer) read. `scripts/long_answer_data.py` writes a train / held-out pair.

Corruption: a different draw of the same length (the counterfactual answer is its first word).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import words
from ar2mdm.tasks.base import Example, Tokenizer, single_token_words

OPS = ("copy", "reverse", "sort")
HEADS = {"copy": "Copy:", "reverse": "Reverse:", "sort": "Sort:"}


def _answer(op: str, seq: Sequence[str]) -> list[str]:
    if op == "copy":
        return list(seq)
    if op == "reverse":
        return list(reversed(seq))
    return sorted(seq)


def sequence_examples(
    op: str,
    n: int,
    *,
    length: int = 32,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    vocabulary: Sequence[str] | None = None,
) -> list[Example]:
    """n examples of `op` ("copy", "reverse" or "sort") on `length` distinct words.

    vocabulary: the words drawn (default the built-in nouns, kept to single tokens under
    `tokenizer` when one is given, so an answer is `length` tokens). Same seed, same list.
    Raises TaskError for an unknown op or too few words.
    """
    if op not in OPS:
        raise TaskError(f"unknown sequence task {op!r}; use one of {', '.join(OPS)}.")
    if length < 2:
        raise TaskError(f"{op}: length must be >= 2, got {length}.")
    vocab = list(vocabulary or words.NOUNS)
    if tokenizer is not None:
        vocab = single_token_words(tokenizer, vocab)
    vocab = sorted(set(vocab))
    if len(vocab) < length:
        raise TaskError(f"{op}: need >= {length} distinct single-token words, got {len(vocab)}; lower --length.")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clean = rng.sample(vocab, length)
        other = rng.sample(vocab, length)
        while _answer(op, other)[0] == _answer(op, clean)[0]:
            other = rng.sample(vocab, length)
        head = HEADS[op]
        answer = "".join(" " + w for w in _answer(op, clean))
        out.append(
            Example(
                task=op,
                prompt=head + "".join(" " + w for w in clean) + " .",
                answer=answer,
                corrupted_prompt=head + "".join(" " + w for w in other) + " .",
                correct=(" " + _answer(op, clean)[0],),
                counterfactual=(" " + _answer(op, other)[0],),
            )
        )
    return out


def write_jsonl(examples: Sequence[Example], path: str | Path) -> Path:
    """Write `examples` as a user-task JSONL file (`ar2mdm.tasks.jsonl`'s fields); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for ex in examples:
            row = {
                "prompt": ex.prompt,
                "answer": ex.answer,
                "corrupted_prompt": ex.corrupted_prompt,
                "correct": list(ex.correct),
                "counterfactual": list(ex.counterfactual),
            }
            fh.write(json.dumps(row) + "\n")
    return path
