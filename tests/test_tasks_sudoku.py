"""4x4 sudoku: generated grids, uniqueness, corruption and the checker."""

from __future__ import annotations

import functools
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ar2mdm.tasks import get_task
from ar2mdm.tasks.sudoku import format_puzzle, is_valid_solution, random_solution, solutions


@functools.cache
def _brute_force(puzzle: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All completions by trying every digit assignment of the blanks (independent of `solutions`)."""
    blanks = [i for i, v in enumerate(puzzle) if v == 0]
    out = []
    for digits in itertools.product(range(1, 5), repeat=len(blanks)):
        grid = list(puzzle)
        for i, d in zip(blanks, digits, strict=True):
            grid[i] = d
        rows = [grid[4 * r : 4 * r + 4] for r in range(4)]
        cols = [grid[c::4] for c in range(4)]
        boxes = [[grid[4 * (br + r) + bc + c] for r in (0, 1) for c in (0, 1)] for br in (0, 2) for bc in (0, 2)]
        if all(sorted(u) == [1, 2, 3, 4] for u in rows + cols + boxes):
            out.append(tuple(grid))
    return out


def test_random_solutions_cover_all_288_grids():
    rng = random.Random(0)
    grids = {random_solution(rng) for _ in range(4000)}
    assert len(grids) == 288 and all(map(is_valid_solution, grids))


def test_generated_puzzles_are_unique_and_corruption_is_one_clue():
    task = get_task("sudoku", n_blanks=7)
    for ex in task.generate(8, seed=0):
        puzzle, c_puzzle = ex.meta["puzzle"], ex.meta["corrupted_puzzle"]
        assert _brute_force(tuple(puzzle)) == [ex.meta["solution"]]
        (c_sol,) = _brute_force(tuple(c_puzzle))
        diff = [i for i in range(16) if puzzle[i] != c_puzzle[i]]
        assert diff == [ex.meta["changed_cell"]] and puzzle[diff[0]] != 0
        blanks = ex.meta["blanks"]
        assert ex.counterfactual[0].split() == [str(c_sol[i]) for i in blanks]
        assert ex.counterfactual[0].split()[0] != ex.answer.split()[0]
        assert ex.prompt == f"Sudoku: {format_puzzle(puzzle)} Solution:"


def test_solutions_matches_brute_force():
    rng = random.Random(1)
    for k in (2, 4, 5, 6, 7, 7):
        grid = random_solution(rng)
        blanks = set(rng.sample(range(16), k))
        puzzle = tuple(0 if i in blanks else v for i, v in enumerate(grid))
        assert set(solutions(puzzle, limit=10_000)) == set(_brute_force(puzzle))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 40), cells=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 4)), max_size=3))
def test_mutated_solutions_are_judged_like_brute_force(seed, cells):
    task = get_task("sudoku")
    ex = task.generate(1, seed=seed)[0]
    digits = ex.answer.split()
    for i, d in cells:
        digits[i % len(digits)] = str(d)
    valid = _brute_force(tuple(ex.meta["puzzle"]))
    filled = list(ex.meta["puzzle"])
    for i, d in zip(ex.meta["blanks"], digits, strict=True):
        filled[i] = int(d)
    assert task.check(ex, " ".join(digits)) == (tuple(filled) in valid)


def test_checker_rejects_malformed_answers():
    task = get_task("sudoku")
    ex = task.generate(1)[0]
    ok = ex.answer.split()
    assert not task.check(ex, " ".join(ok[:-1]))
    assert not task.check(ex, " ".join(["5"] + ok[1:]))
    assert not task.check(ex, "".join(ok))
    assert task.check(ex, " ".join(ok) + " | extra")
