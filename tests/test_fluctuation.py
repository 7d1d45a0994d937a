"""`rewards.metrics.fluctuation`: how erratic a training curve is (the stability indicator `rl/reward_std`)."""

import math
import random

import pytest

from rlhfscale.rewards.metrics import fluctuation


def test_fluctuation_hand_example():
    # changes +1, -1, +1, -1: mean 0, each squared 1 -> std 1; changes 2, 4: mean 3, deviations -1, +1 -> std 1
    assert fluctuation([0.0, 1.0, 0.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert fluctuation([1.0, 3.0, 7.0]) == pytest.approx(1.0)
    assert math.isnan(fluctuation([0.5])) and math.isnan(fluctuation([]))


def test_a_steady_climb_or_an_offset_changes_nothing():
    noisy = [0.3, 0.5, 0.4, 0.8, 0.7, 0.9]
    base = fluctuation(noisy)
    assert fluctuation([x + 10.0 for x in noisy]) == pytest.approx(base)  # an offset
    assert fluctuation([x + 0.05 * t for t, x in enumerate(noisy)]) == pytest.approx(base)  # a linear trend
    assert fluctuation([0.1 * t for t in range(8)]) == pytest.approx(0.0, abs=1e-12)  # learning is not instability


def test_fluctuation_matches_a_plain_loop():
    rng = random.Random(0)
    series = [rng.gauss(0, 1) for _ in range(17)]
    d = [b - a for a, b in zip(series, series[1:])]
    mean = sum(d) / len(d)
    assert fluctuation(series) == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / len(d)), rel=1e-12)
