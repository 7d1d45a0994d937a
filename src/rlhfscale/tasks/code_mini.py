"""Miniature code task: write a one-line Python expression in x from a few input/output examples.

A problem shows a hidden integer function on `n_shown` inputs; the gold response is the function::

    prompt:   "f(1)=3 f(2)=5 f(5)=11\\n"
    solution: "f(x)=2*x+1"

The functions come from a small grammar (``a*x+b``, ``a*x-b``, ``x*x+b``, ``x*x+a*x``,
``(x+a)*b``, ``x//a+b``, ``x%a+b``) with 1-digit constants. The score of a response is the fraction
of `n_hidden` unshown inputs on which its expression gives the function's value, evaluated in
`rlhfscale.sandbox` only. `score_batch` evaluates many responses in one sandboxed process: the
expressions and inputs go in as JSON on stdin (never spliced into the program), each expression
reports its values on its own line as soon as it is done, and when the process dies or times
out, the expression it was on scores 0 and the unreported rest are retried in a fresh process.
Train and test are disjoint by construction: a function belongs to the split its canonical text
hashes to, whatever inputs show it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfscale import sandbox

from .base import Example

FAMILIES = ["{a}*x+{b}", "{a}*x-{b}", "x*x+{b}", "x*x+{a}*x", "(x+{a})*{b}", "x//{a}+{b}", "x%{a}+{b}"]
TEST_FRACTION = 0.2
MAX_EXPRESSION_CHARS = 200
EVALUATOR = """import json, sys
jobs = json.loads(sys.stdin.read())
for i, (expr, xs) in enumerate(jobs):
    values = []
    try:
        code = compile(expr, "<expression>", "eval")
    except Exception:
        code = None
    for x in xs:
        try:
            v = eval(code, {"__builtins__": {}}, {"x": x}) if code is not None else None
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e15
            values.append(v if ok else None)
        except Exception:
            values.append(None)
    print(json.dumps([i, values]), flush=True)
"""
SAFE_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def gold_value(expression: str, x: int) -> int:
    """The value of one of our own grammar's expressions at x, without eval (data files may be edited)."""
    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Name) and node.id == "x":
            return x
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in SAFE_OPS:
            return SAFE_OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not a miniature expression: {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def response_expression(response: str) -> str:
    """The expression of a response: its first line without the leading ``f(x)=``."""
    line = response.strip().split("\n", 1)[0].strip()
    return line[len("f(x)="):].strip() if line.startswith("f(x)=") else line


@dataclass(frozen=True)
class MiniCodeTask:
    """Expressions in x from examples; `n_shown` inputs in 1..9 shown, `n_hidden` in 0..15 scored."""

    n_shown: int = 3
    n_hidden: int = 4
    seed: int = 0
    timeout_s: float = 2.0
    name: str = "code-mini"

    # ---- problems -------------------------------------------------------------------------------
    @staticmethod
    def _split_of(expression: str) -> str:
        h = int(hashlib.sha256(expression.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return "test" if h < TEST_FRACTION else "train"

    @staticmethod
    def _function(rng: random.Random) -> str:
        family = rng.choice(FAMILIES)
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        return family.format(a=a, b=b)

    def examples(self, split: str, n: int) -> list[Example]:
        """`n` distinct (function, shown inputs) problems of `split`, deterministic in the task's knobs."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', found {split!r}")
        rng = random.Random(f"code-mini-{self.seed}-{split}")
        seen: set[str] = set()
        out: list[Example] = []
        for _ in range(50 * n + 1000):
            if len(out) == n:
                break
            expression = self._function(rng)
            shown = sorted(rng.sample(range(1, 10), self.n_shown))
            hidden = sorted(rng.sample([v for v in range(0, 16) if v not in shown], self.n_hidden))
            prompt = " ".join(f"f({x})={gold_value(expression, x)}" for x in shown) + "\n"
            if prompt in seen or self._split_of(expression) != split:
                continue
            seen.add(prompt)
            out.append(Example(prompt, f"f(x)={expression}", expression, {"shown": shown, "hidden": hidden}))
        return out

    # ---- verifier ---------------------------------------------------------------------------------
    def extract_answer(self, response: str) -> str | None:
        expression = response_expression(response).replace(" ", "")
        return expression or None

    def score(self, example: Example, response: str) -> float:
        """The fraction of the hidden inputs on which the response's expression is right."""
        return self.score_batch([example], [response])[0]

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
        """`score` of many pairs with as few sandboxed processes as possible (see the module docstring)."""
        targets = [[gold_value(e.answer, x) for x in e.meta["hidden"]] for e in examples]
        jobs = [[response_expression(r), e.meta["hidden"]] for e, r in zip(examples, responses, strict=True)]
        values: dict[int, list] = {}
        pending = [i for i, (expr, _) in enumerate(jobs) if expr and len(expr) <= MAX_EXPRESSION_CHARS]
        for _ in range(3):
            if not pending:
                break
            reported = self._evaluate([jobs[i] for i in pending])
            values |= {pending[k]: v for k, v in reported.items()}
            left = [i for i in pending if i not in values]
            pending = left[1:]  # the first unreported expression killed the process: it scores 0
        return [sum(v == t for v, t in zip(values[i], targets[i])) / len(targets[i]) if i in values else 0.0
                for i in range(len(jobs))]

    def _evaluate(self, jobs: list[list]) -> dict[int, list]:
        """{job index: values} for the jobs the sandboxed evaluator reported before it ended."""
        result = sandbox.run(EVALUATOR, stdin=json.dumps(jobs), timeout_s=self.timeout_s)
        reported: dict[int, list] = {}
        for line in result.stdout.splitlines():
            try:
                i, values = json.loads(line)
            except (ValueError, TypeError):
                continue
            if isinstance(i, int) and 0 <= i < len(jobs) and i not in reported and isinstance(values, list) \
                    and len(values) == len(jobs[i][1]):
                reported[i] = values
        return reported

    def split_steps(self, response: str) -> list[str]:
        """One step: the expression line."""
        line = response.strip().split("\n", 1)[0]
        return [line] if line.strip() else []

    def step_labels(self, example: Example, response: str) -> list[bool]:
        """The single step is right when the expression is right on every hidden input."""
        return [self.score(example, response) >= 1.0] * len(self.split_steps(response))

    def max_solution_chars(self) -> int:
        """An upper bound on a gold solution's length: ``f(x)=`` and the longest family."""
        return len("f(x)=") + max(len(f.format(a=9, b=9)) for f in FAMILIES)
