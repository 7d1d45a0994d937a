"""The `math-mini` task of the registry: miniature GSM8K problems generated in memory, as many as exist.

`math_gen.miniature_task` asks for a fixed number of problems and fails when fewer exist; with one
operation or small numbers few do (``n_ops=1``: 1,284 training and 287 test problems with numbers up
to 99, 521 and 117 up to 20). `task` takes up to `n_train` / `n_test` of them: the same problems,
in the same order, as `math_gen.miniature_gsm8k` when that many exist, else every distinct one its
search finds.
"""

from __future__ import annotations

import json
import random

from .math import MathTask, gsm8k_example
from .math_gen import _problem, _render, _split_of


STALL = 20_000  # draws without a problem not seen before (of either split): every problem has been found


def rows_up_to(split: str, n: int, seed: int = 0, n_ops: int = 2, max_value: int = 99) -> list[dict]:
    """Up to `n` distinct problems of `split` as GSM8K rows (`math_gen.miniature_gsm8k`'s search, which also
    ends after `STALL` draws that find nothing new)."""
    rng = random.Random(f"miniature-gsm8k-{seed}-{split}")
    seen: set[str] = set()  # of both splits
    rows: list[dict] = []
    stalled = 0
    for _ in range(100 * n + 1000):
        if len(rows) == n or stalled == STALL:
            break
        start, ops, steps = _problem(rng, n_ops, max_value)
        signature = json.dumps([start, ops])
        stalled = stalled + 1 if signature in seen else 0
        if signature in seen:
            continue
        seen.add(signature)
        if _split_of(signature) == split:
            rows.append(_render(rng, start, ops, steps))
    return rows


def task(n_ops: int = 2, max_value: int = 99, seed: int = 0, step_split: str = "line", n_train: int = 4000,
         n_test: int = 400) -> MathTask:
    """A `MathTask` named math-mini over up to `n_train` training and `n_test` test problems."""
    def examples(split: str, n: int) -> list:
        return [gsm8k_example(f"miniature {split} row {i}", row, step_split)
                for i, row in enumerate(rows_up_to(split, n, seed, n_ops, max_value))]

    return MathTask.from_examples(examples("train", n_train), examples("test", n_test), step_split=step_split,
                                  name="math-mini")
