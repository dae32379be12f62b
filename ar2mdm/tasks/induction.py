"""Induction on repeated random word sequences, a locally causal task.

"Words: apple river table lamp apple river" -> " table". A sequence of k random words is followed
by a repeat of its first j words; the next word is predictable only by finding the earlier
occurrence of the current word and copying what followed it (an induction head, Olsson et al.
2022): a computation over earlier tokens only.

Corruption: the first occurrence is replaced by k different random words (none from the clean
sequence), so the repeated part has nothing to match and the cue is gone. The counterfactual
answer is the corrupted first half's word at the answer's slot, the word a model that copies
"position j of the first half" without matching content would output.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import words
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer, first_word


class InductionTask(BaseTask):
    """Repeated random word sequences.

    Options: `vocabulary` (words drawn without replacement; default the built-in nouns, restricted
    to single tokens under the task's tokenizer), `length` (k words, default 8), `min_repeat`
    (the repeat shows at least this many words, default 1), `head` (text before the sequence).
    Checker: the first generated word is the expected next word.
    """

    name = "induction"
    kind = "local"
    # "Words: a b c d a b" + " c" is also the prompt of the example repeating three words: an
    # <eos> after the answer would contradict it (see BaseTask)
    text_ends_at_answer = False

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        vocabulary: Sequence[str] | None = None,
        length: int = 8,
        min_repeat: int = 1,
        head: str = "Words:",
    ) -> None:
        if length < 2:
            raise TaskError(f"induction: length must be >= 2, got {length}.")
        if not 1 <= min_repeat < length:
            raise TaskError(f"induction: min_repeat must be in 1..{length - 1}, got {min_repeat}.")
        self.tokenizer = tokenizer
        self.vocabulary = self._restrict(vocabulary or words.NOUNS, "words", minimum=2 * length)
        if len(self.vocabulary) < 2 * length:
            raise TaskError(
                f"induction: need >= {2 * length} distinct words for length {length}, got {len(self.vocabulary)}."
            )
        self.length = length
        self.min_repeat = min_repeat
        self.head = head

    def _text(self, seq: Sequence[str]) -> str:
        return self.head + "".join(" " + w for w in seq)

    def _sample(self, rng: random.Random) -> Example:
        k = self.length
        drawn = rng.sample(self.vocabulary, 2 * k)
        clean, other = drawn[:k], drawn[k:]
        j = rng.randint(self.min_repeat, k - 1)
        return Example(
            task=self.name,
            prompt=self._text(clean + clean[:j]),
            answer=" " + clean[j],
            corrupted_prompt=self._text(other + clean[:j]),
            correct=(" " + clean[j],),
            counterfactual=(" " + other[j],),
            meta={"sequence": tuple(clean), "repeat": j, "corrupted_sequence": tuple(other)},
        )

    def check(self, example: Example, generated: str) -> bool:
        """True if the first generated word is the word that followed in the first occurrence."""
        return first_word(generated) == example.answer.strip()
