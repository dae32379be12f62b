"""Long-answer sequence tasks (ar2mdm.tasks.sequences): answers by hand, determinism, the JSONL round trip."""

from __future__ import annotations

import pytest

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import load_jsonl_task
from ar2mdm.tasks.sequences import sequence_examples, write_jsonl


def words_of(prompt: str) -> list[str]:
    return prompt.split()[1:-1]  # drop the head ("Copy:") and the closing "."


@pytest.mark.parametrize(
    "op,expected", [("copy", lambda w: w), ("reverse", lambda w: w[::-1]), ("sort", lambda w: sorted(w))]
)
def test_answers_follow_the_operation(op, expected):
    for ex in sequence_examples(op, 5, length=12, seed=3):
        seq = words_of(ex.prompt)
        assert len(seq) == len(set(seq)) == 12
        assert ex.answer.split() == expected(seq)
        assert ex.correct[0].strip() == expected(seq)[0]
        assert ex.counterfactual[0].strip() == expected(words_of(ex.corrupted_prompt))[0] != ex.correct[0].strip()
        assert len(words_of(ex.corrupted_prompt)) == 12


def test_same_seed_same_examples_and_jsonl_round_trip(tmp_path):
    a = sequence_examples("copy", 4, length=8, seed=1)
    assert a == sequence_examples("copy", 4, length=8, seed=1) != sequence_examples("copy", 4, length=8, seed=2)
    task = load_jsonl_task(write_jsonl(a, tmp_path / "copy.jsonl"))
    assert [e.prompt for e in task.examples] == [e.prompt for e in a]
    ex = task.examples[0]
    assert task.check(ex, ex.answer) and task.check(ex, ex.answer + " trailing")
    wrong = " ".join(ex.answer.split()[:-1] + ["nope"])
    assert not task.check(ex, " " + wrong)  # one wrong word of 8 fails the exact match


def test_bad_options_are_refused():
    with pytest.raises(TaskError, match="unknown sequence task"):
        sequence_examples("shuffle", 1)
    with pytest.raises(TaskError, match="distinct single-token words"):
        sequence_examples("copy", 1, length=10, vocabulary=["a", "b", "c"])
