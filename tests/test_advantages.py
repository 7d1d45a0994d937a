import math
import warnings

import pytest
import torch

from rlhfscale.rl import advantages as adv_mod
from rlhfscale.rl.advantages import ESTIMATORS, gae, get_advantage, grpo, reinforce_pp, rloo


def random_batch(B=6, T=7, seed=0):
    """Random rewards/values and a right-padded mask with one hole inside a response."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).expand(B, T) < lengths[:, None]
    mask[0, :3] = torch.tensor([True, False, True])  # a skipped token inside row 0
    return rewards, values, mask


def whiten_ref(rows, eps):
    """Whiten a list of per-row lists over all their entries (population std)."""
    flat = [x for row in rows for x in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
    return [[(x - mean) / (std + eps) for x in row] for row in rows]


def scatter_rows(rows, mask):
    """Place per-row lists of valid-token values back into a zero [B, T] tensor."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for b, row in enumerate(rows):
        out[b, mask[b]] = torch.tensor(row, dtype=torch.float64)
    return out


# --- GAE --------------------------------------------------------------------------------------


def test_gae_hand_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(rewards, mask, values=values, gamma=0.9, gae_lambda=0.8)
    # δ = [-0.05, -0.05, 0.5]; A_2 = 0.5, A_1 = -0.05 + 0.72*0.5 = 0.31, A_0 = -0.05 + 0.72*0.31
    raw = torch.tensor([[0.1732, 0.31, 0.5]])
    torch.testing.assert_close(returns, raw + 0.5)
    centered = raw - raw.mean()
    torch.testing.assert_close(advantages, centered / (centered.square().mean().sqrt() + 1e-6))


def test_gae_gamma_lambda_one_gives_monte_carlo_returns():
    rewards = torch.tensor([[0.0, 2.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    _, returns = gae(rewards, mask, values=torch.randn(1, 4))
    torch.testing.assert_close(returns, torch.tensor([[3.0, 3.0, 1.0, 0.0]]))


def test_gae_matches_cleanrl_reference_loop():
    rewards, values, mask = random_batch()
    gamma, lam, eps = 0.95, 0.9, 1e-6
    raw_rows, return_rows = [], []
    for b in range(mask.shape[0]):  # CleanRL's loop over the valid tokens of one response
        r, v = rewards[b, mask[b]].tolist(), values[b, mask[b]].tolist()
        T = len(r)
        adv, lastgaelam = [0.0] * T, 0.0
        for t in reversed(range(T)):
            nextnonterminal = 0.0 if t == T - 1 else 1.0
            nextvalue = 0.0 if t == T - 1 else v[t + 1]
            delta = r[t] + gamma * nextvalue * nextnonterminal - v[t]
            lastgaelam = delta + gamma * lam * nextnonterminal * lastgaelam
            adv[t] = lastgaelam
        raw_rows.append(adv)
        return_rows.append([a + x for a, x in zip(adv, v)])
    advantages, returns = gae(rewards, mask, values=values, gamma=gamma, gae_lambda=lam, eps=eps)
    torch.testing.assert_close(returns, scatter_rows(return_rows, mask))
    torch.testing.assert_close(advantages, scatter_rows(whiten_ref(raw_rows, eps), mask))


def test_gae_needs_values():
    with pytest.raises(ValueError, match="values"):
        gae(torch.zeros(2, 3), torch.ones(2, 3))


# --- GRPO / RLOO ------------------------------------------------------------------------------


def outcome_rewards(scores, T=4, lengths=None):
    """Put each score on the last valid token of a right-padded [B, T] batch."""
    B = len(scores)
    lengths = torch.tensor(lengths or [T] * B)
    mask = torch.arange(T).expand(B, T) < lengths[:, None]
    rewards = torch.zeros(B, T, dtype=torch.float64)
    rewards[torch.arange(B), lengths - 1] = torch.tensor(scores, dtype=torch.float64)
    return rewards, mask


def test_grpo_hand_example():
    rewards, mask = outcome_rewards([1.0, 0.0, 1.0, 1.0], lengths=[4, 2, 3, 4])
    advantages, returns = grpo(rewards, mask, n=2, eps=1e-6)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # group 1: mean 0.5, sample std sqrt(0.5); group 2: std 0
    expected = torch.tensor([[a, a, a, a], [-a, -a, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, advantages)
    advantages, _ = grpo(rewards, mask, n=2, norm_std=False)
    torch.testing.assert_close(advantages[:2, 0], torch.tensor([0.5, -0.5], dtype=torch.float64))


def test_grpo_matches_reference_loop():
    rewards, _, mask = random_batch(B=6)
    n, eps = 3, 1e-6
    scores = [sum(rewards[b, mask[b]].tolist()) for b in range(6)]
    expected = []
    for start in range(0, 6, n):
        group = scores[start : start + n]
        mean = sum(group) / n
        std = math.sqrt(sum((s - mean) ** 2 for s in group) / (n - 1))
        expected += [(s - mean) / (std + eps) for s in group]
    advantages, _ = grpo(rewards, mask, n=n, eps=eps)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64)[:, None] * mask)


def test_rloo_hand_example():
    rewards, mask = outcome_rewards([1.0, 0.0, 0.0, 2.0, 4.0, 0.0])
    advantages, returns = rloo(rewards, mask, n=3)
    expected = torch.tensor([1.0, -0.5, -0.5, 0.0, 3.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected[:, None].expand(6, 4))
    torch.testing.assert_close(returns, advantages)


def test_rloo_matches_reference_loop():
    rewards, _, mask = random_batch(B=6)
    n = 2
    scores = [sum(rewards[b, mask[b]].tolist()) for b in range(6)]
    expected = []
    for b in range(6):
        start = b - b % n
        others = [scores[j] for j in range(start, start + n) if j != b]
        expected.append(scores[b] - sum(others) / len(others))
    advantages, _ = rloo(rewards, mask, n=n)
    torch.testing.assert_close(advantages, torch.tensor(expected, dtype=torch.float64)[:, None] * mask)


@pytest.mark.parametrize("fn", [grpo, rloo])
def test_group_methods_with_n1_use_the_batch_and_warn_once(fn):
    adv_mod._warn_no_groups.cache_clear()
    rewards, mask = outcome_rewards([1.0, 0.0, 0.0, 3.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        advantages, _ = fn(rewards, mask, n=1, eps=0.0)
        fn(rewards, mask, n=1)
    assert len(caught) == 1 and "n=1" in str(caught[0].message)
    batch_as_group, _ = fn(rewards, mask, n=4, eps=0.0)
    torch.testing.assert_close(advantages, batch_as_group)


def test_rloo_single_response_keeps_raw_score():
    rewards, mask = outcome_rewards([0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        advantages, _ = rloo(rewards, mask, n=1)
    torch.testing.assert_close(advantages, torch.full((1, 4), 0.7, dtype=torch.float64))


@pytest.mark.parametrize("fn", [grpo, rloo])
def test_group_methods_reject_ragged_batch(fn):
    with pytest.raises(ValueError, match="multiple of n=4"):
        fn(torch.zeros(6, 3), torch.ones(6, 3), n=4)


# --- REINFORCE++ ------------------------------------------------------------------------------


def test_reinforce_pp_hand_example():
    rewards = torch.tensor([[0.0, 0.5, 1.0], [2.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = reinforce_pp(rewards, mask, gamma=0.5, eps=0.0)
    # row 0: G_2 = 1, G_1 = 0.5 + 0.5*1 = 1, G_0 = 0 + 0.5*1 = 0.5; row 1: G_0 = 2
    torch.testing.assert_close(returns, torch.tensor([[0.5, 1.0, 1.0], [2.0, 0.0, 0.0]]))
    # valid returns [0.5, 1, 1, 2]: mean 1.125, population std sqrt(0.296875)
    std = math.sqrt(0.296875)
    expected = torch.tensor([[-0.625 / std, -0.125 / std, -0.125 / std], [0.875 / std, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)


def test_reinforce_pp_matches_reference_loop():
    rewards, _, mask = random_batch()
    gamma, eps = 0.9, 1e-6
    return_rows = []
    for b in range(mask.shape[0]):
        r = rewards[b, mask[b]].tolist()
        G, row = 0.0, []
        for x in reversed(r):
            G = x + gamma * G
            row.append(G)
        return_rows.append(row[::-1])
    advantages, returns = reinforce_pp(rewards, mask, gamma=gamma, eps=eps)
    torch.testing.assert_close(returns, scatter_rows(return_rows, mask))
    torch.testing.assert_close(advantages, scatter_rows(whiten_ref(return_rows, eps), mask))
    centered, _ = reinforce_pp(rewards, mask, gamma=gamma, norm_std=False)
    flat = [x for row in return_rows for x in row]
    mean = sum(flat) / len(flat)
    torch.testing.assert_close(centered, scatter_rows([[x - mean for x in row] for row in return_rows], mask))


# --- every estimator --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_masked_tokens_change_nothing(name):
    rewards, values, mask = random_batch()
    kwargs = dict(n=2, values=values, gamma=0.9, gae_lambda=0.8, norm_std=True, eps=1e-6)
    advantages, returns = get_advantage(name)(rewards, mask, **kwargs)
    garbage = torch.full_like(rewards, 1e6)
    kwargs["values"] = torch.where(mask, values, -garbage)
    advantages2, returns2 = get_advantage(name)(torch.where(mask, rewards, garbage), mask, **kwargs)
    torch.testing.assert_close(advantages2, advantages)
    torch.testing.assert_close(returns2, returns)
    assert advantages[~mask].abs().sum() == 0 and returns[~mask].abs().sum() == 0
    assert advantages[mask].abs().sum() > 0


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(KeyError, match="gae, grpo, rloo, reinforce\\+\\+"):
        get_advantage("ppo2")
