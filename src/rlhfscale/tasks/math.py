"""Math word problems from files: GSM8K and MATH / NuminaMath shapes, verified by `math-verify`.

Row shapes (JSON Lines, ``.jsonl.gz``, or a `datasets` folder; see `tasks.records`):

- GSM8K: ``{"question": str, "answer": str}``; the answer's last line is ``#### <number>`` and its
  steps carry calculator annotations ``<<48/2=24>>``, stripped from the solution (their results,
  those of the equations written out in the steps, and the final answer are kept in
  ``meta["results"]`` for step labels);
- MATH / NuminaMath: ``{"problem": str, "solution": str, "answer"?: str}``; the reference answer is
  the ``answer`` field when present, else the content of the solution's last ``\\boxed{...}``.

Each row becomes an `Example`: prompt ``"Question: <question>\\nAnswer:\\n"``, solution the
data's steps one per line (``step_split="line"``) or blank-line separated blocks
(``step_split="paragraph"``), answer the canonical reference answer. Bad rows raise `BadInput`
with one line, e.g. ``gsm8k.jsonl line 7: field 'answer': expected text ending in
'#### <number>', found '...'``.

`MathTask(train, test)` implements the `Task` protocol over a train and a test file; scoring is
`is_equivalent(extract_answer(response), example.answer)`. Step labels: see `MathTask.step_labels`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rlhfscale.errors import BadInput

from . import records as rec
from .base import Example
from .math_answers import canonical, extract_answer, is_equivalent, last_boxed, plain_number

__all__ = ["MathTask", "load_math", "is_equivalent", "extract_answer", "strip_annotations"]

ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
FINAL_RE = re.compile(r"^\s*####\s*(.+?)\s*$")
EQUATION_RE = re.compile(r"([\d$(][\d\s$.,()+\-*/x×÷]*?[\d)])\s*=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
ANSWER_LINE_RE = re.compile(r"####|\\boxed|answer is", re.IGNORECASE)
STEP_SPLITS = ("line", "paragraph")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def strip_annotations(text: str) -> str:
    """GSM8K text without its calculator annotations: ``2*3=<<2*3=6>>6`` -> ``2*3=6``."""
    return ANNOTATION_RE.sub("", text)


def prompt_of(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:\n"


def load_math(source: rec.Source, step_split: str = "line", split: str | None = None) -> list[Example]:
    """The examples of a GSM8K- or MATH-shaped file (formats in the module docstring), in file order."""
    if step_split not in STEP_SPLITS:
        raise ValueError(f"step_split must be one of {STEP_SPLITS}, found {step_split!r}")
    out = []
    for where, row in rec.records(source, split):
        if "question" in row:
            out.append(gsm8k_example(where, row, step_split))
        elif "problem" in row:
            out.append(_math_example(where, row, step_split))
        else:
            found = ", ".join(repr(k) for k in row) or "none"
            raise BadInput(f"{where}: expected fields 'question' and 'answer' (GSM8K) or 'problem' and "
                           f"'solution' (MATH), found fields {found}")
    return out


def _steps(text: str, step_split: str) -> list[str]:
    if step_split == "line":
        return [line.strip() for line in text.split("\n") if line.strip()]
    return [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]


def _join(steps: list[str], step_split: str) -> str:
    return ("\n" if step_split == "line" else "\n\n").join(steps)


def gsm8k_example(where: str, row: Mapping[str, Any], step_split: str) -> Example:
    question, answer = rec.text(where, row, "question"), rec.text(where, row, "answer")
    lines = [line for line in answer.strip().split("\n")]
    final = FINAL_RE.match(lines[-1])
    value = canonical(final.group(1)) if final else ""
    if not final or plain_number(value) is None:
        raise BadInput(f"{where}: field 'answer': expected text ending in '#### <number>', "
                       f"found {rec.shorten(lines[-1])}")
    body = strip_annotations("\n".join(lines[:-1]))
    annotated = [m.rsplit("=", 1)[1].strip() for m in ANNOTATION_RE.findall(answer) if "=" in m]
    results = list(dict.fromkeys(canonical(r) for r in annotated + _results(body) + [value]))
    steps = _steps(body, step_split) + [f"#### {value}"]
    return Example(prompt_of(question), _join(steps, step_split), value,
                   {"shape": "gsm8k", "results": results})


def _math_example(where: str, row: Mapping[str, Any], step_split: str) -> Example:
    problem, solution = rec.text(where, row, "problem"), rec.text(where, row, "solution")
    if row.get("answer") not in (None, ""):
        given = row["answer"]
        if not isinstance(given, (str, int, float)) or isinstance(given, bool):
            raise BadInput(f"{where}: field 'answer': expected a string or a number, found {rec.kind(given)}")
        answer = canonical(str(given))
    else:
        boxed = last_boxed(solution)
        if boxed is None or not boxed.strip():
            raise BadInput(f"{where}: field 'solution': expected text containing \\boxed{{<answer>}}, "
                           f"found {rec.shorten(solution[-60:])}")
        answer = canonical(boxed)
    return Example(prompt_of(problem), _join(_steps(solution, step_split), step_split), answer,
                   {"shape": "math", "results": []})


class MathTask:
    """The `Task` protocol over a train file and a test file of math problems.

    train, test: paths (`load_math` formats); step_split: "line" or "paragraph"; train examples
    whose prompt also occurs in the test file are dropped, so the splits are disjoint.
    ``examples(split, n)`` is the first `n` examples of the split in file order (all of them when
    the file has fewer).
    """

    def __init__(self, train: rec.Source, test: rec.Source, step_split: str = "line", name: str = "math",
                 timeout_s: float = 3.0) -> None:
        self.name, self.step_split, self.timeout_s = name, step_split, timeout_s
        self._test = load_math(test, step_split, split="test")
        held_out = {e.prompt for e in self._test}
        self._train = [e for e in load_math(train, step_split, split="train") if e.prompt not in held_out]

    @classmethod
    def from_examples(cls, train: list[Example], test: list[Example], step_split: str = "line", name: str = "math",
                      timeout_s: float = 3.0) -> "MathTask":
        """A task over examples already built (`gsm8k_example` rows), split as given."""
        task = cls.__new__(cls)
        task.name, task.step_split, task.timeout_s = name, step_split, timeout_s
        held_out = {e.prompt for e in test}
        task._test, task._train = list(test), [e for e in train if e.prompt not in held_out]
        return task

    def examples(self, split: str, n: int) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', found {split!r}")
        return (self._train if split == "train" else self._test)[:n]

    def extract_answer(self, response: str) -> str | None:
        return extract_answer(response)

    def score(self, example: Example, response: str) -> float:
        """1.0 when the response's final answer is equivalent to the reference answer, else 0.0."""
        answer = self.extract_answer(response)
        return float(answer is not None and is_equivalent(answer, example.answer, self.timeout_s))

    def split_steps(self, response: str) -> list[str]:
        """Non-empty lines (or blank-line separated blocks) up to and including the first ``####`` step."""
        steps = []
        for step in _steps(response, self.step_split):
            steps.append(step)
            if "####" in step:
                break
        return steps

    def step_labels(self, example: Example, response: str) -> list[bool]:
        """Process labels, one per step: True while every step so far is right.

        With a reference that has calculator results (GSM8K, the miniature problems) a step is
        right when every equation ``a op b = c`` in it is arithmetically true (up to the rounding
        its result shows) and its last result is one of the reference's intermediate results; a
        step stating the final answer (``####``, ``\\boxed``, "answer is") is right when the answer
        is; other steps (narration) are neutral. An approximation of human labels: a correct path
        through other intermediate values is labelled wrong. Without reference results (MATH
        shape) every step gets the outcome label, ``score == 1``; use Monte-Carlo labels
        (`stages.label`) for real process supervision there.
        """
        steps = self.split_steps(response)
        raw = example.meta.get("results")
        if raw is None:  # e.g. an Example built elsewhere: read the equations of its solution
            raw = [] if example.meta.get("shape") == "math" else _results(example.solution)
        results = [v for v in map(_number, raw) if v is not None]
        if not results:
            return [self.score(example, response) >= 1.0] * len(steps)
        labels, ok = [], True
        for step in steps:
            if ANSWER_LINE_RE.search(step):
                found = extract_answer(step)
                ok = ok and found is not None and is_equivalent(found, example.answer, self.timeout_s)
            else:
                ok = ok and _step_is_right(step, results)
            labels.append(ok)
        return labels

    def max_solution_chars(self) -> int:
        """The longest gold solution in characters (sizes the sampling budget)."""
        return max(len(e.solution) for e in self._train + self._test)


# ---- checking equations in a step -----------------------------------------------------------------
def _results(solution: str) -> list[str]:
    return [rhs for _, rhs in EQUATION_RE.findall(solution)]


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").replace("$", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def _close(a: Fraction, b: Fraction, shown: str) -> bool:
    """a == b up to the rounding of `shown` (b's text): half a unit of its last decimal."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(a - b) <= Fraction(1, 2 * 10**decimals)


def _step_is_right(step: str, results: list[Fraction]) -> bool:
    equations = [(lhs, rhs) for lhs, rhs in EQUATION_RE.findall(step) if re.search(r"[-+*/x×÷]", lhs.strip()[1:])]
    last = None
    for lhs, rhs in equations:
        value, shown = _evaluate(lhs), _number(rhs)
        if value is None or shown is None:
            continue  # not an arithmetic expression after all
        if not _close(value, shown, rhs):
            return False
        last = (shown, rhs)
    return last is None or any(_close(r, *last) for r in results)


def _evaluate(expression: str) -> Fraction | None:
    """The exact value of ``1,200 x 3 + (4 - 2)/5``-style arithmetic, or None if it is not that."""
    text = expression.replace("$", "").replace(",", "").replace("×", "*").replace("x", "*").replace("÷", "/")
    if len(text) > 200:
        return None
    try:
        return _eval(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, KeyError, TypeError):
        return None


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError("not arithmetic")
