import math
import warnings

import pytest
import torch

from rlhfscale.rewards import shaping
from rlhfscale.rewards.shaping import (
    SHAPING,
    RunningMeanStd,
    asymmetric_shrink,
    clip_rewards,
    get_shaping,
    length_penalty,
    normalize_rewards,
)


def scores(B=8, seed=0):
    return torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- RunningMeanStd ---------------------------------------------------------------------------


def test_running_mean_std_hand_example():
    rms = RunningMeanStd()
    rms.update(torch.tensor([1.0, 2.0, 3.0]))
    assert (rms.mean, rms.var, rms.count) == (pytest.approx(2.0), pytest.approx(2 / 3), 3)
    rms.update(torch.tensor([4.0]))
    assert (rms.mean, rms.var, rms.count) == (pytest.approx(2.5), pytest.approx(1.25), 4)


def test_running_mean_std_matches_full_data_in_chunks():
    x = scores(B=50, seed=1) * 3 + 7
    rms = RunningMeanStd()
    for chunk in (x[:1], x[1:8], x[8:30], x[30:]):
        rms.update(chunk)
    values = x.tolist()
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    assert rms.mean == pytest.approx(mean) and rms.var == pytest.approx(var) and rms.count == 50


# --- normalization ----------------------------------------------------------------------------


def test_normalize_batch_hand_example():
    out = normalize_rewards(torch.tensor([1.0, 2.0, 3.0]), mode="batch", eps=0.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0]) * math.sqrt(1.5))


def test_normalize_group_matches_per_group_loop():
    x, n, eps = scores(B=12), 4, 1e-6
    expected = []
    for start in range(0, 12, n):
        group = x[start : start + n].tolist()
        mean = sum(group) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in group) / n)
        expected += [(v - mean) / (std + eps) for v in group]
    out = normalize_rewards(x, mode="group", n=n, eps=eps)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_normalize_group_ignores_other_groups():
    x = scores(B=6)
    out = normalize_rewards(x, mode="group", n=3)
    x2 = x.clone()
    x2[3:] = torch.tensor([100.0, -50.0, 7.0], dtype=torch.float64)
    out2 = normalize_rewards(x2, mode="group", n=3)
    torch.testing.assert_close(out2[:3], out[:3])
    assert not torch.allclose(out2[3:], out[3:])


def test_normalize_group_with_n1_uses_the_batch_and_warns_once():
    shaping._warn_no_groups.cache_clear()
    x = scores()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = normalize_rewards(x, mode="group", n=1)
        normalize_rewards(x, mode="group", n=1)
    assert len(caught) == 1 and "n=1" in str(caught[0].message)
    torch.testing.assert_close(out, normalize_rewards(x, mode="batch"))


def test_normalize_running_uses_and_updates_statistics():
    rms = RunningMeanStd()
    normalize_rewards(torch.tensor([0.0, 2.0]), mode="running", running=rms)  # mean 1, var 1
    out = normalize_rewards(torch.tensor([4.0, 6.0]), mode="running", running=rms, eps=0.0)
    # all four seen: mean 3, var (9 + 1 + 1 + 9) / 4 = 5
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0]) / math.sqrt(5.0))
    assert rms.count == 4
    with pytest.raises(ValueError, match="RunningMeanStd"):
        normalize_rewards(torch.tensor([1.0]), mode="running")


def test_unknown_mode_lists_valid_names():
    with pytest.raises(KeyError, match="batch, group, running"):
        normalize_rewards(torch.zeros(2), mode="global")


# --- asymmetric shrinking ---------------------------------------------------------------------


def test_asymmetric_shrink_hand_example():
    x = torch.tensor([2.0, -2.0, 0.5, 0.0])
    out = asymmetric_shrink(x, pos_factor=0.5, neg_factor=1.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -2.0, 0.25, 0.0]))
    out = asymmetric_shrink(x, pos_factor=0.5, neg_factor=1.0, bound=0.5)
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5, 0.25, 0.0]))
    # batch reference: r0 = 0.125; deviations 1.875, -2.125, 0.375, -0.125
    out = asymmetric_shrink(x, pos_factor=0.2, neg_factor=0.5, reference="batch")
    expected = 0.125 + torch.tensor([0.2 * 1.875, 0.5 * -2.125, 0.2 * 0.375, 0.5 * -0.125])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("reference", ["zero", "batch", "group"])
def test_asymmetric_shrink_with_unit_factors_is_identity(reference):
    x = scores()
    out = asymmetric_shrink(x, pos_factor=1.0, neg_factor=1.0, reference=reference, n=4)
    torch.testing.assert_close(out, x)


def test_asymmetric_shrink_group_matches_per_group_loop():
    x, n = scores(B=9, seed=3), 3
    expected = []
    for start in range(0, 9, n):
        group = x[start : start + n].tolist()
        r0 = sum(group) / n
        expected += [r0 + (0.3 if v > r0 else 0.8) * (v - r0) for v in group]
    out = asymmetric_shrink(x, pos_factor=0.3, neg_factor=0.8, reference="group", n=n)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_asymmetric_shrink_keeps_order_and_reference():
    x = scores(B=10, seed=4)
    out = asymmetric_shrink(x, pos_factor=0.25, neg_factor=0.75, reference="batch")
    assert torch.equal(out.argsort(), x.argsort())
    assert ((out > x.mean()) == (x > x.mean())).all()


def test_unknown_reference_lists_valid_names():
    with pytest.raises(KeyError, match="zero, batch, group"):
        asymmetric_shrink(torch.zeros(2), pos_factor=1.0, neg_factor=1.0, reference="median")


# --- clip, length penalty, registry -----------------------------------------------------------


def test_clip_rewards_hand_example():
    out = clip_rewards(torch.tensor([-3.0, 0.5, 9.0]), 2.0)
    torch.testing.assert_close(out, torch.tensor([-2.0, 0.5, 2.0]))


def test_length_penalty_hand_example_and_reference_loop():
    x = torch.tensor([1.0, 1.0, 1.0])
    out = length_penalty(x, torch.tensor([5, 12, 30]), coef=0.01, target_len=10)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.98, 0.8]))
    s, lengths = scores(B=6), torch.tensor([0, 3, 7, 8, 20, 4])
    expected = [v - 0.1 * max(0, int(L) - 5) for v, L in zip(s.tolist(), lengths)]
    out = length_penalty(s, lengths, coef=0.1, target_len=5)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_shaping_registry():
    assert get_shaping("shrink") is asymmetric_shrink
    assert set(SHAPING) == {"normalize", "shrink", "clip", "length_penalty"}
    with pytest.raises(KeyError, match="normalize, shrink, clip, length_penalty"):
        get_shaping("whiten")
