"""Code tasks: HumanEval and APPS / CodeContests loaders, sandboxed rewards, CodeTask, the miniature code task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfscale.errors import BadInput
from rlhfscale.tasks.code import CodeTask, MiniCodeTask, code_reward, code_rewards, load_code, program_for
from rlhfscale.tasks.code_mini import gold_value
from rlhfscale.tasks.math_gen import write_jsonl

HUMANEVAL = Path(__file__).parent / "data" / "humaneval_sample.jsonl"

SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
APPS_ROW = {"problem_id": 7, "question": "Print the sum of two integers.",
            "input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n", "0 0\n"], "outputs": ["3\n", "7\n", "0\n"]}),
            "solutions": json.dumps([SUM_PROGRAM])}


@pytest.fixture(scope="module")
def humaneval():
    return load_code(HUMANEVAL)


def test_every_canonical_humaneval_solution_passes_its_tests(humaneval):
    assert [p.task_id for p in humaneval] == [f"HumanEval/{i}" for i in range(10)]
    assert code_rewards(humaneval, [p.solution for p in humaneval]) == [1.0] * 10


def test_empty_and_wrong_bodies_fail(humaneval):
    wrong = ["    return None\n", "    return []\n", "    return 0\n"]
    rewards = code_rewards(humaneval * 2, ["    pass\n"] * 10 + [wrong[i % 3] for i in range(10)])
    assert rewards == [0.0] * 20


def test_a_full_definition_in_a_fence_replaces_the_stub(humaneval):
    problem = humaneval[2]  # truncate_number(number: float) -> float: the decimal part
    response = "Here you go:\n```python\ndef truncate_number(number):\n    return number % 1.0\n```\n"
    assert "check(truncate_number)" in program_for(problem, response)
    assert code_reward(problem, response) == 1.0
    assert code_reward(problem, response.replace("% 1.0", "// 1.0")) == 0.0


def test_apps_shape_counts_the_fraction_of_tests_passed(tmp_path):
    [problem] = load_code(write_jsonl([APPS_ROW], tmp_path / "apps.jsonl"))
    assert problem.kind == "stdio" and len(problem.io) == 3 and problem.solution == SUM_PROGRAM
    assert problem.prompt.startswith("Print the sum of two integers.") and problem.prompt.endswith("\n")
    wrong_on_negatives = "a, b = map(int, input().split())\nprint(abs(a) + abs(b))\n"
    assert code_rewards([problem] * 4, [SUM_PROGRAM, wrong_on_negatives, "print(", "while True: pass"],
                        timeout_s=1.0) == [1.0, pytest.approx(2 / 3), 0.0, 0.0]
    assert code_reward(problem, wrong_on_negatives, all_pass=True) == 0.0
    assert code_reward(problem, "```python\n" + SUM_PROGRAM + "```", all_pass=True) == 1.0


def test_codecontests_and_tests_list_shapes(tmp_path):
    rows = [{"name": "double", "description": "Double n.",
             "public_tests": {"input": ["2\n"], "output": ["4\n"]},
             "private_tests": {"input": ["5\n", "0\n"], "output": ["10\n", "0\n"]}},
            {"problem": "Echo a line.", "tests": [{"input": "hi\n", "output": "hi"}, {"input": "a b\n", "output": "a  b\n"}]}]
    double, echo = load_code(write_jsonl(rows, tmp_path / "cc.jsonl"))
    assert (double.task_id, len(double.io), len(echo.io)) == ("double", 3, 2)
    assert code_rewards([double, echo], ["print(2 * int(input()))", "print(input())"]) == [1.0, 1.0]


@pytest.mark.parametrize(("row", "expected"), [
    ({"question": "q", "input_output": "{not json"}, "field 'input_output': expected a JSON string, found invalid JSON"),
    ({"question": "q", "input_output": json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [[2]]})},
     "found a call-based problem (fn_name 'f')"),
    ({"question": "q", "input_output": json.dumps({"inputs": ["1"], "outputs": []})},
     "expected equally long lists of inputs and outputs"),
    ({"question": "q"}, "expected at least one test"),
    ({"task_id": "t", "prompt": "def f():\n", "test": "assert True", "entry_point": "f"},
     "field 'test': expected code defining check(candidate)"),
    ({"task_id": "t", "test": "def check(c): pass", "entry_point": "f"}, "expected a field 'prompt'"),
    ({"title": "x"}, "expected HumanEval fields"),
])
def test_bad_lines_raise_one_line_naming_file_and_line(tmp_path, row, expected):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps(APPS_ROW) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(BadInput) as err:
        load_code(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path} line 2: ") and expected in message


def test_code_task_protocol(tmp_path):
    task = CodeTask(write_jsonl([APPS_ROW], tmp_path / "train.jsonl"), HUMANEVAL)
    train, test = task.examples("train", 5), task.examples("test", 100)
    assert (len(train), len(test)) == (1, 10)
    assert all(e.prompt.endswith("\n") and e.answer == "" for e in train + test)
    assert task.score_batch(test, [e.solution for e in test]) == [1.0] * 10
    assert task.score(train[0], SUM_PROGRAM) == 1.0 and task.score(test[0], "    pass\n") == 0.0
    assert task.extract_answer(test[0].solution) is None
    steps = task.split_steps(test[0].solution)
    assert steps and task.step_labels(test[0], test[0].solution) == [True] * len(steps)
    assert task.max_solution_chars() == max(len(e.solution) for e in train + test)


# ---- the miniature code task ------------------------------------------------------------------------
def test_mini_code_task_gold_scores_one_and_wrong_ones_less():
    task = MiniCodeTask()
    examples = task.examples("train", 40)
    assert len({e.prompt for e in examples}) == 40
    assert task.score_batch(examples, [e.solution for e in examples]) == [1.0] * 40
    e = examples[0]
    assert e.prompt.endswith("\n") and e.solution == f"f(x)={e.answer}"
    for x, shown in zip(e.meta["shown"], e.prompt.split()):
        assert shown == f"f({x})={gold_value(e.answer, x)}"
    wrong = ["f(x)=0", "f(x)=x", f"f(x)={e.answer}+1", "f(x)=x*x*x*x", "f(x)=(", ""]
    scores = task.score_batch([e] * len(wrong), wrong)
    assert all(s < 1.0 for s in scores) and scores[-2:] == [0.0, 0.0]
    assert task.score(e, e.answer) == 1.0  # the f(x)= prefix is optional


def test_mini_code_task_hostile_expressions_only_hurt_themselves():
    task = MiniCodeTask(timeout_s=1.0)
    examples = task.examples("test", 4)
    responses = [examples[0].solution, "f(x)=[x for _ in iter(int, 1)]", examples[2].solution,
                 "f(x)=().__class__.__base__.__subclasses__()"]
    assert task.score_batch(examples, responses) == [1.0, 0.0, 1.0, 0.0]


def test_mini_code_task_splits_are_deterministic_and_disjoint():
    task = MiniCodeTask(seed=3)
    train, test = task.examples("train", 300), task.examples("test", 40)
    assert task.examples("train", 300) == train
    assert not {e.answer for e in train} & {e.answer for e in test}
    assert task.max_solution_chars() >= max(len(e.solution) for e in train + test)
    assert task.step_labels(train[0], train[0].solution) == [True]
