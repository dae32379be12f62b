"""The task registry and the contracts every task suite shares: seeding, alignment, checkers."""

from __future__ import annotations

import pytest
import torch
from _tasks_helpers import bpe_tokenizer, char_tokenizer, word_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks import TASKS, check_alignment, collate, get_task, render, task_names, words
from ar2mdm.tasks.base import first_word, single_token_words

NAMES = sorted(TASKS)
TOKENIZERS = {"word": word_tokenizer, "bpe": bpe_tokenizer}


def test_registry_lists_six_tasks_split_by_kind():
    assert set(task_names("local")) == {"ioi", "greater_than", "induction"}
    assert set(task_names("global")) == {"countdown", "infilling", "sudoku"}
    assert set(TASKS) == set(task_names("local")) | set(task_names("global"))
    for name in TASKS:
        task = get_task(name)
        assert task.name == name
        assert task.kind == ("local" if name in task_names("local") else "global")


def test_unknown_task_and_option_are_task_errors():
    with pytest.raises(TaskError, match="ioi"):
        get_task("ioj")
    with pytest.raises(TaskError, match="n_numbers"):
        get_task("countdown", n_number=4)


def test_word_lists_are_large_and_unique():
    assert len(words.NAMES) >= 100
    for lst in (words.NAMES, words.NOUNS, words.PLACES, words.OBJECTS, words.EVENTS):
        assert len(set(lst)) == len(lst)


@pytest.mark.parametrize("name", NAMES)
def test_generate_is_seeded_and_prefix_stable(name):
    task = get_task(name)
    a = task.generate(12, seed=3)
    assert a == get_task(name).generate(12, seed=3)
    assert a != task.generate(12, seed=4)
    assert task.generate(5, seed=3) == a[:5]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_generate_never_touches_global_rng(seed):
    import random

    from suite_typecheck import unchecked

    random.seed(0)
    before = random.random()
    random.seed(0)
    with unchecked():  # the suite's run-time type checker samples containers with `random`
        for name in ("ioi", "countdown"):
            get_task(name).generate(2, seed=seed)
    assert random.random() == before


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes_and_counterfactuals_fail(name):
    task = get_task(name)
    for ex in task.generate(25, seed=1):
        assert task.check(ex, ex.answer), ex
        assert task.check(ex, ex.answer + "\nmore text"), ex
        assert not task.check(ex, ""), ex
        for cf in ex.counterfactual:
            # Greater-Than counterfactuals are tens digits <= d: the year 17{cf}9 is not later.
            wrong = cf + "9" if name == "greater_than" else cf
            assert not task.check(ex, wrong), (ex, wrong)


@pytest.mark.parametrize("name", NAMES)
def test_full_lists_align_under_a_word_level_tokenizer(name):
    """The model organism's case: no tokenizer at generation time, one token per word later."""
    tok = word_tokenizer()
    for ex in get_task(name).generate(30, seed=2):
        check_alignment(ex, tok)


def _assert_rendering_contract(ex, tok):
    mask_id = tok.mask_token_id
    for shift in (True, False):
        r = render(ex, tok, "mdm", shift=shift, mask_id=mask_id)
        assert r.input_ids.shape == r.corrupted_ids.shape
        clean_masks = (r.input_ids == mask_id).nonzero().flatten()
        corrupt_masks = (r.corrupted_ids == mask_id).nonzero().flatten()
        assert torch.equal(clean_masks, r.answer_positions)
        assert torch.equal(corrupt_masks, r.answer_positions)
        assert len(clean_masks) == len(r.answer_ids)
        expected = r.answer_positions - 1 if shift else r.answer_positions
        assert torch.equal(r.read_positions, expected)
        # clean and corrupted differ only outside the answer span
        assert torch.equal(r.input_ids[r.answer_positions], r.corrupted_ids[r.answer_positions])
    r = render(ex, tok, "ar")
    assert r.input_ids.shape == r.corrupted_ids.shape
    assert int(r.answer_positions[0]) == len(r.input_ids)
    assert torch.equal(r.read_positions, r.answer_positions - 1)
    assert not set(r.correct_ids.tolist()) & set(r.counterfactual_ids.tolist())


@pytest.mark.parametrize("tok_name", sorted(TOKENIZERS))
@pytest.mark.parametrize("name", NAMES)
def test_aligned_examples_render_with_equal_length_and_layout(name, tok_name):
    tok = TOKENIZERS[tok_name]()
    task = get_task(name, tok)
    examples = task.generate_aligned(15, seed=0)
    assert len(examples) == 15
    assert examples == get_task(name, tok).generate_aligned(15, seed=0)
    for ex in examples:
        _assert_rendering_contract(ex, tok)


def test_tokenizer_restricts_names_to_single_tokens():
    tok = bpe_tokenizer()
    task = get_task("ioi", tok)
    assert 5 <= len(task.names) < len(words.NAMES)
    assert set(task.names) == set(single_token_words(tok, words.NAMES))
    for ex in task.generate(20):
        assert {ex.meta["io"], ex.meta["s"], *ex.meta["corrupted_names"]} <= set(task.names)


def test_character_tokenizer_is_rejected_with_a_clear_error():
    tok = char_tokenizer()
    with pytest.raises(TaskError, match="single tokens"):
        get_task("ioi", tok)
    # Full lists under a character tokenizer: almost no clean/corrupted pair has equal length.
    with pytest.raises(TaskError, match="render aligned"):
        get_task("ioi").generate_aligned(40, tok, max_attempts=60)


def test_generate_aligned_needs_a_tokenizer():
    with pytest.raises(TaskError, match="tokenizer"):
        get_task("ioi").generate_aligned(3)


@pytest.mark.parametrize("name", ["ioi", "infilling", "countdown"])
def test_collate_keeps_positions(name):
    tok = bpe_tokenizer()
    examples = get_task(name, tok).generate_aligned(5, seed=1)
    items = [render(ex, tok, "mdm", shift=False, mask_id=tok.mask_token_id) for ex in examples]
    batch = collate(items, pad_id=tok.pad_token_id)
    for b, r in enumerate(items):
        n = len(r.input_ids)
        assert torch.equal(batch.input_ids[b, :n], r.input_ids)
        assert torch.equal(batch.corrupted_ids[b, :n], r.corrupted_ids)
        assert batch.attention_mask[b].sum() == n
        assert torch.equal(batch.input_ids[b, r.answer_positions], r.input_ids[r.answer_positions])


def test_ioi_prompt_structure():
    for ex in get_task("ioi").generate(30, seed=5):
        io, s = ex.meta["io"], ex.meta["s"]
        assert ex.prompt.count(s) == 2 and ex.prompt.count(io) == 1
        assert (ex.correct, ex.counterfactual) == ((" " + io,), (" " + s,))
        c = ex.meta["corrupted_names"]
        assert len(set(c)) == 3 and not {io, s} & set(c)
        assert all(ex.corrupted_prompt.count(n) == 1 for n in c)


def test_greater_than_sets_partition_the_digits():
    task = get_task("greater_than")
    for ex in task.generate(30, seed=0):
        d = ex.meta["d"]
        assert 1 <= d <= 8 and ex.meta["start_year"] == 1709 + 10 * d
        assert set(ex.correct) | set(ex.counterfactual) == set("0123456789")
        assert min(map(int, ex.correct)) == d + 1
        assert ex.corrupted_prompt == ex.prompt.replace(f"17{d}9", "1709")
    ex = task.generate(1)[0]
    start = ex.meta["start_year"] % 100
    assert task.check(ex, f"{start + 1:02d}") and not task.check(ex, f"{start:02d}")
    assert not task.check(ex, " 99") and not task.check(ex, "9")


def test_greater_than_min_tens_zero_draws_the_corrupted_year():
    """min_tens=0 (the organism's training draw) adds start years 1709, the corruption's own
    prompt, with every tens digit 1..9 correct; the default never draws it."""
    task = get_task("greater_than", min_tens=0)
    zeros = [ex for ex in task.generate(200, seed=1) if ex.meta["d"] == 0]
    assert zeros and all(ex.prompt == ex.corrupted_prompt for ex in zeros)
    assert all(set(ex.correct) == set("123456789") and ex.counterfactual == ("0",) for ex in zeros)
    assert all(task.check(ex, ex.answer) and not task.check(ex, "05") for ex in zeros)
    assert all(ex.meta["d"] >= 1 for ex in get_task("greater_than").generate(200, seed=1))
    with pytest.raises(TaskError, match="min_tens"):
        get_task("greater_than", min_tens=2)


def test_induction_text_does_not_end_at_the_answer():
    """The prompt repeating j words equals the prompt repeating j - 1 words plus its answer, so an
    <eos> after an answer contradicts another example: the task says its text does not end there."""
    task = get_task("induction")
    seq = [f"w{i}" for i in range(8)]
    for j in range(2, 8):
        assert task._text(seq + seq[:j]) == task._text(seq + seq[: j - 1]) + " " + seq[j - 1]
    assert task.text_ends_at_answer is False
    assert all(get_task(n).text_ends_at_answer for n in ("ioi", "greater_than", "countdown", "sudoku"))


def test_induction_corruption_removes_the_repeat():
    for ex in get_task("induction").generate(20, seed=0):
        seq, j = ex.meta["sequence"], ex.meta["repeat"]
        other = ex.meta["corrupted_sequence"]
        assert not set(seq) & set(other)
        assert ex.answer == " " + seq[j] and ex.counterfactual == (" " + other[j],)
        assert ex.corrupted_prompt.split()[1:] == list(other) + list(seq[:j])


def test_infilling_forms():
    task = get_task("infilling")
    for ex in task.generate(20, seed=0):
        assert ex.ar_prompt == f'Fill in the blank: "{ex.prompt} ___{ex.suffix}" Answer:'
        assert ex.corrupted_suffix != ex.suffix and ex.corrupted_prompt == ex.prompt
        assert ex.meta["corrupted_answer"] != ex.meta["answer"]
        assert task.check(ex, " " + ex.meta["answer"].capitalize() + ".")


def test_digit_answers_move_the_space_for_digit_splitting_tokenizers():
    tok = bpe_tokenizer()  # " 3" -> [" ", "3"], like SmolLM2
    for name in ("countdown", "sudoku"):
        ex = get_task(name, tok).generate(1)[0]
        assert ex.prompt.endswith(": ") and not ex.answer.startswith(" ")
        ex = get_task(name, word_tokenizer()).generate(1)[0]
        assert ex.prompt.endswith(":") and ex.answer.startswith(" ")


def test_first_word():
    assert first_word('  "Mary," said') == "Mary"
    assert first_word("") == ""
