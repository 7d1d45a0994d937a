"""Held-out metrics: unbiased pass@k, majority vote, and which figure `evaluate` reports under which key."""

from itertools import combinations

import pytest

from rlhfscale.rollout import evaluate as ev
from rlhfscale.tasks.arithmetic import ArithmeticTask


def test_pass_at_k_by_hand():
    assert ev.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # C(3,2)/C(4,2) subsets miss the correct one
    assert ev.pass_at_k(5, 0, 3) == 0.0
    assert ev.pass_at_k(5, 3, 3) == 1.0  # fewer than k wrong samples: every k-subset holds a correct one


@pytest.mark.parametrize("n, c, k", [(6, 2, 3), (8, 3, 2), (7, 1, 4), (5, 5, 1)])
def test_pass_at_k_equals_counting_every_k_subset(n, c, k):
    correct = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    expected = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
    assert ev.pass_at_k(n, c, k) == pytest.approx(expected)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert ev.majority_vote(["3", None, "4", "4", None, None]) == "4"
    assert ev.majority_vote(["5", "6", "6", "5"]) == "5"
    assert ev.majority_vote([None, None]) is None


@pytest.fixture
def scripted(monkeypatch):
    """`generate` replaced by fixed responses: greedy answers every problem right, samples half of them."""
    task = ArithmeticTask(n_ops=1)
    examples = task.examples("test", 4)

    def generate(model, tok, prompts, *, n=1, temperature=1.0, **kw):
        out = []
        for e in (next(x for x in examples if x.prompt == p) for p in prompts):
            right, wrong = e.solution, f"answer: {int(e.answer) + 1}"
            out.append([right] * n if temperature == 0 else [wrong if i % 2 == 0 else right for i in range(n)])
        return out

    monkeypatch.setattr(ev, "generate", generate)
    return task, examples


def test_k_1_keeps_pass_at_1_the_greedy_figure(scripted):
    task, examples = scripted
    out = ev.evaluate(None, None, task, examples, max_new_tokens=8, k=1)
    assert out["eval/pass@1"] == 1.0 and out["eval/sample_acc"] == 0.0  # sample 0 of each prompt is wrong
    out = ev.evaluate(None, None, task, examples, max_new_tokens=8, k=4)
    assert out["eval/pass@1"] == 1.0 and out["eval/sample_acc"] == 0.5 and out["eval/pass@4"] == 1.0
    assert out["eval/maj@4"] == 0.0  # a 2-2 tie goes to the first seen, the wrong answer
