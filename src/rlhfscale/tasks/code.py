"""Code tasks from files: HumanEval-shaped function problems and APPS / CodeContests stdin-stdout problems.

Row shapes (JSON Lines, ``.jsonl.gz`` or a `datasets` folder; see `tasks.records`):

- HumanEval: ``{"task_id", "prompt", "canonical_solution", "test", "entry_point"}``; `test` defines
  ``check(candidate)``. A completion is run as
  ``prompt + completion + "\\n" + test + "\\ncheck(<entry_point>)"``.
- APPS: ``{"question", "input_output": "<JSON {\\"inputs\\": [...], \\"outputs\\": [...]}>",
  "solutions"?: "<JSON list of programs>"}``; call-based APPS problems (``fn_name``) are refused.
- CodeContests and the like: a statement in ``"description"`` (or ``"question"``/``"problem"``)
  with tests as ``"tests": [{"input", "output"}, ...]`` or ``"public_tests"`` / ``"private_tests"`` /
  ``"generated_tests"``: ``{"input": [...], "output": [...]}``; optional ``"solution"``.

Rewards come only from running code in `rlhfscale.sandbox`: for stdin/stdout problems the
fraction of tests whose output matches (whitespace-separated tokens compared), or 1.0 / 0.0
when all must pass (``all_pass=True``); a HumanEval problem passes when ``check`` returns.
`CodeTask(train, test)` implements the `Task` protocol; `MiniCodeTask` (``tasks.code_mini``) is the
miniature version for tiny models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfscale import sandbox
from rlhfscale.errors import BadInput

from . import records as rec
from .base import Example

__all__ = ["CodeProblem", "CodeTask", "MiniCodeTask", "load_code", "program_for", "code_reward", "code_rewards"]

FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
STATEMENT_FIELDS = ("question", "description", "problem")
TEST_FIELDS = ("public_tests", "private_tests", "generated_tests")


@dataclass(frozen=True)
class CodeProblem:
    """One problem: `kind` "function" (HumanEval: `test`, `entry_point`) or "stdio" (`io` pairs)."""

    task_id: str
    prompt: str
    kind: str
    test: str = ""
    entry_point: str = ""
    io: tuple[tuple[str, str], ...] = ()
    solution: str = ""  # a reference solution ("" when the data has none)


def load_code(source: rec.Source, split: str | None = None) -> list[CodeProblem]:
    """The problems of a HumanEval-, APPS- or CodeContests-shaped file, in file order."""
    out = []
    for where, row in rec.records(source, split):
        if "entry_point" in row:
            out.append(_function_problem(where, row))
        elif any(name in row for name in STATEMENT_FIELDS):
            out.append(_stdio_problem(where, row, len(out)))
        else:
            found = ", ".join(repr(k) for k in row) or "none"
            raise BadInput(f"{where}: expected HumanEval fields ('prompt', 'test', 'entry_point') or a "
                           f"statement ('question' / 'description') with tests, found fields {found}")
    return out


def _function_problem(where: str, row: Mapping[str, Any]) -> CodeProblem:
    entry = rec.text(where, row, "entry_point")
    if not entry.isidentifier():
        raise BadInput(f"{where}: field 'entry_point': expected a Python identifier, found {rec.shorten(entry)}")
    test = rec.text(where, row, "test")
    if "def check(" not in test:
        raise BadInput(f"{where}: field 'test': expected code defining check(candidate), found {rec.shorten(test)}")
    solution = row.get("canonical_solution") or ""
    if not isinstance(solution, str):
        raise BadInput(f"{where}: field 'canonical_solution': expected a string, found {rec.kind(solution)}")
    task_id = row.get("task_id") or where
    return CodeProblem(str(task_id), rec.text(where, row, "prompt"), "function", test, entry, (), solution)


def _stdio_problem(where: str, row: Mapping[str, Any], index: int) -> CodeProblem:
    name = next(n for n in STATEMENT_FIELDS if n in row)
    statement = rec.text(where, row, name)
    io = _io_pairs(where, row)
    if not io:
        raise BadInput(f"{where}: expected at least one test ('input_output', 'tests' or 'public_tests'), found none")
    prompt = f"{statement.strip()}\n\nWrite a Python 3 program that reads standard input and prints the answer.\n"
    task_id = row.get("task_id") or row.get("problem_id") or row.get("name") or f"problem {index}"
    return CodeProblem(str(task_id), prompt, "stdio", io=tuple(io), solution=_solution(where, row))


def _io_pairs(where: str, row: Mapping[str, Any]) -> list[tuple[str, str]]:
    if "input_output" in row:  # APPS: a JSON string
        value = row["input_output"]
        try:
            spec = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: field 'input_output': expected a JSON string, found invalid JSON ({e.msg})") from None
        if isinstance(spec, Mapping) and spec.get("fn_name"):
            raise BadInput(f"{where}: field 'input_output': expected stdin/stdout tests, found a call-based "
                           f"problem (fn_name {spec['fn_name']!r}), which is not supported")
        if not isinstance(spec, Mapping):
            raise BadInput(f"{where}: field 'input_output': expected an object, found {rec.kind(spec)}")
        return _pairs(where, "input_output", spec.get("inputs"), spec.get("outputs"))
    pairs = []
    if "tests" in row:
        tests = row["tests"]
        if not isinstance(tests, list) or not all(isinstance(t, Mapping) for t in tests):
            raise BadInput(f"{where}: field 'tests': expected a list of {{'input', 'output'}} objects, found {rec.kind(tests)}")
        pairs += _pairs(where, "tests", [t.get("input") for t in tests], [t.get("output") for t in tests])
    for name in TEST_FIELDS:
        if row.get(name):
            spec = row[name]
            if not isinstance(spec, Mapping):
                raise BadInput(f"{where}: field {name!r}: expected an object with 'input' and 'output' lists, found {rec.kind(spec)}")
            pairs += _pairs(where, name, spec.get("input"), spec.get("output"))
    return pairs


def _pairs(where: str, name: str, inputs: Any, outputs: Any) -> list[tuple[str, str]]:
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise BadInput(f"{where}: field {name!r}: expected equally long lists of inputs and outputs, "
                       f"found {rec.kind(inputs)} and {rec.kind(outputs)}")
    pairs = []
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        y = "\n".join(y) if isinstance(y, list) and all(isinstance(s, str) for s in y) else y
        if not isinstance(x, str) or not isinstance(y, str):
            raise BadInput(f"{where}: field {name!r} test {i}: expected string input and output, "
                           f"found {rec.kind(x)} and {rec.kind(y)}")
        pairs.append((x, y))
    return pairs


def _solution(where: str, row: Mapping[str, Any]) -> str:
    value = row.get("solution") or row.get("solutions") or ""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(value, Mapping):  # CodeContests: {"language": [...], "solution": [...]}
        value = value.get("solution") or []
    if isinstance(value, list):
        value = next((s for s in value if isinstance(s, str)), "")
    return value if isinstance(value, str) else ""


# ---- rewards ---------------------------------------------------------------------------------------
def extract_code(response: str) -> str:
    """The code in a response: the first fenced block when there is one, else the response itself."""
    m = FENCE_RE.search(response)
    return m.group(1) if m else response


def program_for(problem: CodeProblem, response: str) -> str:
    """The program to run for a response. Function problems append the tests and ``check(entry_point)``.

    A response that defines the entry point itself replaces the prompt's stub (the prompt is kept
    above it for its imports); otherwise it is the body that continues the prompt.
    """
    code = extract_code(response)
    if problem.kind == "stdio":
        return code
    body = problem.prompt + "\n" + code if f"def {problem.entry_point}(" in code else problem.prompt + code
    return f"{body}\n{problem.test}\ncheck({problem.entry_point})\n"


def outputs_match(got: str, expected: str) -> bool:
    """Whether two outputs agree token by token (runs of whitespace and trailing newlines ignored)."""
    return got.split() == expected.split()


def code_rewards(problems: Sequence[CodeProblem], responses: Sequence[str], all_pass: bool = False,
                 timeout_s: float = 2.0, memory_mb: int = 256, max_workers: int | None = None) -> list[float]:
    """The reward of each (problem, response): the fraction of tests passed, or 1/0 with `all_pass`.

    Every program of every pair goes through one bounded `sandbox.run_many` pool.
    """
    jobs, owners = [], []
    for k, (problem, response) in enumerate(zip(problems, responses, strict=True)):
        program = program_for(problem, response)
        tests = problem.io if problem.kind == "stdio" else [("", "")]
        for stdin, expected in tests:
            jobs.append((program, stdin))
            owners.append((k, expected))
    results = sandbox.run_many(jobs, max_workers=max_workers, timeout_s=timeout_s, memory_mb=memory_mb)
    passed, total = [0] * len(problems), [0] * len(problems)
    for (k, expected), result in zip(owners, results):
        total[k] += 1
        ok = result.ok if problems[k].kind == "function" else result.ok and outputs_match(result.stdout, expected)
        passed[k] += ok
    return [float(p == t) if all_pass else p / t for p, t in zip(passed, total)]


def code_reward(problem: CodeProblem, response: str, all_pass: bool = False, timeout_s: float = 2.0) -> float:
    """`code_rewards` of one response."""
    return code_rewards([problem], [response], all_pass, timeout_s)[0]


class CodeTask:
    """The `Task` protocol over a train file and a test file of code problems (`load_code` formats).

    The prompt is the problem's prompt (HumanEval: signature and docstring, so a response is the
    function body); the solution is the reference solution ("" when the data has none); there is
    no final answer (`extract_answer` is None, so majority voting is skipped). Train problems whose
    prompt also occurs in the test file are dropped. Steps are non-empty lines; there are no gold
    step labels for code, so `step_labels` gives every step the outcome label (``score == 1``).
    """

    def __init__(self, train: rec.Source, test: rec.Source, all_pass: bool = False, timeout_s: float = 2.0,
                 name: str = "code") -> None:
        self.name, self.all_pass, self.timeout_s = name, all_pass, timeout_s
        test_problems = load_code(test, split="test")
        held_out = {p.prompt for p in test_problems}
        train_problems = [p for p in load_code(train, split="train") if p.prompt not in held_out]
        self._splits = {"train": train_problems, "test": test_problems}
        self._by_prompt = {p.prompt: p for p in train_problems + test_problems}

    def problem(self, example: Example) -> CodeProblem:
        return self._by_prompt[example.prompt]

    def examples(self, split: str, n: int) -> list[Example]:
        """The first `n` problems of `split` (all of them when there are fewer)."""
        if split not in self._splits:
            raise ValueError(f"split must be 'train' or 'test', found {split!r}")
        return [Example(p.prompt, p.solution, "", {"task_id": p.task_id}) for p in self._splits[split][:n]]

    def score(self, example: Example, response: str) -> float:
        return self.score_batch([example], [response])[0]

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
        """`score` of many pairs at once, run in parallel in the sandbox."""
        return code_rewards([self.problem(e) for e in examples], responses, self.all_pass, self.timeout_s)

    def extract_answer(self, response: str) -> str | None:
        return None

    def split_steps(self, response: str) -> list[str]:
        return [line for line in response.split("\n") if line.strip()]

    def step_labels(self, example: Example, response: str) -> list[bool]:
        return [self.score(example, response) >= 1.0] * len(self.split_steps(response))

    def max_solution_chars(self) -> int:
        """The longest reference solution (1024 when the data has none)."""
        return max((len(p.solution) for p in self._by_prompt.values()), default=0) or 1024


from .code_mini import MiniCodeTask  # noqa: E402 - re-exported; code_mini does not import this module
