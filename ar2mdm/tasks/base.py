"""Task examples and how they become model inputs.

A task is a seeded generator of `Example`s. An example is text, not tokens: the in-place layout
`prompt + answer + suffix` (the suffix is empty except for infilling-style tasks), a corrupted
version with the same shape, the strings whose first token counts as a correct (or counterfactual)
answer, and an exact checker for generated answers.

`render` turns an example into token ids for one reading mode:

- "ar": the model reads after the prompt. Input = tokens of `ar_prompt` (the prompt, or a
  task-specific AR form that states the suffix first, for infilling); the first answer token is
  predicted at the last prompt position.
- "mdm": the answer span is replaced by mask tokens in place, the suffix follows, and each answer
  token is read where the checkpoint's shift says (`ar2mdm.common.metadata.read_positions`).

Clean and corrupted renderings always have identical length and identical mask layout; a tokenizer
that breaks this raises `TaskError` naming the example, rather than yielding misaligned pairs.
`generate_aligned` keeps drawing examples until it has n that render cleanly in both modes under a
given tokenizer (and whose correct and counterfactual first tokens differ, so a logit difference
means something). `BaseTask` is the shared implementation the built-in suites inherit.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from torch import Tensor

from ar2mdm.common.errors import TaskError
from ar2mdm.common.metadata import read_positions
from ar2mdm.common.registry import Registry

Mode = Literal["ar", "mdm"]


@dataclass(frozen=True)
class Example:
    """One task instance as text.

    prompt / answer / suffix: the in-place layout; the full text is prompt + answer + suffix.
    corrupted_prompt / corrupted_suffix: the counterfactual input, same token length as the clean.
    correct: strings whose first token is a correct first answer token (default: (answer,)).
    counterfactual: strings whose first token is the answer the corrupted input points to.
    ar_prompt / corrupted_ar_prompt: the AR reading's prompt when it differs from `prompt`
        (infilling puts the whole sentence, blank included, before the answer).
    meta: task-specific fields the checker needs (numbers and target of a Countdown, ...).
    origin: where the example came from, for error messages ("ar2mdm.tasks.jsonl:12" for a user task).
    """

    task: str
    prompt: str
    answer: str
    corrupted_prompt: str
    suffix: str = ""
    corrupted_suffix: str = ""
    correct: tuple[str, ...] = ()
    counterfactual: tuple[str, ...] = ()
    ar_prompt: str | None = None
    corrupted_ar_prompt: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""

    @property
    def where(self) -> str:
        """How error messages name the example: its origin (file:line) if known, else its task."""
        return f"{self.origin} ({self.task})" if self.origin else self.task

    @property
    def text(self) -> str:
        """The clean in-place text (what a model trained on this task sees)."""
        return self.prompt + self.answer + self.suffix

    @property
    def ar_text(self) -> str:
        """The clean text in AR reading order."""
        return (self.ar_prompt if self.ar_prompt is not None else self.prompt) + self.answer


@runtime_checkable
class Tokenizer(Protocol):
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...


@dataclass
class Rendered:
    """Token ids of one example, clean and corrupted, for one reading mode.

    input_ids / corrupted_ids: [T] each, same length, same mask layout.
    answer_positions: [n] positions of the answer tokens (mask positions in "mdm"; in "ar" the
        positions the answer would occupy after the prompt, possibly past the end of input_ids).
    read_positions: [n] logit positions predicting each answer token.
    answer_ids: [n] the reference answer's token ids.
    correct_ids / counterfactual_ids: candidate first-answer-token ids for logit-difference metrics.
    """

    example: Example
    mode: Mode
    input_ids: Int[Tensor, " pos"]
    corrupted_ids: Int[Tensor, " pos"]
    answer_positions: Int[Tensor, " n"]
    read_positions: Int[Tensor, " n"]
    answer_ids: Int[Tensor, " n"]
    correct_ids: Int[Tensor, " _correct"]
    counterfactual_ids: Int[Tensor, " _counterfactual"]


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids of `text` with the tokenizer's special tokens (BOS where it adds one), as a list."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def continuation_ids(tokenizer: Tokenizer, prompt: str, continuation: str, what: str) -> list[int]:
    """Ids of `continuation` as it tokenises after `prompt`.

    `what` names the continuation in the error message ("answer", "suffix", ...). Raises
    TaskError when the prompt's own ids are not a prefix of the ids of prompt + continuation
    (the tokenizer merged the two across the boundary).
    """
    head = encode_prompt(tokenizer, prompt)
    full = encode_prompt(tokenizer, prompt + continuation)
    if full[: len(head)] != head:
        raise TaskError(
            f"the tokenizer merges the {what} into the prompt's last token ({prompt!r} + "
            f"{continuation!r}); give the {what} a leading space or choose another template."
        )
    return full[len(head) :]


def first_token_ids(tokenizer: Tokenizer, prompt: str, candidates: Iterable[str]) -> list[int]:
    """The first token id of each candidate continuation of `prompt` (deduplicated, in order)."""
    out: list[int] = []
    for cand in candidates:
        ids = continuation_ids(tokenizer, prompt, cand, "answer")
        if ids and ids[0] not in out:
            out.append(ids[0])
    return out


def render(
    example: Example, tokenizer: Tokenizer, mode: Mode = "ar", *, shift: bool = True, mask_id: int | None = None
) -> Rendered:
    """Token ids for `example` in reading `mode` (see the module docstring).

    For "mdm" pass the checkpoint's `mask_id` and `shift` (from its `ModelMeta`).
    Raises TaskError if clean and corrupted inputs do not tokenise to the same length.
    """
    if mode not in ("ar", "mdm"):
        raise TaskError(f"unknown reading mode {mode!r}; use 'ar' or 'mdm'.")
    ex = example
    clean_prompt = ex.ar_prompt if (mode == "ar" and ex.ar_prompt is not None) else ex.prompt
    corrupt_prompt = (
        ex.corrupted_ar_prompt if (mode == "ar" and ex.corrupted_ar_prompt is not None) else ex.corrupted_prompt
    )
    p_clean = encode_prompt(tokenizer, clean_prompt)
    p_corrupt = encode_prompt(tokenizer, corrupt_prompt)
    if len(p_clean) != len(p_corrupt):
        raise TaskError(
            f"{ex.where}: clean prompt {clean_prompt!r} is {len(p_clean)} tokens but corrupted "
            f"{corrupt_prompt!r} is {len(p_corrupt)}; this tokenizer splits the substituted words "
            "differently. Filter such examples (see Task.generate_aligned) or change the word lists."
        )
    answer_ids = continuation_ids(tokenizer, clean_prompt, ex.answer, "answer")
    if not answer_ids:
        raise TaskError(f"{ex.where}: the answer {ex.answer!r} tokenises to nothing.")
    n = len(answer_ids)
    correct = first_token_ids(tokenizer, clean_prompt, ex.correct or (ex.answer,))
    counter = first_token_ids(tokenizer, clean_prompt, ex.counterfactual)
    P = len(p_clean)
    positions = torch.arange(P, P + n)
    if mode == "ar":
        ids, cids = p_clean, p_corrupt
        reads = read_positions(positions, True)
    else:
        if mask_id is None:
            raise TaskError("MDM rendering needs the checkpoint's mask_id (ModelMeta.mask_id).")
        s_clean = continuation_ids(tokenizer, ex.prompt + ex.answer, ex.suffix, "suffix") if ex.suffix else []
        s_corrupt = (
            continuation_ids(tokenizer, ex.corrupted_prompt + ex.answer, ex.corrupted_suffix or ex.suffix, "suffix")
            if ex.suffix
            else []
        )
        if len(s_clean) != len(s_corrupt):
            raise TaskError(
                f"{ex.where}: clean suffix {ex.suffix!r} and corrupted suffix "
                f"{ex.corrupted_suffix!r} tokenise to different lengths; change the word lists."
            )
        ids = p_clean + [mask_id] * n + s_clean
        cids = p_corrupt + [mask_id] * n + s_corrupt
        reads = read_positions(positions, shift)
    return Rendered(
        example=ex,
        mode=mode,
        input_ids=torch.tensor(ids, dtype=torch.long),
        corrupted_ids=torch.tensor(cids, dtype=torch.long),
        answer_positions=positions,
        read_positions=reads,
        answer_ids=torch.tensor(answer_ids, dtype=torch.long),
        correct_ids=torch.tensor(correct, dtype=torch.long),
        counterfactual_ids=torch.tensor(counter, dtype=torch.long),
    )


@dataclass
class Batch:
    """Right-padded batch of renderings. Shapes: input_ids/corrupted_ids/attention_mask [B, T]."""

    input_ids: Int[Tensor, "batch pos"]
    corrupted_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    items: list[Rendered]


def collate(items: Sequence[Rendered], pad_id: int) -> Batch:
    """Right-pad renderings into one batch. Positions stored in each item stay valid."""
    if not items:
        raise TaskError("cannot collate an empty list of examples.")
    T = max(len(r.input_ids) for r in items)
    B = len(items)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    cids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, r in enumerate(items):
        n = len(r.input_ids)
        ids[b, :n] = r.input_ids
        cids[b, :n] = r.corrupted_ids
        mask[b, :n] = 1
    return Batch(ids, cids, mask, list(items))


@runtime_checkable
class Task(Protocol):
    """A task suite: a seeded generator and an exact checker."""

    name: str
    kind: Literal["local", "global"]

    def generate(self, n: int, seed: int = 0) -> list[Example]:
        """n examples; the same seed gives the same list."""
        ...

    def check(self, example: Example, generated: str) -> bool:
        """True if `generated` (the model's answer text) solves `example`."""
        ...


TaskFactory = Callable[..., Task]


# --- shared machinery for task suites -------------------------------------------------------------

ALL_MODES: tuple[Mode, ...] = ("ar", "mdm")


def _probe_mask_id(tokenizer: Tokenizer) -> int:
    """A stand-in mask id for alignment checks: only lengths and layout matter there."""
    mid = getattr(tokenizer, "mask_token_id", None)
    return int(mid) if mid is not None else 0


def check_alignment(
    example: Example, tokenizer: Tokenizer, *, modes: Sequence[Mode] = ALL_MODES, mask_id: int | None = None
) -> None:
    """Raise TaskError unless `example` is usable under `tokenizer` in every reading mode.

    Usable means: `render` succeeds (clean and corrupted have the same length and mask layout), the
    correct first-token set is non-empty, and it shares no id with the counterfactual set (a shared
    id would make the logit difference meaningless).
    """
    mid = _probe_mask_id(tokenizer) if mask_id is None else mask_id
    for mode in modes:
        r = render(example, tokenizer, mode, mask_id=mid)
        if len(r.correct_ids) == 0:
            raise TaskError(f"{example.task}: no correct first token for {example.answer!r}.")
        shared = set(r.correct_ids.tolist()) & set(r.counterfactual_ids.tolist())
        if shared:
            raise TaskError(
                f"{example.task}: correct {example.correct or (example.answer,)!r} and "
                f"counterfactual {example.counterfactual!r} share first token ids {sorted(shared)} "
                f"in {mode!r} mode; the logit difference would be degenerate."
            )


def generate_aligned(
    task: Task,
    n: int,
    tokenizer: Tokenizer,
    seed: int = 0,
    *,
    modes: Sequence[Mode] = ALL_MODES,
    mask_id: int | None = None,
    max_attempts: int | None = None,
) -> list[Example]:
    """The first n examples of `task.generate(..., seed)` that pass `check_alignment`.

    Deterministic for a given seed. Draws at most `max_attempts` candidates (default
    max(200, 20 * n)) and raises TaskError, with the first rejection reason, if fewer than n align:
    that means the tokenizer rejects almost everything and the word lists or format need changing.
    """
    if n < 0:
        raise TaskError(f"n must be >= 0, got {n}.")
    limit = max_attempts if max_attempts is not None else max(200, 20 * n)
    m = min(limit, max(n, 16))
    while True:
        kept: list[Example] = []
        first_error: str | None = None
        candidates = task.generate(m, seed)
        for ex in candidates:
            try:
                check_alignment(ex, tokenizer, modes=modes, mask_id=mask_id)
            except TaskError as err:
                first_error = first_error or str(err)
                continue
            kept.append(ex)
            if len(kept) == n:
                return kept
        if m >= limit:
            raise TaskError(
                f"{task.name}: only {len(kept)} of {len(candidates)} generated examples render "
                f"aligned under this tokenizer (needed {n}). First rejection: {first_error} "
                "Use a tokenizer that keeps the task's words whole, or fewer examples."
            )
        m = min(limit, 2 * m)


def single_token_words(tokenizer: Tokenizer, words: Iterable[str], *, context: str = "and") -> list[str]:
    """The words that are exactly one known token when they follow `context` after a space.

    Words are checked in context (" Mary" after "and"), the way they appear mid-sentence; a word
    that maps to the tokenizer's unknown token does not count.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    out: list[str] = []
    for w in words:
        try:
            ids = continuation_ids(tokenizer, context, " " + w, "word")
        except TaskError:
            continue
        if len(ids) == 1 and ids[0] != unk:
            out.append(w)
    return out


def space_is_own_token(tokenizer: Tokenizer, head: str, continuation: str) -> bool:
    """True if `continuation` (starting with a space) tokenises after `head` with a bare-space
    first token, as digit-splitting tokenizers do for " 3" (SmolLM2, Llama-3, Qwen)."""
    try:
        ids = continuation_ids(tokenizer, head, continuation, "answer")
    except TaskError:
        return False
    return bool(ids) and tokenizer.decode([ids[0]]).strip() == ""


def first_word(text: str) -> str:
    """The first whitespace-separated word of `text`, stripped of surrounding punctuation."""
    parts = text.split()
    return parts[0].strip(string.punctuation + "\u201c\u201d\u2018\u2019") if parts else ""


class BaseTask:
    """Shared implementation of the `Task` protocol.

    Subclasses set `name` and `kind`, implement `_sample(rng)` (one example from a
    `random.Random`) and `check`. `generate(n, seed)` draws n samples from `random.Random(seed)`,
    so a longer list with the same seed starts with the shorter one. `tokenizer` is the tokenizer
    the task was built for (word lists restricted to single tokens), or None for the full lists.
    A subclass that names itself at class level registers in `TASKS` (`get_task`, the CLI, the
    organism and the study read it; docs/EXTENDING.md); a task named per instance (a JSONL file's
    `JsonlTask`) does not.

    The constructor takes the tokenizer first and keyword-only options (`get_task` checks them).

    `text_ends_at_answer` (default True): whether an example's text ends with its answer, so a
    model trained on the task may learn to close it there (<eos>). False for a task whose prompt
    can itself be another example's prompt + answer (induction: the prompt repeating j words is
    the prompt repeating j - 1 words plus their answer), where an <eos> after the answer would
    contradict the other example and cap greedy accuracy; training then leaves that <eos> out.
    """

    name: str = ""
    kind: Literal["local", "global"] = "local"
    tokenizer: Tokenizer | None = None
    text_ends_at_answer: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind not in ("local", "global"):
            raise TaskError(f"task {cls.__name__} has kind {cls.kind!r}; use 'local' or 'global'.")
        TASKS.add(cls)

    def _sample(self, rng: random.Random) -> Example:
        raise NotImplementedError

    def check(self, example: Example, generated: str) -> bool:
        raise NotImplementedError

    def generate(self, n: int, seed: int = 0) -> list[Example]:
        """n examples; the same seed gives the same list (never touches the global RNG)."""
        if n < 0:
            raise TaskError(f"n must be >= 0, got {n}.")
        rng = random.Random(seed)
        return [self._sample(rng) for _ in range(n)]

    def generate_aligned(
        self,
        n: int,
        tokenizer: Tokenizer | None = None,
        seed: int = 0,
        *,
        modes: Sequence[Mode] = ALL_MODES,
        mask_id: int | None = None,
        max_attempts: int | None = None,
    ) -> list[Example]:
        """n examples that render aligned under `tokenizer` (default: the task's own); see
        the module-level `generate_aligned`."""
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise TaskError(f"{self.name}: generate_aligned needs a tokenizer.")
        return generate_aligned(self, n, tok, seed, modes=modes, mask_id=mask_id, max_attempts=max_attempts)

    def _restrict(self, words: Sequence[str], what: str, minimum: int) -> tuple[str, ...]:
        """`words` kept to single tokens under the task's tokenizer (all of them without one)."""
        if self.tokenizer is None:
            return tuple(words)
        kept = single_token_words(self.tokenizer, words)
        if len(kept) < minimum:
            raise TaskError(
                f"{self.name}: only {len(kept)} of {len(words)} {what} are single tokens under "
                f"this tokenizer (need >= {minimum}): {kept[:10]}. Pass your own list of {what}."
            )
        return tuple(kept)


TASKS: Registry[BaseTask] = Registry("task", TaskError)


def task_names(kind: Literal["local", "global"] | None = None, *, builtin: bool = False) -> tuple[str, ...]:
    """Registered task names, all or those of one `kind` ("local": solvable from the tokens before
    the answer; "global": needs the whole input). builtin: only the suites of the `ar2mdm.tasks`
    package (not those of plugins, `ar2mdm.common.plugins`)."""
    package = __name__.rpartition(".")[0]  # ar2mdm.tasks
    return tuple(
        name
        for name, cls in TASKS.items()
        if (kind is None or cls.kind == kind) and (not builtin or cls.__module__.startswith(package + "."))
    )
