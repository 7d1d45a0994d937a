import math

import pytest
import torch

from rlhfscale.rewards.aggregate import AGGREGATIONS, aggregate_steps, step_f1

LN4, LN9 = math.log(4.0), math.log(9.0)  # σ(ln 4) = 0.8, σ(-ln 4) = 0.2, σ(ln 9) = 0.9

SCORES = torch.tensor(
    [
        [LN4, -LN4, LN9],  # p = .8 .2 .9
        [0.0, LN9, 5.0],  # p = .5 .9 (third step masked)
        [1.0, 2.0, 3.0],  # no valid step
        [LN4, 100.0, 0.0],  # p = .8 . .5 (middle step masked)
    ],
    dtype=torch.float64,
)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
EXPECTED = {
    "min": [0.2, 0.5, 0.0, 0.5],
    "last": [0.9, 0.9, 0.0, 0.5],
    "mean": [1.9 / 3, 0.7, 0.0, 0.65],
    "prod": [0.144, 0.45, 0.0, 0.4],
}
REFERENCE = {"min": min, "last": lambda p: p[-1], "mean": lambda p: sum(p) / len(p), "prod": math.prod}


@pytest.mark.parametrize("how", list(AGGREGATIONS))
def test_aggregate_hand_example(how):
    expected = torch.tensor(EXPECTED[how], dtype=torch.float64)
    torch.testing.assert_close(aggregate_steps(SCORES, MASK, how), expected)


@pytest.mark.parametrize("how", list(AGGREGATIONS))
def test_aggregate_masked_steps_change_nothing(how):
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
    scores = torch.where(MASK, SCORES, garbage.expand_as(SCORES)).requires_grad_(True)
    out = aggregate_steps(scores, MASK, how)
    out.sum().backward()
    torch.testing.assert_close(out, aggregate_steps(SCORES, MASK, how))
    assert torch.isfinite(scores.grad).all() and (scores.grad[~MASK] == 0).all()


@pytest.mark.parametrize("how", list(AGGREGATIONS))
def test_aggregate_matches_reference_loop(how):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 7, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(6, 7, generator=g) < 0.6
    mask[0] = False
    expected = []
    for row, valid in zip(scores.tolist(), mask.tolist()):
        p = [1 / (1 + math.exp(-z)) for z, v in zip(row, valid) if v]
        expected.append(REFERENCE[how](p) if p else 0.0)
    torch.testing.assert_close(aggregate_steps(scores, mask, how), torch.tensor(expected, dtype=scores.dtype))


def test_aggregate_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="'max'.*min, last, mean, prod"):
        aggregate_steps(SCORES, MASK, "max")


# --- step F1 ----------------------------------------------------------------------------------

GOLD = torch.tensor([True, True, True, False])
PRED = torch.tensor([True, False, False, False])


def test_step_f1_hand_example_error_steps_are_positive_by_default():
    # error class: gold errors {3}, predicted errors {1, 2, 3} -> precision 1/3, recall 1
    m = step_f1(PRED, GOLD)
    assert m == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "accuracy": 0.5})
    # correct class: gold {0, 1, 2}, predicted {0} -> precision 1, recall 1/3
    m = step_f1(PRED, GOLD, positive=True)
    assert m == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "accuracy": 0.5})


def test_step_f1_no_positives_gives_zero_not_nan():
    m = step_f1(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}


def test_step_f1_invariant_to_step_order():
    perm = torch.tensor([2, 0, 3, 1])
    assert step_f1(PRED[perm], GOLD[perm]) == step_f1(PRED, GOLD)


def test_step_f1_matches_reference_loop():
    g = torch.Generator().manual_seed(1)
    pred, gold = torch.rand(50, generator=g) < 0.6, torch.rand(50, generator=g) < 0.7
    for positive in (False, True):
        pairs = list(zip(pred.tolist(), gold.tolist()))
        tp = sum(p == positive and t == positive for p, t in pairs)
        fp = sum(p == positive and t != positive for p, t in pairs)
        fn = sum(p != positive and t == positive for p, t in pairs)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        expected = {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall),
            "accuracy": sum(p == t for p, t in pairs) / 50,
        }
        assert step_f1(pred, gold, positive=positive) == pytest.approx(expected)
