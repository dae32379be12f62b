"""Countdown: generation and the exact, eval-free checker."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ar2mdm.tasks import get_task
from ar2mdm.tasks.countdown import evaluate, solves

NUMBERS, TARGET = (3, 7, 12), 33


def _oracle(expr: str, numbers, target) -> bool:
    """Independent judgement for + - * expressions: whitelist characters, no unary signs, then
    Python's own arithmetic on the whitelisted string."""
    s = expr.strip()
    if not s or not re.fullmatch(r"[0-9+\-*() ]*", s) or "**" in s:
        return False
    if re.search(r"(^|[(+\-*])\s*[+\-]", s):  # unary sign
        return False
    if re.search(r"(^|[^0-9])0[0-9]", s):  # leading zero literals
        return False
    if Counter(int(x) for x in re.findall(r"[0-9]+", s)) != Counter(numbers):
        return False
    try:
        value = eval(s, {"__builtins__": {}}, {})  # noqa: S307  (whitelisted digits/operators only)
    except (SyntaxError, TypeError):  # TypeError: "3(4)" reads as calling 3, not arithmetic
        return False
    return value == target


def test_accepts_any_valid_expression():
    assert solves("3*7+12", NUMBERS, TARGET)
    assert solves("12+7*3", NUMBERS, TARGET)
    assert solves(" ( 7 * 3 ) + 12 ", NUMBERS, TARGET)


@pytest.mark.parametrize(
    "expr",
    [
        "3*7+12+3",  # a number used twice
        "3*7+13",  # an unknown number
        "3*7",  # a number missing
        "33",
        "__import__('os')",
        "__import__('os').system('true')",
        "(lambda: 33)()",
        "3*7+12.0",
        "3*7+0xC",
        "3*7+1_2",
        "-3*-7+12",
        "3**2+24",
        "[3,7,12]",
        "3*7+12 if True else 0",
        "x",
        "",
    ],
)
def test_rejects_invalid_expressions(expr):
    assert not solves(expr, NUMBERS, TARGET)


def test_division_must_be_allowed_and_exact():
    assert solves("12/3+7", (3, 7, 12), 11)
    assert not solves("12/3+7", (3, 7, 12), 11, allowed_ops="+-*")
    assert not solves("7/3*12", (3, 7, 12), 28)  # 7/3 is not an integer
    assert evaluate("12/(7-7)") is None


def test_generated_problems():
    task = get_task("countdown", n_numbers=4, division=True, max_target=500)
    for ex in task.generate(40, seed=0):
        nums, target = ex.meta["numbers"], ex.meta["target"]
        assert len(nums) == 4 and 1 <= target <= 500
        assert f"Target: {target} " in ex.prompt
        t2 = ex.meta["corrupted_target"]
        assert t2 != target and len(str(t2)) == len(str(target))
        assert ex.corrupted_prompt == ex.prompt.replace(f"Target: {target} ", f"Target: {t2} ")
        assert all(solves(e, nums, target) for e in ex.correct)
        assert all(solves(e, nums, t2) for e in ex.counterfactual)
        assert {e.strip()[0] for e in ex.correct}.isdisjoint(e.strip()[0] for e in ex.counterfactual)
        assert task.check(ex, ex.answer + f" = {target}")
        assert not task.check(ex, ex.answer + f" = {target + 1}")


_MUTATION_CHARS = "0123456789+-*() "


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 50),
    edits=st.lists(
        st.tuples(
            st.integers(0, 30), st.sampled_from(["insert", "delete", "replace"]), st.sampled_from(_MUTATION_CHARS)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_answers_are_judged_like_an_independent_evaluator(seed, edits):
    task = get_task("countdown")
    ex = task.generate(1, seed=seed)[0]
    s = list(ex.answer.strip())
    for pos, kind, ch in edits:
        pos = pos % (len(s) + 1)
        if kind == "insert":
            s.insert(pos, ch)
        elif s and pos < len(s):
            if kind == "delete":
                del s[pos]
            else:
                s[pos] = ch
    mutated = "".join(s)
    assume("\n" not in mutated)
    assert task.check(ex, mutated) == _oracle(mutated, ex.meta["numbers"], ex.meta["target"])


def test_every_permutation_and_op_choice_agrees_with_the_oracle():
    nums = (2, 5, 9)
    for a, b, c in itertools.permutations(nums):
        for o1, o2 in itertools.product("+-*", repeat=2):
            for expr in (f"{a}{o1}{b}{o2}{c}", f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                value = eval(expr)  # noqa: S307  (built from digits and operators above)
                assert solves(expr, nums, value)
                assert solves(expr, nums, value + 1) == _oracle(expr, nums, value + 1)


def _first_chars_by_hand(numbers) -> dict[int, set[str]]:
    """Independent truth for 3 numbers and + - *: every target's possible first characters, from
    Python's own arithmetic over every written form. Digits: the first digit of the leftmost
    number. "(": a left pair in brackets that are needed (+ or - inside, * outside), the
    task's written form."""
    out: dict[int, set[str]] = {}
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*", repeat=2):
            forms = [(f"{a}{o1}{b}{o2}{c}", str(a)[0]), (f"{a}{o1}({b}{o2}{c})", str(a)[0])]
            if o1 in "+-" and o2 == "*":
                forms.append((f"({a}{o1}{b}){o2}{c}", "("))
            for text, first in forms:
                value = eval(text)  # noqa: S307  (built from digits and operators above)
                if 1 <= value <= 100:
                    out.setdefault(value, set()).add(first)
    return out


def test_corruption_splits_first_tokens_by_target():
    """correct / counterfactual are exactly the first characters right for one target only, and
    the corrupted target is one whose set overlaps the target's least (checked by brute force)."""
    task = get_task("countdown", max_number=10, max_target=100)
    for ex in task.generate(60, seed=3):
        nums, target, t2 = ex.meta["numbers"], ex.meta["target"], ex.meta["corrupted_target"]
        firsts = _first_chars_by_hand(nums)
        mine, theirs = firsts[target], firsts[t2]
        assert {e.strip()[0] for e in ex.correct} == mine - theirs != set()
        assert {e.strip()[0] for e in ex.counterfactual} == theirs - mine != set()
        assert all(_oracle(e, nums, target) for e in ex.correct)
        assert all(_oracle(e, nums, t2) for e in ex.counterfactual)
        rivals = [
            len(mine & other)
            for t, other in firsts.items()
            if t != target and len(str(t)) == len(str(target)) and mine - other and other - mine
        ]
        assert len(mine & theirs) == min(rivals)
