"""Countdown, a global task: reach a target with arithmetic over given numbers.

"Numbers: 3 7 12 Target: 33 Answer:" -> " 3*7+12". Every given number must be used exactly once,
with + - * (and optionally /); the expression must evaluate exactly to the target. The first answer
token already depends on the whole problem (which number can start a solution), which is what
makes the task global: an early output is constrained by the goal.

Generation: draw numbers, combine them with a random expression tree, and keep the result as the
target when it is a positive integer in range (divisions must be exact). The reference answer is
that expression; any other valid expression is also correct, so `check` evaluates, never compares
strings. Evaluation parses with `ast` and walks the tree allowing only decimal literals and the
four operators: no `eval`, no names, no calls.

Corruption: a different target with the same number of digits, reachable from the same numbers,
chosen so the two targets' answers START differently. Every expression over the numbers is
covered once per number multiset (dynamic programming over subsets; cached), giving for each reachable
target the set of first characters its solutions can start with (a number's first digit or "(").
`correct` holds one solution of the target for each first character that no solution of the
corrupted target starts with, `counterfactual` the converse, and the corrupted target is the one
whose first-character set overlaps the target's least (disjoint when any is). So the logit
difference at the first answer position compares first tokens that are right only for the clean
problem with first tokens that are right only for the corrupted one: a model that solves the task
must prefer the first group on the clean input and the second on the corrupted input. (The earlier
design compared the reference's first token with one other solution's, both usually valid for
both targets: the organism's clean-corrupt gap was 0.4-0.5.) Problems where no target gives both
groups a member (about 1 in 4 for 3 numbers 1..10, as the organism draws them) are redrawn.

Spacing: digit-splitting tokenizers (SmolLM2, Llama-3, Qwen) read " 3" as [" ", "3"], so every
answer would start with the same bare-space token. For such a tokenizer the space moves into the
prompt ("Answer: " + "3*7+12"); otherwise the answer carries it (`space_in_prompt` overrides).
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import no_type_check

from ar2mdm.common.errors import TaskError
from ar2mdm.tasks.base import BaseTask, Example, Tokenizer, space_is_own_token

_OPS: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_MAX_EXPRESSION_CHARS = 200


@no_type_check  # hot recursion: kept out of the suite's run-time type checks
def _apply(op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
    """a op b exactly; None if an operand is None, on division by zero or an inexact division."""
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or (a / b).denominator != 1:
        return None
    return a / b


def evaluate(expression: str, allowed_ops: str = "+-*/") -> tuple[Fraction, list[int]] | None:
    """Exact value and literals of an arithmetic expression, or None if it is not one.

    Accepted: non-negative decimal integer literals, parentheses and binary operators from
    `allowed_ops`. Rejected: anything else (names, calls, unary signs, floats, hex, `**`), division
    by zero, and any division whose result is not an integer.
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    src = expression.strip()
    literals: list[int] = []

    def walk(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.BinOp):
            op = _OPS.get(type(node.op))
            if op is None or op not in allowed_ops:
                return None
            return _apply(op, walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            text = ast.get_source_segment(src, node)
            if text is None or not (text.isascii() and text.isdigit()):
                return None
            literals.append(node.value)
            return Fraction(node.value)
        return None

    value = walk(tree.body)
    return None if value is None else (value, literals)


def solves(expression: str, numbers: Sequence[int], target: int, allowed_ops: str = "+-*/") -> bool:
    """True if `expression` uses exactly the multiset `numbers` and evaluates to `target`."""
    result = evaluate(expression, allowed_ops)
    if result is None:
        return False
    value, literals = result
    return Counter(literals) == Counter(numbers) and value == target


@no_type_check  # hot recursion: kept out of the suite's run-time type checks
def _format(node: tuple) -> str:
    """Infix text of an expression tree ("num", n) / (op, left, right), minimal parentheses."""
    if node[0] == "num":
        return str(node[1])
    op, left, right = node
    ltxt, rtxt = _format(left), _format(right)
    if left[0] != "num" and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        ltxt = f"({ltxt})"
    if right[0] != "num" and (
        _PRECEDENCE[right[0]] < _PRECEDENCE[op] or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in "-/")
    ):
        rtxt = f"({rtxt})"
    return f"{ltxt}{op}{rtxt}"


@no_type_check  # hot recursion: kept out of the suite's run-time type checks
def _tree_value(node: tuple) -> Fraction | None:
    """Exact value of an expression tree; None on division by zero or an inexact division."""
    if node[0] == "num":
        return Fraction(node[1])
    op, left, right = node
    return _apply(op, _tree_value(left), _tree_value(right))


@lru_cache(maxsize=4096)
def solutions_by_first_char(numbers: tuple[int, ...], ops: str, max_target: int) -> dict[int, dict[str, str]]:
    """For each target in 1..max_target reachable from the multiset `numbers` (pass it sorted):
    {first character of a solution: one solution starting with it}.

    Covers every expression (all orders and bracketings, every operator choice, exact divisions
    only) by dynamic programming over subsets of the numbers. An expression's first character is
    its left operand's, or "(" when the formatter brackets that operand (`_format`: a left operand
    of lower precedence than the operator), so each subset keeps one tree per (value, top
    operator, first character).
    """
    n = len(numbers)
    states: dict[int, dict[tuple[int, str, str], tuple]] = {
        1 << i: {(v, "num", str(v)[0]): ("num", v)} for i, v in enumerate(numbers)
    }
    for mask in sorted(range(1, 1 << n), key=lambda m: bin(m).count("1")):
        if mask in states:
            continue
        here: dict[tuple[int, str, str], tuple] = {}
        left = (mask - 1) & mask
        while left:
            right = mask ^ left
            if right:
                for (lv, ltop, lfirst), ltree in states[left].items():
                    for (rv, _, _), rtree in states[right].items():
                        for op in ops:
                            if op == "/" and (rv == 0 or lv % rv):
                                continue
                            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op] if op != "/" else lv // rv
                            bracket = ltop != "num" and _PRECEDENCE[ltop] < _PRECEDENCE[op]
                            here.setdefault((value, op, "(" if bracket else lfirst), (op, ltree, rtree))
            left = (left - 1) & mask
        states[mask] = here
    out: dict[int, dict[str, str]] = {}
    for (value, _, first), tree in sorted(states[(1 << n) - 1].items(), key=lambda kv: kv[0]):
        if 1 <= value <= max_target:
            out.setdefault(value, {}).setdefault(first, _format(tree))
    return out


def _only(firsts: dict[str, str], other: dict[str, str]) -> list[str]:
    """First characters that start a solution in `firsts` and none in `other`, sorted.

    "(" counts as the task writes answers (`_format`: brackets only where needed, which is what
    the reference answers and so the organism's training text use); a model that writes
    redundant brackets could start any solution with "(", and reads this metric less sharply."""
    return sorted(c for c in firsts if c not in other)


def _random_tree(rng: random.Random, numbers: Sequence[int], ops: str) -> tuple:
    """A random binary expression tree using each of `numbers` once, in random order."""
    nodes: list[tuple] = [("num", n) for n in rng.sample(list(numbers), len(numbers))]
    while len(nodes) > 1:
        i = rng.randrange(len(nodes) - 1)
        nodes[i : i + 2] = [(rng.choice(ops), nodes[i], nodes[i + 1])]
    return nodes[0]


class CountdownTask(BaseTask):
    """Countdown problems "Numbers: a b c Target: t Answer:" -> " <expression>".

    Options: `n_numbers` (3 or 4), `min_number`/`max_number` (range of the given numbers, default
    1..20), `max_target` (default 200), `division` (allow exact "/", default False),
    `space_in_prompt` (see the module docstring; None = decide from the tokenizer).
    Checker: the first line of the generation (an optional trailing "= target" allowed) is an
    expression that `solves` the problem.
    """

    name = "countdown"
    kind = "global"

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        *,
        n_numbers: int = 3,
        min_number: int = 1,
        max_number: int = 20,
        max_target: int = 200,
        division: bool = False,
        space_in_prompt: bool | None = None,
    ) -> None:
        if n_numbers not in (3, 4):
            raise TaskError(f"countdown: n_numbers must be 3 or 4, got {n_numbers}.")
        if not 1 <= min_number < max_number:
            raise TaskError(f"countdown: need 1 <= min_number < max_number, got {min_number}, {max_number}.")
        if max_target < 10:
            raise TaskError(f"countdown: max_target must be >= 10, got {max_target}.")
        self.tokenizer = tokenizer
        self.n_numbers = n_numbers
        self.min_number = min_number
        self.max_number = max_number
        self.max_target = max_target
        self.ops = "+-*/" if division else "+-*"
        if space_in_prompt is None:
            space_in_prompt = tokenizer is not None and space_is_own_token(tokenizer, "Answer:", " 3")
        self.space_in_prompt = space_in_prompt

    def _value(self, tree: tuple) -> int | None:
        """The tree's value if it is a valid target (exact divisions, 1..max_target), else None.

        Exact divisions in the tree stay exact in its formatted text (the only regrouping the
        formatter does, a*(b/c) -> a*b/c, keeps an integer quotient integer), so `check` accepts
        every generated answer.
        """
        value = _tree_value(tree)
        if value is None or value.denominator != 1 or not 1 <= value <= self.max_target:
            return None
        return int(value)

    def _prompt(self, numbers: Sequence[int], target: int) -> str:
        head = f"Numbers: {' '.join(map(str, numbers))} Target: {target} Answer:"
        return head + " " if self.space_in_prompt else head

    def _sample(self, rng: random.Random) -> Example:
        while True:
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.n_numbers)]
            tree = _random_tree(rng, numbers, self.ops)
            target = self._value(tree)
            if target is None:
                continue
            answer = _format(tree)
            firsts = solutions_by_first_char(tuple(sorted(numbers)), self.ops, self.max_target)
            mine = firsts[target]
            candidates = [
                (len(mine.keys() & other.keys()), t2)
                for t2, other in firsts.items()
                if t2 != target and len(str(t2)) == len(str(target)) and _only(mine, other) and _only(other, mine)
            ]
            if not candidates:
                continue
            least = min(c for c, _ in candidates)
            t2 = rng.choice(sorted(t for c, t in candidates if c == least))
            theirs = firsts[t2]
            lead = "" if self.space_in_prompt else " "
            return Example(
                task=self.name,
                prompt=self._prompt(numbers, target),
                answer=lead + answer,
                corrupted_prompt=self._prompt(numbers, t2),
                correct=tuple(lead + mine[c] for c in _only(mine, theirs)),
                counterfactual=tuple(lead + theirs[c] for c in _only(theirs, mine)),
                meta={"numbers": tuple(numbers), "target": target, "ops": self.ops, "corrupted_target": t2},
            )

    def check(self, example: Example, generated: str) -> bool:
        """True if the generation's first line is an expression reaching the target."""
        line = generated.strip().split("\n", 1)[0].strip() if generated.strip() else ""
        if "=" in line:
            line, rhs = line.split("=", 1)
            if rhs.strip() != str(example.meta["target"]):
                return False
        return solves(line, example.meta["numbers"], example.meta["target"], example.meta["ops"])
