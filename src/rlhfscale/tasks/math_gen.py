"""Miniature GSM8K: short templated word problems for tiny models trained from scratch on CPU.

A problem starts with a count (``Tom has 7 pens.``, or a product ``Tom has 3 bags of 4 pens.``)
and applies `n_ops` changes (buys / finds more, gives away / loses some, ends with k times as
many). Every number and intermediate result stays within 0..`max_value` (default 99), so the
arithmetic is on 1-2 digit numbers. The gold answer is written in GSM8K style, calculator
annotations and all, so `tasks.math.load_math` reads these files exactly like real GSM8K::

    {"question": "Tom has 3 bags of 4 pens. He gives 5 away. How many pens now?",
     "answer": "3*4=<<3*4=12>>12 pens\\n12-5=<<12-5=7>>7 pens\\n#### 7"}

Train and test problems are disjoint by construction: a problem belongs to the split its numbers
and operations hash to, whatever names and items phrase it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from pathlib import Path

from .math import MathTask, gsm8k_example

NAMES = [("Tom", "He"), ("Ann", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"), ("Eva", "She"),
         ("Max", "He"), ("Zoe", "She")]
ITEMS = ["apples", "pens", "cards", "books", "eggs", "coins", "shells", "cups"]
ADD = ["buys {b} more", "finds {b} more", "gets {b} more"]
SUB = ["gives {b} away", "loses {b}", "sells {b}"]
TEST_FRACTION = 0.2


def _split_of(signature: str) -> str:
    h = int(hashlib.sha256(signature.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < TEST_FRACTION else "train"


def _problem(rng: random.Random, n_ops: int, max_value: int) -> tuple[tuple, list[tuple], list[tuple]]:
    """(start, ops, steps): start ("has", a, 0) or ("bags", a, b); ops (op, k); steps (x, op, y, result)."""
    steps = []
    if max_value >= 4 and rng.random() < 0.3:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        while a * b > max_value:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        start, value = ("bags", a, b), a * b
        steps.append((a, "*", b, value))
    else:
        value = rng.randint(2, max(2, min(20, max_value)))
        start = ("has", value, 0)
    ops = []
    for i in range(n_ops):
        choices = ["+"] * (value + 1 <= max_value) + ["-"] * (value >= 2)
        choices += ["x"] * (i == n_ops - 1 and 2 * value <= max_value)
        op = rng.choice(choices)
        if op == "+":
            k = rng.randint(1, min(9, max_value - value))
            new = value + k
        elif op == "-":
            k = rng.randint(1, min(9, value - 1))
            new = value - k
        else:
            k = rng.randint(2, min(3, max_value // value))
            new = value * k
        steps.append((value, "*" if op == "x" else op, k, new))
        ops.append((op, k))
        value = new
    return start, ops, steps


def _render(rng: random.Random, start: tuple, ops: list[tuple], steps: list[tuple]) -> dict:
    """The GSM8K-style row of a problem, phrased with a random name and item."""
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    kind, a, b = start
    sentences = [f"{name} has {a} bags of {b} {item}." if kind == "bags" else f"{name} has {a} {item}."]
    for op, k in ops:
        if op == "x":
            sentences.append(f"Then {pronoun.lower()} has {k} times as many.")
        else:
            sentences.append(f"{pronoun} {rng.choice(ADD if op == '+' else SUB).format(b=k)}.")
    sentences.append(f"How many {item} now?")
    lines = [f"{x}{op}{y}=<<{x}{op}{y}={r}>>{r} {item}" for x, op, y, r in steps]
    return {"question": " ".join(sentences), "answer": "\n".join(lines + [f"#### {steps[-1][3]}"])}


def miniature_gsm8k(split: str, n: int, seed: int = 0, n_ops: int = 2, max_value: int = 99) -> list[dict]:
    """`n` distinct problems of `split` ("train" / "test") as GSM8K rows, deterministic in the arguments."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', found {split!r}")
    rng = random.Random(f"miniature-gsm8k-{seed}-{split}")
    seen: set[str] = set()
    rows = []
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            break
        start, ops, steps = _problem(rng, n_ops, max_value)
        signature = json.dumps([start, ops])
        if signature in seen or _split_of(signature) != split:
            continue
        seen.add(signature)
        rows.append(_render(rng, start, ops, steps))
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} distinct {split} problems with n_ops={n_ops}, max_value={max_value}")
    return rows


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write `rows` as JSON Lines (parents created); the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def write_miniature_gsm8k(folder: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                          n_ops: int = 2, max_value: int = 99) -> tuple[Path, Path]:
    """(train.jsonl, test.jsonl) of miniature problems written into `folder`."""
    folder = Path(folder)
    train = write_jsonl(miniature_gsm8k("train", n_train, seed, n_ops, max_value), folder / "train.jsonl")
    test = write_jsonl(miniature_gsm8k("test", n_test, seed, n_ops, max_value), folder / "test.jsonl")
    return train, test


def miniature_math_task(folder: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                        n_ops: int = 2, max_value: int = 99) -> MathTask:
    """A `MathTask` over freshly written miniature files (the same loader path as real GSM8K)."""
    train, test = write_miniature_gsm8k(folder, n_train, n_test, seed, n_ops, max_value)
    return MathTask(train, test, name="math-mini")


def miniature_task(n_train: int = 4000, n_test: int = 400, seed: int = 0, n_ops: int = 2, max_value: int = 99,
                   step_split: str = "line") -> MathTask:
    """A `MathTask` over miniature problems generated in memory (the rows the GSM8K loader reads from files)."""
    train = [gsm8k_example(f"miniature train row {i}", row, step_split)
             for i, row in enumerate(miniature_gsm8k("train", n_train, seed, n_ops, max_value))]
    test = [gsm8k_example(f"miniature test row {i}", row, step_split)
            for i, row in enumerate(miniature_gsm8k("test", n_test, seed, n_ops, max_value))]
    return MathTask.from_examples(train, test, step_split=step_split, name="math-mini")
