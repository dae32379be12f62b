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

Corruption: a different target with the same number of digits, reached by another expression over
the same numbers whose first character differs from the reference's (so the first answer tokens
differ). The counterfactual is that expression.

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
from typing import no_type_check

from common.errors import TaskError
from tasks.base import BaseTask, Example, Tokenizer, space_is_own_token

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
            for _ in range(200):
                other = _random_tree(rng, numbers, self.ops)
                t2 = self._value(other)
                alt = _format(other) if t2 is not None else ""
                if t2 is not None and t2 != target and len(str(t2)) == len(str(target)) and alt[0] != answer[0]:
                    break
            else:
                continue
            lead = "" if self.space_in_prompt else " "
            return Example(
                task=self.name,
                prompt=self._prompt(numbers, target),
                answer=lead + answer,
                corrupted_prompt=self._prompt(numbers, t2),
                correct=(lead + answer,),
                counterfactual=(lead + alt,),
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
