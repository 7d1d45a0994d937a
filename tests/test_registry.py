"""One registry type: duplicates refused, a failed lookup lists the names; the algorithm records."""

from __future__ import annotations

import pytest
import torch

from rlhfscale.algorithms import ALGORITHMS
from rlhfscale.registry import Registry
from rlhfscale.rl.advantages import ESTIMATORS
from rlhfscale.rl.losses import AGGREGATIONS, KL_ESTIMATORS, policy_loss
from rlhfscale.rewards.shaping import SHAPING


def test_duplicates_are_refused_and_a_failed_lookup_lists_the_names():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    reg.register("b")(2)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 3)
    with pytest.raises(KeyError, match="unknown widget 'c'; valid: a, b"):
        reg.get("c")
    assert reg["b"] == 2 and list(reg) == ["a", "b"] and "a" in reg and len(reg) == 2


def test_every_registry_is_one_type():
    for registry in (ALGORITHMS, ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, SHAPING):
        assert isinstance(registry, Registry)


def test_every_algorithm_names_a_registered_estimator_and_aggregation():
    for name in ALGORITHMS:
        algo = ALGORITHMS[name]
        assert algo.estimator in ESTIMATORS and (algo.loss_agg is None or algo.loss_agg in AGGREGATIONS)
        assert algo.critic == (algo.estimator == "gae")


def test_dr_grpo_hand_example():
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(group), no std division; the loss sums token terms over the
    constant B * T. Group rewards [1, 0, 0, 1] and [1, 1, 1, 0]: advantages ±0.5 and +0.25 / -0.75."""
    algo = ALGORITHMS["dr_grpo"]
    assert (algo.estimator, algo.norm_std, algo.loss_agg, algo.critic, algo.groups) == ("grpo", False, "token_sum",
                                                                                         False, True)
    rewards = torch.zeros(8, 3)
    lengths = [3, 1, 2, 3, 1, 1, 2, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in lengths])
    outcome = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    for i, (n, r) in enumerate(zip(lengths, outcome)):
        rewards[i, n - 1] = r
    advantages, _ = ESTIMATORS[algo.estimator](rewards, mask, n=4, norm_std=algo.norm_std)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75])[:, None] * mask
    torch.testing.assert_close(advantages, expected)
    # at ratio 1 the per-token loss is -A; token_sum: sum over valid tokens / (8 * 3)
    logprobs = torch.zeros(8, 3)
    loss, _ = policy_loss(logprobs, logprobs, advantages, mask, agg=algo.loss_agg)
    by_hand = -(0.5 * 3 - 0.5 * 1 - 0.5 * 2 + 0.5 * 3 + 0.25 * 1 + 0.25 * 1 + 0.25 * 2 - 0.75 * 3) / 24
    assert loss.item() == pytest.approx(by_hand)
