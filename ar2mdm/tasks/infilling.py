"""Semantic infilling, a global task: the blank is determined by text AFTER it.

"The ___ barked at the mailman all night." -> "dog". In place (the MDM reading) the prompt is
"The", the answer " dog" is masked, and the suffix " barked at the mailman all night." follows;
only a model that reads the suffix can fill the blank. A causal model cannot see the suffix from
the blank's position, so the AR reading states the whole sentence first:
'Fill in the blank: "The ___ barked at the mailman all night." Answer:' -> " dog".

Corruption: the suffix is swapped for one that points to a different answer and has the same
token length ("... meowed ..." -> cat); prefix, answer slot and layout stay identical. The
counterfactual is that other answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer, continuation_ids, first_word

# (answer, suffix): the suffix alone determines the answer.
BANK: tuple[tuple[str, str], ...] = (
    ("dog", " barked at the mailman all night."),
    ("dog", " wagged its tail and fetched the stick."),
    ("dog", " buried a bone in the backyard."),
    ("dog", " growled at the stranger and barked loudly."),
    ("dog", " chased the ball and barked happily."),
    ("cat", " meowed until someone filled its bowl."),
    ("cat", " purred softly on the warm windowsill."),
    ("cat", " caught a mouse and meowed proudly."),
    ("cat", " hissed at the dog and climbed the curtains."),
    ("cat", " licked its paws and purred."),
    ("cow", " mooed loudly in the green pasture."),
    ("cow", " was milked at dawn by the farmer."),
    ("cow", " chewed its cud and mooed."),
    ("cow", " gave ten liters of fresh milk."),
    ("rooster", " crowed at sunrise and woke the farm."),
    ("rooster", " crowed three times before dawn."),
    ("rooster", " strutted among the hens and crowed."),
    ("rooster", " woke everyone with its crowing."),
    ("chef", " cooked a delicious meal in the restaurant kitchen."),
    ("chef", " seasoned the soup and tasted the sauce."),
    ("chef", " chopped onions and cooked dinner for the guests."),
    ("chef", " plated the dessert in the busy kitchen."),
    ("pilot", " landed the plane safely on the runway."),
    ("pilot", " flew the jet through the storm."),
    ("pilot", " announced that the flight would land soon."),
    ("pilot", " steered the airplane toward the airport."),
    ("doctor", " examined the patient and wrote a prescription."),
    ("doctor", " listened to the patient's heart with a stethoscope."),
    ("doctor", " treated the sick child at the hospital."),
    ("doctor", " diagnosed the flu and prescribed rest."),
    ("teacher", " graded the homework and wrote on the blackboard."),
    ("teacher", " explained the lesson to the students."),
    ("teacher", " gave the class a spelling test."),
    ("teacher", " taught the pupils how to read."),
    ("baker", " baked fresh bread before the shop opened."),
    ("baker", " pulled warm loaves of bread from the oven."),
    ("baker", " kneaded the dough and baked croissants."),
    ("baker", " sold cakes and pastries he had baked."),
)

PREFIXES: tuple[str, ...] = ("The", "Yesterday the", "This morning the", "Suddenly the", "Then the")

_WORDS = re.compile(r"\w+|[^\w\s]")


class InfillingTask(BaseTask):
    """Fill-in-the-blank sentences whose answer is fixed by the suffix.

    Options: `bank` ((answer, suffix) pairs, at least two distinct answers), `prefixes`.
    With a tokenizer, the corrupted suffix is chosen among those of the same token length under it;
    without one, among those with the same number of words and punctuation marks.
    Checker: the first generated word equals the answer (case-insensitive).
    """

    name = "infilling"
    kind = "global"

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        bank: Sequence[tuple[str, str]] | None = None,
        prefixes: Sequence[str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.bank = tuple(bank or BANK)
        self.prefixes = tuple(prefixes or PREFIXES)
        self._lengths: dict[tuple[str, str, str], int] = {}
        if len({a for a, _ in self.bank}) < 2:
            raise TaskError("infilling: the bank needs at least two different answers.")

    def _length(self, prefix: str, answer: str, suffix: str) -> int:
        """Token length of `suffix` after "prefix answer" (-1 if the tokenizer merges them)."""
        key = (prefix, answer, suffix)
        if key not in self._lengths:
            if self.tokenizer is None:
                n = len(_WORDS.findall(suffix))
            else:
                try:
                    n = len(continuation_ids(self.tokenizer, f"{prefix} {answer}", suffix, "suffix"))
                except TaskError:
                    n = -1
            self._lengths[key] = n
        return self._lengths[key]

    @staticmethod
    def _ar_prompt(prefix: str, suffix: str) -> str:
        return f'Fill in the blank: "{prefix} ___{suffix}" Answer:'

    def _sample(self, rng: random.Random) -> Example:
        while True:
            prefix = rng.choice(self.prefixes)
            answer, suffix = rng.choice(self.bank)
            n = self._length(prefix, answer, suffix)
            partners = [(a, s) for a, s in self.bank if a != answer and self._length(prefix, answer, s) == n]
            if n < 0 or not partners:
                continue
            other, other_suffix = rng.choice(partners)
            return Example(
                task=self.name,
                prompt=prefix,
                answer=" " + answer,
                suffix=suffix,
                corrupted_prompt=prefix,
                corrupted_suffix=other_suffix,
                correct=(" " + answer,),
                counterfactual=(" " + other,),
                ar_prompt=self._ar_prompt(prefix, suffix),
                corrupted_ar_prompt=self._ar_prompt(prefix, other_suffix),
                meta={"answer": answer, "corrupted_answer": other},
            )

    def check(self, example: Example, generated: str) -> bool:
        """True if the first generated word is the answer (case-insensitive)."""
        return first_word(generated).lower() == example.meta["answer"].lower()
