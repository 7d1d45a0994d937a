"""Math tasks from files: answer equivalence, answer extraction, GSM8K / MATH loaders, MathTask, miniature problems."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from rlhfscale.errors import BadInput
from rlhfscale.tasks.math import MathTask, extract_answer, is_equivalent, load_math, strip_annotations
from rlhfscale.tasks.math_answers import canonical, last_boxed
from rlhfscale.tasks.math_gen import miniature_gsm8k, write_jsonl, write_miniature_gsm8k

DATA = Path(__file__).parent / "data"
GSM8K = DATA / "gsm8k_sample.jsonl"
GSM8K_ANSWERS = ["18", "3", "70000", "540", "20", "64", "260", "160", "45", "460", "366", "694", "13", "18",
                 "60", "125", "230", "57500", "7", "6"]

EQUIVALENCES = [  # (prediction, reference, equivalent?)
    ("\\frac{1}{2}", "0.5", True), ("\\dfrac{1}{2}", "1/2", True), ("\\tfrac12", "0.5", True),
    ("\\frac{6}{4}", "\\frac{3}{2}", True), ("-\\frac{3}{4}", "-0.75", True), ("\\frac{-3}{4}", "-\\frac34", True),
    ("3/4", "0.75", True), ("0.25", "\\frac{1}{5}", False), ("\\frac{1}{3}", "0.3", False),
    ("5 dollars", "5", True), ("\\$5", "5", True), ("$5", "5.00", True), ("18 \\text{ dollars}", "18", True),
    ("\\$18.00", "18", True), ("12 cm", "12", True), ("12 cm", "13", False),
    ("50\\%", "50", True), ("25\\%", "25", True), ("50%", "0.5", True), ("10\\%", "0.2", False),
    ("(1,2]", "(1,2]", True), ("(1,2]", "[1,2)", False), ("(1,2]", "(1,2)", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True), ("[1,2]", "[1,2]", True),
    ("\\{1,2\\}", "\\{2,1\\}", True), ("\\{1,2\\}", "\\{1,3\\}", False), ("1,2", "2,1", True),
    ("-3", "-3", True), ("-3", "3", False), ("-1", "\\frac{-2}{2}", True), ("0", "-0", True),
    ("1,000", "1000", True), ("1{,}000", "1000", True), ("2,500", "2500.0", True), ("1001", "1000", False),
    ("3.0", "3", True), ("7", "7.5", False), ("x=3", "3", True), ("\\boxed{12}", "12", True),
    ("$\\frac{3}{4}$", "0.75", True), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True), ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("2\\pi", "\\pi*2", True), ("x^2+2x+1", "(x+1)^2", True), ("x^2+1", "(x+1)^2", False), ("\\infty", "\\infty", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    ("a", "b", False), ("", "3", False), ("3", "", False),
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), EQUIVALENCES)
def test_is_equivalent(prediction, reference, expected):
    assert is_equivalent(prediction, reference) is expected


def test_pathological_inputs_return_false_quickly_from_any_thread():
    start = time.monotonic()
    assert is_equivalent("9^{9^{9^{9}}}", "3") is False
    assert is_equivalent("\\frac{" * 300 + "1" + "}{2}" * 300, "3") is False
    assert time.monotonic() - start < 8.0
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.extend([is_equivalent("10^{10^{10}}", "5"),
                                                          is_equivalent("\\frac{1}{2}", "0.5")]))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=15)
    assert out == [False, True] and time.monotonic() - start < 8.0


@pytest.mark.parametrize(("text", "answer"), [
    ("so the total is \\boxed{\\frac{1}{\\sqrt{2}}} in the end", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1,2\\}} and later \\boxed{7}", "7"),
    ("He makes $18 every day.\n#### 1,800", "1800"),
    ("The answer is $18.", "18"),
    ("So the final answer is 4.50.", "4.5"),
    ("first 3 then 5 apples", "5"),
    ("$\\boxed 5$", "5"),
    ("no numbers here", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_last_boxed_balances_nested_and_escaped_braces():
    assert last_boxed("x \\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\boxed{\\{1\\}}") == "\\{1\\}"
    assert last_boxed("\\boxed{\\frac{1}{2}") is None  # unbalanced
    assert canonical("$1,000.") == "1000" and canonical("2.50") == "2.5"


# ---- loaders ---------------------------------------------------------------------------------------
def test_gsm8k_loader_reads_every_line_of_the_real_sample():
    examples = load_math(GSM8K)
    assert [e.answer for e in examples] == GSM8K_ANSWERS
    for e in examples:
        assert e.prompt.startswith("Question: ") and e.prompt.endswith("\nAnswer:\n")
        assert "<<" not in e.solution and ">>" not in e.solution
        assert e.solution.split("\n")[-1] == f"#### {e.answer}"
        assert e.answer in e.meta["results"] and all(float(r) >= 0 for r in e.meta["results"])


def test_calculator_annotations_are_stripped():
    first = load_math(GSM8K)[0]
    assert first.solution == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
                              "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n#### 18")
    assert first.meta["results"] == ["9", "18"]
    assert strip_annotations("2*3=<<2*3=6>>6 cups") == "2*3=6 cups"


def test_math_shape_with_nested_braces(tmp_path):
    rows = [{"problem": "Simplify.", "solution": "We get\n\n$x = \\boxed{\\frac{1}{\\sqrt{2}}}$."},
            {"problem": "Sets?", "solution": "It is \\boxed{\\{1, 2\\}}.", "answer": "\\{2, 1\\}"},
            {"problem": "Count.", "solution": "Line one\nline two\n\nSo \\boxed{1,000}."}]
    path = write_jsonl(rows, tmp_path / "math.jsonl")
    lines, paragraphs = load_math(path), load_math(path, step_split="paragraph")
    assert [e.answer for e in lines] == ["\\frac{1}{\\sqrt{2}}", "\\{2, 1\\}", "1000"]
    assert lines[2].solution == "Line one\nline two\nSo \\boxed{1,000}."
    assert paragraphs[2].solution == "Line one\nline two\n\nSo \\boxed{1,000}."
    task = MathTask(path, path, step_split="paragraph")
    assert task.split_steps(paragraphs[2].solution) == ["Line one\nline two", "So \\boxed{1,000}."]
    assert task.score(lines[0], "so \\boxed{\\frac{\\sqrt{2}}{2}}") == 1.0
    assert task.step_labels(lines[0], "a\nb\n\n\\boxed{3}") == [False, False]  # outcome labels


@pytest.mark.parametrize(("content", "where", "expected"), [
    ('{"question": "q", "answer": "4\\n#### 4"}\nnot json\n', "line 2", "expected a JSON object, found invalid JSON"),
    ('{"question": "q"}\n', "line 1", "expected a field 'answer', found fields 'question'"),
    ('\n{"question": "q", "answer": "it is 4"}\n', "line 2",
     "field 'answer': expected text ending in '#### <number>', found 'it is 4'"),
    ('{"question": "q", "answer": "x\\n#### four"}\n', "line 1", "found '#### four'"),
    ('{"problem": "p", "solution": "no box here"}\n', "line 1", "expected text containing \\boxed{<answer>}"),
    ('{"prompt": "p"}\n', "line 1", "expected fields 'question' and 'answer' (GSM8K) or 'problem'"),
    ('[1, 2]\n', "line 1", "expected a JSON object, found a list"),
])
def test_bad_lines_raise_one_line_naming_file_and_line(tmp_path, content, where, expected):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(content)
    with pytest.raises(BadInput) as err:
        load_math(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path} {where}: ") and expected in message


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        load_math(tmp_path / "missing.jsonl")


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:3]]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "flat"))
    assert [e.answer for e in load_math(tmp_path / "flat")] == GSM8K_ANSWERS[:3]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_math(tmp_path / "dict", split="test")) == 3
    with pytest.raises(BadInput, match="among the dataset's splits, found 'test'"):
        load_math(tmp_path / "dict", split="train")


# ---- MathTask ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(tmp_path_factory) -> MathTask:
    train, _ = write_miniature_gsm8k(tmp_path_factory.mktemp("mini"), n_train=50, n_test=10)
    return MathTask(train, GSM8K)


def test_math_task_scores_and_labels_gold_and_wrong_responses(task):
    example = task.examples("test", 20)[2]  # 80,000 + 50,000 house flip: profit 70000
    assert task.score(example, example.solution) == 1.0
    assert task.step_labels(example, example.solution) == [True] * 5
    assert task.score(example, "The profit is 70,000 dollars. The answer is 70000.") == 1.0
    assert task.score(example, "#### 70001") == 0.0 and task.score(example, "no idea") == 0.0
    wrong_first = example.solution.replace("=$130,000", "=$140,000")
    assert task.step_labels(example, wrong_first) == [False] * 5
    wrong_last = example.solution.replace("#### 70000", "#### 7000")
    assert task.step_labels(example, wrong_last) == [True] * 4 + [False]
    assert task.split_steps(example.solution + "\nextra line") == example.solution.split("\n")


def test_math_task_splits_and_budget(task):
    train, test = task.examples("train", 1000), task.examples("test", 1000)
    assert (len(train), len(test)) == (50, 20)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert task.examples("train", 5) == train[:5]
    assert all(e.prompt.endswith("\n") for e in train + test)
    assert task.max_solution_chars() == max(len(e.solution) for e in train + test)
    with pytest.raises(ValueError):
        task.examples("dev", 3)


# ---- miniature GSM8K --------------------------------------------------------------------------------
def test_miniature_problems_are_gsm8k_shaped_small_and_disjoint(tmp_path):
    train_rows, test_rows = miniature_gsm8k("train", 300), miniature_gsm8k("test", 80)
    assert miniature_gsm8k("train", 300) == train_rows  # deterministic
    assert not {r["question"] for r in train_rows} & {r["question"] for r in test_rows}
    for row in train_rows + test_rows:
        assert "<<" in row["answer"] and row["answer"].split("\n")[-1].startswith("#### ")
        numbers = [int(n) for n in re.findall(r"\d+", row["question"] + row["answer"])]
        assert max(numbers) <= 99
    train, test = write_miniature_gsm8k(tmp_path, n_train=300, n_test=80)
    task = MathTask(train, test)
    examples = task.examples("train", 300)
    assert len(examples) == 300 and all("<<" not in e.solution for e in examples)
    assert all(task.score(e, e.solution) == 1.0 for e in examples[:50])
    assert all(all(task.step_labels(e, e.solution)) for e in examples[:50])
    e = examples[0]
    first, *rest = e.solution.split("\n")
    broken = first.replace("=", "=1", 1) + "\n" + "\n".join(rest)
    assert task.step_labels(e, broken)[0] is False
    assert max(len(x.prompt) + len(x.solution) for x in examples) < 200  # fits the tiny models' context
