"""Multi-step arithmetic with step-by-step gold solutions.

A problem is a chain such as ``12+7-3`` evaluated left to right. The gold
solution writes one step per line and ends with the answer::

    12+7=19
    19-3=16
    answer: 16

Knobs: number of operations, digits of the first and of the later operands,
the operator set, and the number of surface templates the question is phrased
in (the prompt-diversity axis). Train and test splits are disjoint: a problem
belongs to the split its expression hashes to, whatever template phrases it.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from .base import Example

TEMPLATES = [
    "{expr}=?",
    "what is {expr}?",
    "compute {expr}",
    "solve: {expr}",
    "evaluate {expr}",
    "{expr} equals?",
    "calc {expr}",
    "find {expr}",
]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
STEP_RE = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")
ANSWER_RE = re.compile(r"^answer: (-?\d+)$")
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ArithmeticTask:
    """Left-to-right arithmetic chains with `n_ops` operations."""

    n_ops: int = 2
    first_digits: int = 2
    digits: int = 1
    operators: str = "+-"
    n_templates: int = 4
    seed: int = 0
    name: str = "arithmetic"

    # ---- problems -------------------------------------------------------
    def _operand(self, rng: random.Random, n_digits: int) -> int:
        low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
        return rng.randint(low, 10**n_digits - 1)

    def _problem(self, rng: random.Random) -> tuple[list[int], list[str]]:
        operands = [self._operand(rng, self.first_digits)]
        operands += [self._operand(rng, self.digits) for _ in range(self.n_ops)]
        ops = [rng.choice(self.operators) for _ in range(self.n_ops)]
        return operands, ops

    @staticmethod
    def _split_of(expr: str) -> str:
        h = int(hashlib.sha256(expr.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return "test" if h < TEST_FRACTION else "train"

    def examples(self, split: str, n: int) -> list[Example]:
        """`n` distinct problems of `split` ("train" or "test"), deterministic in the task's knobs."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', found {split!r}")
        rng = random.Random(f"arithmetic-{self.seed}-{split}")
        seen: set[str] = set()
        out: list[Example] = []
        for _ in range(50 * n + 1000):
            if len(out) == n:
                break
            operands, ops = self._problem(rng)
            expr = str(operands[0]) + "".join(f"{o}{b}" for o, b in zip(ops, operands[1:]))
            if expr in seen or self._split_of(expr) != split:
                continue
            seen.add(expr)
            template = TEMPLATES[rng.randrange(self.n_templates)]
            out.append(self._example(template.format(expr=expr) + "\n", operands, ops))
        return out

    @staticmethod
    def _example(prompt: str, operands: list[int], ops: list[str]) -> Example:
        value, lines = operands[0], []
        for op, b in zip(ops, operands[1:]):
            new = OPS[op](value, b)
            lines.append(f"{value}{op}{b}={new}")
            value = new
        lines.append(f"answer: {value}")
        meta = {"operands": tuple(operands), "ops": tuple(ops)}
        return Example(prompt=prompt, solution="\n".join(lines), answer=str(value), meta=meta)

    # ---- verifier and step checker ---------------------------------------
    def extract_answer(self, response: str) -> str | None:
        for line in response.split("\n"):
            m = ANSWER_RE.match(line.strip())
            if m:
                return m.group(1)
        return None

    def score(self, example: Example, response: str) -> float:
        """1.0 when the response's final answer equals the gold answer, else 0.0."""
        return float(self.extract_answer(response) == example.answer)

    def split_steps(self, response: str) -> list[str]:
        """Non-empty lines up to and including the first ``answer:`` line."""
        steps = []
        for line in response.split("\n"):
            if line.strip():
                steps.append(line)
                if ANSWER_RE.match(line.strip()):
                    break
        return steps

    def step_labels(self, example: Example, response: str) -> list[bool]:
        """Gold process labels: step i is correct while every line so far is right.

        A computation line ``a op b = c`` is right when ``a`` is the previous
        line's result (the first operand on line 1), ``op b`` is the next
        operation of the problem and ``c`` is the true value of ``a op b``. The
        answer line is right when it comes after exactly `n_ops` lines and
        repeats the last result.
        """
        operands, ops = example.meta["operands"], example.meta["ops"]
        labels: list[bool] = []
        value, ok = operands[0], True
        for i, line in enumerate(self.split_steps(response)):
            answer = ANSWER_RE.match(line.strip())
            if answer:
                ok = ok and i == len(ops) and int(answer.group(1)) == value
            else:
                m = STEP_RE.match(line.strip())
                ok = ok and m is not None and i < len(ops)
                if ok:
                    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                    ok = a == value and op == ops[i] and b == operands[i + 1] and OPS[op](a, b) == c
                    value = c
            labels.append(ok)
        return labels

    def max_solution_chars(self) -> int:
        """An upper bound on a gold solution's length in characters (sizes the sampling budget)."""
        bound = 10**self.first_digits
        for _ in range(self.n_ops):
            bound = bound * 10**self.digits if "*" in self.operators else bound + 10**self.digits
        width = len(str(-bound))
        line = width + 1 + self.digits + 1 + width + 1  # "a" "op" "b" "=" "c" "\n"
        return self.n_ops * line + len("answer: ") + width
