"""Greater-Than, a locally causal task, for digit-splitting tokenizers.

"The war lasted from the year 1739 to the year 17" -> a tens digit that makes the end year later
than the start. In GPT-2 (Hanna et al. 2023) the year tail "39" is one token; tokenizers of the
Llama-3 / Qwen / SmolLM2 family split numbers into single digits, so here the model's next token
is the tens DIGIT of the end year.

Start years are 17d9 (ones digit 9, d in 1..8): then an end year 17XZ is later than 17d9 exactly
when X > d, so the correct next tokens are the digits {d+1..9} and the incorrect ones {0..d}, both
non-empty. Metrics are over sets: `correct = ("d+1", ..., "9")`, `counterfactual = ("0", ..., "d")`
(logsumexp logit difference and probability difference, see `tasks.evaluate`).

Corruption: start year 1709. Only the tens-digit token changes (one token, same length), and it is
the minimal value: every tens digit 1..9 is then a valid continuation, so the corrupted input
carries no information about d (the digit-split analogue of Hanna et al.'s "01" corruption).

The prompt needs the tokenizer to keep "17" and the answer digits apart (digit splitting); a
tokenizer that merges "1745" fails the alignment check (`generate_aligned` raises TaskError).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from common.errors import TaskError
from tasks import words
from tasks.base import BaseTask, Example, Tokenizer

_TWO_DIGITS = re.compile(r"(\d)(\d)")


class GreaterThanTask(BaseTask):
    """Greater-Than prompts "The {noun} lasted from the year {c}{d}9 to the year {c}".

    Options: `nouns` (the event nouns), `century` (two digits, default "17"). The reference
    answer is a random valid two-digit year tail. Checker: the first two generated characters are
    digits and form an end year later than the start year.
    """

    name = "greater_than"
    kind = "local"

    def __init__(
        self, tokenizer: Tokenizer | None = None, *, nouns: Sequence[str] | None = None, century: str = "17"
    ) -> None:
        if not (len(century) == 2 and century.isdigit() and century[0] != "0"):
            raise TaskError(f"greater_than: century must be two digits like '17', got {century!r}.")
        self.tokenizer = tokenizer
        self.nouns = tuple(nouns or words.EVENTS)
        self.century = century

    def _prompt(self, noun: str, tens: int) -> str:
        c = self.century
        return f"The {noun} lasted from the year {c}{tens}9 to the year {c}"

    def _sample(self, rng: random.Random) -> Example:
        noun = rng.choice(self.nouns)
        d = rng.randint(1, 8)
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
