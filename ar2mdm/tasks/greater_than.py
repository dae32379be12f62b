"""Greater-Than, a locally causal task, for digit-splitting tokenizers.

"The war lasted from the year 1739 to the year 17" -> a tens digit that makes the end year later
than the start. In GPT-2 (Hanna et al. 2023) the year tail "39" is one token; tokenizers of the
Llama-3 / Qwen / SmolLM2 family split numbers into single digits, so here the model's next token
is the tens DIGIT of the end year.

Start years are 17d9 (ones digit 9, d in 1..8): then an end year 17XZ is later than 17d9 exactly
when X > d, so the correct next tokens are the digits {d+1..9} and the incorrect ones {0..d}, both
non-empty. Metrics are over sets: `correct = ("d+1", ..., "9")`, `counterfactual = ("0", ..., "d")`
(logsumexp logit difference and probability difference, see `ar2mdm.tasks.evaluate`).

Corruption: start year 1709. Only the tens-digit token changes (one token, same length), and it is
the minimal value: every tens digit 1..9 is then a valid continuation, so the corrupted input
carries no information about d (the digit-split analogue of Hanna et al.'s "01" corruption).
A pretrained model has seen such years; a model trained only on this task has not, unless its
training draws them too (`min_tens=0`: start years 1709 with answers 1..9). Measured on the
6-layer organism trained on d = 1..8 only: on 1709 it put 93% on the tens digits 8 and 9, so the
corrupted logit difference exceeded the clean one (gap -1.9) and the corruption was no control.

The prompt needs the tokenizer to keep "17" and the answer digits apart (digit splitting); a
tokenizer that merges "1745" fails the alignment check (`generate_aligned` raises TaskError).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import words
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer

_TWO_DIGITS = re.compile(r"(\d)(\d)")


class GreaterThanTask(BaseTask):
    """Greater-Than prompts "The {noun} lasted from the year {c}{d}9 to the year {c}".

    Options: `nouns` (the event nouns), `century` (two digits, default "17"), `min_tens` (the
    smallest tens digit d of a start year, 0 or 1, default 1; 0 adds the corruption's own year
    {c}09 as a clean prompt, for training: its corrupted input is then identical). The reference
    answer is a random valid two-digit year tail. Checker: the first two generated characters are
    digits and form an end year later than the start year.
    """

    name = "greater_than"
    kind = "local"

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        nouns: Sequence[str] | None = None,
        century: str = "17",
        min_tens: int = 1,
    ) -> None:
        if not (len(century) == 2 and century.isdigit() and century[0] != "0"):
            raise TaskError(f"greater_than: century must be two digits like '17', got {century!r}.")
        if min_tens not in (0, 1):
            raise TaskError(f"greater_than: min_tens must be 0 or 1, got {min_tens!r}.")
        self.min_tens = min_tens
        self.tokenizer = tokenizer
        self.nouns = tuple(nouns or words.EVENTS)
        self.century = century

    def _prompt(self, noun: str, tens: int) -> str:
        c = self.century
        return f"The {noun} lasted from the year {c}{tens}9 to the year {c}"

    def _sample(self, rng: random.Random) -> Example:
        noun = rng.choice(self.nouns)
        d = rng.randint(self.min_tens, 8)
        tens = rng.randint(d + 1, 9)
        ones = rng.randint(0, 9)
        start = int(f"{self.century}{d}9")
        return Example(
            task=self.name,
            prompt=self._prompt(noun, d),
            answer=f"{tens}{ones}",
            corrupted_prompt=self._prompt(noun, 0),
            correct=tuple(str(x) for x in range(d + 1, 10)),
            counterfactual=tuple(str(x) for x in range(0, d + 1)),
            meta={
                "start_year": start,
                "d": d,
                "century": self.century,
                "noun": noun,
                "corrupted_start_year": int(f"{self.century}09"),
            },
        )

    def check(self, example: Example, generated: str) -> bool:
        """True if `generated` starts with two digits making a year after the start year."""
        m = _TWO_DIGITS.match(generated)
        if m is None:
            return False
        year = int(example.meta["century"] + m.group(1) + m.group(2))
        return year > example.meta["start_year"]
