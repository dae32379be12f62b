"""4x4 Sudoku, a global puzzle task.

"Sudoku: 1 2 _ 4 | 3 _ 1 2 | 2 3 4 1 | _ 1 2 3 Solution:" -> " 3 4 4". Rows are separated by
"|", blanks are "_", and the answer lists the blank cells' digits in reading order. Each row,
column and 2x2 box holds 1..4 once. The first blank's digit can depend on clues anywhere in the
grid, so even the first answer token is a function of the whole input.

Generation: a base solution permuted by digit relabelling, row swaps within bands, band swaps,
column swaps within stacks, stack swaps and transposition (all validity-preserving), then
`n_blanks` random cells blanked; the blank set is redrawn until the puzzle has exactly one
solution (checked by brute force, trivial at 4x4).

Corruption: one given clue changed to another digit such that the new puzzle still has exactly
one solution and its first blank's digit differs (so the first answer tokens differ). Only one
digit token changes. The counterfactual is the corrupted puzzle's solution.

Spacing: as in Countdown, for digit-splitting tokenizers the space after "Solution:" moves into the
prompt so the first answer token is a digit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import no_type_check

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer, space_is_own_token

Grid = tuple[int, ...]  # 16 cells in reading order; 0 = blank
# Two base grids: the permutations below reach 192 of the 288 valid grids from the first and the
# remaining 96 from the second.
_BASES: tuple[Grid, ...] = (
    (1, 2, 3, 4, 3, 4, 1, 2, 2, 3, 4, 1, 4, 1, 2, 3),
    (1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1),
)
_DIGIT = re.compile(r"[1-4]")


def _units() -> list[tuple[int, ...]]:
    rows = [tuple(4 * r + c for c in range(4)) for r in range(4)]
    cols = [tuple(4 * r + c for r in range(4)) for c in range(4)]
    boxes = [tuple(4 * (br + r) + bc + c for r in range(2) for c in range(2)) for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


UNITS = _units()
PEERS = [frozenset(j for unit in UNITS if i in unit for j in unit if j != i) for i in range(16)]


def is_valid_solution(grid: Sequence[int]) -> bool:
    """True if `grid` (16 digits) is a complete valid 4x4 sudoku."""
    return len(grid) == 16 and all(sorted(grid[i] for i in unit) == [1, 2, 3, 4] for unit in UNITS)


def solutions(puzzle: Sequence[int], limit: int = 2) -> list[Grid]:
    """Up to `limit` complete solutions of `puzzle` (0 = blank), by backtracking."""
    found: list[Grid] = []
    _search(list(puzzle), found, limit)
    return found


@no_type_check  # hot recursion: kept out of the suite's run-time type checks
def _search(cells: list[int], found: list[Grid], limit: int) -> None:
    """Fill the first blank of `cells` with each digit its peers allow, depth first, appending
    complete valid grids to `found` until it holds `limit`."""
    if len(found) >= limit:
        return
    try:
        i = cells.index(0)
    except ValueError:
        if is_valid_solution(cells):
            found.append(tuple(cells))
        return
    used = {cells[j] for j in PEERS[i]}
    for d in range(1, 5):
        if d not in used:
            cells[i] = d
            _search(cells, found, limit)
            cells[i] = 0


def random_solution(rng: random.Random) -> Grid:
    """A random valid complete grid (validity-preserving permutations of a base grid)."""
    base = rng.choice(_BASES)
    digits = rng.sample(range(1, 5), 4)
    bands = rng.sample((0, 1), 2)
    rows = [2 * b + r for b in bands for r in rng.sample((0, 1), 2)]
    stacks = rng.sample((0, 1), 2)
    cols = [2 * s + c for s in stacks for c in rng.sample((0, 1), 2)]
    transpose = rng.random() < 0.5
    out = []
    for r in range(4):
        for c in range(4):
            rr, cc = (cols[c], rows[r]) if transpose else (rows[r], cols[c])
            out.append(digits[base[4 * rr + cc] - 1])
    return tuple(out)


def format_puzzle(puzzle: Sequence[int]) -> str:
    """ "1 2 _ 4 | 3 _ 1 2 | ..." for a 16-cell grid with 0 as blank."""
    rows = [" ".join(str(v) if v else "_" for v in puzzle[4 * r : 4 * r + 4]) for r in range(4)]
    return " | ".join(rows)


class SudokuTask(BaseTask):
    """4x4 sudoku puzzles with a unique solution.

    Options: `n_blanks` (1..10, default 6), `space_in_prompt` (None = decide from the tokenizer).
    Checker: the first `n_blanks` whitespace-separated items of the generation's first line are
    digits 1..4 that, filled into the blanks, make a valid grid.
    """

    name = "sudoku"
    kind = "global"

    def __init__(
        self, tokenizer: Tokenizer | None = None, *, n_blanks: int = 6, space_in_prompt: bool | None = None
    ) -> None:
        if not 1 <= n_blanks <= 10:
            raise TaskError(f"sudoku: n_blanks must be in 1..10, got {n_blanks}.")
        self.tokenizer = tokenizer
        self.n_blanks = n_blanks
        if space_in_prompt is None:
            space_in_prompt = tokenizer is not None and space_is_own_token(tokenizer, "Solution:", " 3")
        self.space_in_prompt = space_in_prompt

    def _prompt(self, puzzle: Sequence[int]) -> str:
        head = f"Sudoku: {format_puzzle(puzzle)} Solution:"
        return head + " " if self.space_in_prompt else head

    def _answer(self, solution: Grid, blanks: Sequence[int]) -> str:
        lead = "" if self.space_in_prompt else " "
        return lead + " ".join(str(solution[i]) for i in blanks)

    def _corrupt(self, rng: random.Random, puzzle: Grid, blanks: Sequence[int], solution: Grid):
        clues = [i for i in range(16) if puzzle[i]]
        for i in rng.sample(clues, len(clues)):
            for d in rng.sample(range(1, 5), 4):
                if d == puzzle[i]:
                    continue
                changed = list(puzzle)
                changed[i] = d
                sols = solutions(changed)
                if len(sols) == 1 and sols[0][blanks[0]] != solution[blanks[0]]:
                    return tuple(changed), sols[0], i
        return None

    def _sample(self, rng: random.Random) -> Example:
        while True:
            solution = random_solution(rng)
            blanks = sorted(rng.sample(range(16), self.n_blanks))
            puzzle = tuple(0 if i in blanks else v for i, v in enumerate(solution))
            if len(solutions(puzzle)) != 1:
                continue
            corrupted = self._corrupt(rng, puzzle, blanks, solution)
            if corrupted is None:
                continue
            c_puzzle, c_solution, changed_cell = corrupted
            return Example(
                task=self.name,
                prompt=self._prompt(puzzle),
                answer=self._answer(solution, blanks),
                corrupted_prompt=self._prompt(c_puzzle),
                counterfactual=(self._answer(c_solution, blanks),),
                meta={
                    "puzzle": puzzle,
                    "solution": solution,
                    "blanks": tuple(blanks),
                    "corrupted_puzzle": c_puzzle,
                    "changed_cell": changed_cell,
                },
            )

    def check(self, example: Example, generated: str) -> bool:
        """True if the generated digits fill the blanks into a valid grid."""
        blanks = example.meta["blanks"]
        lines = generated.strip().split("\n", 1)
        items = lines[0].split() if lines else []
        if len(items) < len(blanks) or not all(_DIGIT.fullmatch(x) for x in items[: len(blanks)]):
            return False
        grid = list(example.meta["puzzle"])
        for i, x in zip(blanks, items, strict=False):
            grid[i] = int(x)
        return is_valid_solution(grid)
