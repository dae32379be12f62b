"""Indirect Object Identification (IOI), a locally causal task.

"When Mary and John went to the store, John gave a drink to" -> " Mary". Two names are introduced;
one of them (the subject, S) is repeated; the model must name the other (the indirect object, IO).
The circuit that solves it in GPT-2 (Wang et al. 2022) finds the duplicated name and copies the
non-duplicated one, all from tokens before the answer: a locally causal computation.

Metric: logit(IO) - logit(S) at the answer's read position (`correct=(" IO",)`,
`counterfactual=(" S",)`).

Corruption ("ABC"): the same template, place and object with the three name slots filled by three
fresh, distinct names. Nothing is duplicated any more, so the information that distinguishes IO
from S is gone while length and layout stay identical (all names are single tokens).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import words
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer, first_word

# {X} and {Y} are the two introduced names (IO and S in random order); {S} is the repeated subject.
TEMPLATES: tuple[str, ...] = (
    "When {X} and {Y} went to the {place}, {S} gave a {object} to",
    "Then, {X} and {Y} went to the {place}. {S} gave a {object} to",
    "After {X} and {Y} went to the {place}, {S} gave a {object} to",
    "While {X} and {Y} were working at the {place}, {S} gave a {object} to",
    "Then, {X} and {Y} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "Friends {X} and {Y} found a {object} at the {place}. {S} gave it to",
    "When {X} and {Y} got a {object} at the {place}, {S} decided to give it to",
    "Afterwards, {X} and {Y} went to the {place}. {S} handed a {object} to",
    "Then, {X} and {Y} had a long argument at the {place}. Afterwards {S} said to",
    "When {X} and {Y} arrived at the {place}, {S} threw a {object} to",
)


class IOITask(BaseTask):
    """IOI prompts from `templates`, `names`, `places` and `objects` (built-in lists by default).

    With a tokenizer, names are restricted to single tokens (" Mary" is one token) so the ABC
    corruption keeps the length. Checker: the first generated word equals the IO name.
    """

    name = "ioi"
    kind = "local"

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        names: Sequence[str] | None = None,
        places: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.names = self._restrict(names or words.NAMES, "names", minimum=5)
        self.places = tuple(places or words.PLACES)
        self.objects = tuple(objects or words.OBJECTS)
        self.templates = tuple(templates or TEMPLATES)
        for t in self.templates:
            if not all(slot in t for slot in ("{X}", "{Y}", "{S}")):
                raise TaskError(f"ioi: template {t!r} needs {{X}}, {{Y}} and {{S}} slots.")

    def _sample(self, rng: random.Random) -> Example:
        t = rng.randrange(len(self.templates))
        template = self.templates[t]
        io, s, c1, c2, c3 = rng.sample(self.names, 5)
        place = rng.choice(self.places)
        obj = rng.choice(self.objects)
        io_first = rng.random() < 0.5
        x, y = (io, s) if io_first else (s, io)
        prompt = template.format(X=x, Y=y, S=s, place=place, object=obj)
        corrupted = template.format(X=c1, Y=c2, S=c3, place=place, object=obj)
        return Example(
            task=self.name,
            prompt=prompt,
            answer=" " + io,
            corrupted_prompt=corrupted,
            correct=(" " + io,),
            counterfactual=(" " + s,),
            meta={
                "io": io,
                "s": s,
                "order": "ABBA" if io_first else "BABA",
                "template": t,
                "corrupted_names": (c1, c2, c3),
            },
        )

    def check(self, example: Example, generated: str) -> bool:
        """True if the first generated word is the IO name."""
        return first_word(generated) == example.meta["io"]
