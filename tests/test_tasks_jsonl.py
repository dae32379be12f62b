"""User tasks from JSONL files."""

from __future__ import annotations

import json

import pytest
from _tasks_helpers import word_tokenizer

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import load_jsonl_task, render

ROWS = [
    {
        "prompt": "When Mary and John went to the store , John gave a drink to",
        "answer": " Mary",
        "corrupted_prompt": "When Alice and Tom went to the store , Sarah gave a drink to",
        "counterfactual": [" John"],
    },
    {
        "prompt": "Then Alice and Bob had a long argument . Bob said to",
        "answer": " Alice",
        "corrupted_prompt": "Then Tom and Sarah had a long argument . John said to",
        "correct": [" Alice"],
        "counterfactual": [" Bob"],
        "meta": {"io": "Alice"},
    },
    {
        "prompt": "The",
        "answer": " dog",
        "suffix": " barked .",
        "corrupted_prompt": "The",
        "corrupted_suffix": " meowed .",
    },
]


def _write(tmp_path, rows, name="mine.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n")
    return path


def test_loads_and_generates(tmp_path):
    task = load_jsonl_task(_write(tmp_path, ROWS), kind="local")
    assert task.name == "mine" and task.kind == "local"
    examples = task.generate(3, seed=0)
    assert sorted(e.answer for e in examples) == [" Alice", " Mary", " dog"]
    assert task.generate(3, seed=0) == examples
    assert examples[0].task == "mine"
    ex = next(e for e in examples if e.answer == " Alice")
    assert ex.counterfactual == (" Bob",) and ex.meta == {"io": "Alice"}
    assert task.check(ex, " Alice went home") and not task.check(ex, " Bob")
    tok = word_tokenizer()
    r = render(ex, tok, "ar")
    assert r.input_ids.shape == r.corrupted_ids.shape
    with pytest.raises(TaskError, match="holds 3"):
        task.generate(4)


def test_multi_word_answers_match_exactly(tmp_path):
    task = load_jsonl_task(_write(tmp_path, [{"prompt": "Q:", "answer": " 3 4 1", "corrupted_prompt": "R:"}]))
    ex = task.generate(1)[0]
    assert task.check(ex, " 3 4 1\n") and not task.check(ex, " 3 4 2")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([ROWS[0], {"prompt": "x", "answer": "y"}], r":2: missing .*corrupted_prompt"),
        ([ROWS[0], "{not json"], r":2: not valid JSON"),
        ([{**ROWS[0], "counterfactual": " John"}], "list of strings"),
        ([{**ROWS[0], "answr": "x"}], "unknown field"),
        ([], "no examples"),
    ],
)
def test_errors_name_the_line(tmp_path, rows, match):
    with pytest.raises(TaskError, match=match):
        load_jsonl_task(_write(tmp_path, rows))


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_jsonl_task(tmp_path / "nope.jsonl")
