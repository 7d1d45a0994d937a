import math

import pytest
import torch

from rlhfscale.rl.losses import (
    AGGREGATIONS,
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    kl_penalty,
    logprob_gap,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def random_batch(B=6, T=5, seed=0):
    """logprobs (with grad), old logprobs, advantages, values, old values, returns, right-padded mask."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    new = (old + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    advantages = torch.randn(B, T, generator=g, dtype=torch.float64)
    old_values = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = (old_values + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)).requires_grad_()
    returns = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).expand(B, T) < lengths[:, None]
    return new, old, advantages, values, old_values, returns, mask


# --- masked statistics ------------------------------------------------------------------------


def test_masked_stats_hand_example():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(3.0))
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(masked_var(x, mask), torch.tensor(8.0 / 3.0))  # (4 + 0 + 4) / 3
    torch.testing.assert_close(masked_var(x, mask, dim=-1), torch.tensor([1.0, 0.0]))
    s = math.sqrt(8.0 / 3.0) + 1e-6
    expected = torch.tensor([[-2.0 / s, 0.0, 0.0], [2.0 / s, 0.0, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask), expected)
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), (expected + 3.0) * mask)


def test_masked_mean_of_empty_row_is_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 0.0]))


def test_masked_stats_ignore_masked_entries():
    _, _, x, _, _, _, mask = random_batch()
    x2 = torch.where(mask, x, torch.full_like(x, float("nan")))
    for fn in (masked_mean, masked_var):
        torch.testing.assert_close(fn(x2, mask), fn(x, mask))
        torch.testing.assert_close(fn(x2, mask, dim=-1), fn(x, mask, dim=-1))
    torch.testing.assert_close(masked_whiten(x2, mask), masked_whiten(x, mask))


def test_masked_stats_match_reference_loop():
    _, _, x, _, _, _, mask = random_batch()
    rows = [x[b, mask[b]].tolist() for b in range(x.shape[0])]
    flat = [v for row in rows for v in row]
    mean = sum(flat) / len(flat)
    var = sum((v - mean) ** 2 for v in flat) / len(flat)
    row_means = [sum(r) / len(r) for r in rows]
    row_vars = [sum((v - m) ** 2 for v in r) / len(r) for r, m in zip(rows, row_means)]
    torch.testing.assert_close(masked_mean(x, mask).item(), mean)
    torch.testing.assert_close(masked_var(x, mask).item(), var)
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor(row_means, dtype=torch.float64))
    torch.testing.assert_close(masked_var(x, mask, dim=-1), torch.tensor(row_vars, dtype=torch.float64))


# --- aggregation ------------------------------------------------------------------------------


def aggregate_ref(name, losses, mask, n):
    """Plain loops: token = one pool; sequence = per row; group = per block of n rows; token_sum = the sum of
    valid tokens over the constant B * T."""
    B, T = losses.shape
    if name == "token_sum":
        return sum(losses[b, t].item() for b in range(B) for t in range(T) if mask[b, t]) / (B * T)
    pools = {
        "token": [list(range(B))],
        "sequence": [[b] for b in range(B)],
        "group": [list(range(s, s + n)) for s in range(0, B, n)],
    }[name]
    means = []
    for rows in pools:
        vals = [losses[b, t].item() for b in rows for t in range(losses.shape[1]) if mask[b, t]]
        means.append(sum(vals) / len(vals))
    return sum(means) / len(means)


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
def test_aggregations_match_reference_loops(agg):
    _, _, losses, _, _, _, mask = random_batch()
    assert AGGREGATIONS[agg](losses, mask, 3).item() == pytest.approx(aggregate_ref(agg, losses, mask, 3))


def test_aggregations_differ_on_ragged_lengths():
    losses = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert AGGREGATIONS["token"](losses, mask, 1).item() == pytest.approx(7.0 / 4.0)
    assert AGGREGATIONS["sequence"](losses, mask, 1).item() == pytest.approx(2.5)
    assert AGGREGATIONS["group"](losses, mask, 2).item() == pytest.approx(7.0 / 4.0)
    assert AGGREGATIONS["token_sum"](losses, mask, 1).item() == pytest.approx(7.0 / 6.0)  # Dr. GRPO: sum / (B * T)


def test_unknown_aggregation_lists_valid_names():
    new, old, advantages, *_, mask = random_batch()
    with pytest.raises(KeyError, match="token, sequence, group, token_sum"):
        policy_loss(new, old, advantages, mask, agg="prompt")


# --- policy loss ------------------------------------------------------------------------------


def test_policy_loss_hand_example():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.5, math.log(0.5), 0.1]])  # ratios e^0.5 ≈ 1.649, 0.5, e^0.1 ≈ 1.105
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(new, old, advantages, mask, clip_coef=0.2)
    # token 0: -min(1.649, 1.2) = -1.2; token 1: -min(-0.5, -0.8) = 0.8; token 2: -2 e^0.1 (inside)
    expected = (-1.2 + 0.8 - 2 * math.exp(0.1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    k3 = [math.exp(r) - 1 - r for r in (0.5, math.log(0.5), 0.1)]  # KL(π_old ‖ π) per token
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 3, rel=1e-6)
    loss_high, _ = policy_loss(new, old, advantages, mask, clip_coef=0.2, clip_coef_high=0.28)
    assert loss_high.item() == pytest.approx((-1.28 + 0.8 - 2 * math.exp(0.1)) / 3, rel=1e-6)


def trl_policy_loss(new_logprobs, mb_logprobs, mb_advantage, padding_mask, cliprange):
    """TRL PPOTrainer's policy loss, as written there (padding_mask is True on padding)."""
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    keep = (~padding_mask).float()
    pg_loss = (pg_loss_max * keep).sum() / keep.sum()
    pg_clipfrac = ((pg_losses2 > pg_losses).float() * keep).sum() / keep.sum()
    return pg_loss, pg_clipfrac


def openrlhf_policy_loss(log_probs, old_log_probs, advantages, action_mask, eps_low, eps_high):
    """OpenRLHF PolicyLoss with per-sequence mean, as written there."""
    ratio = (log_probs - old_log_probs).exp()
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1 - eps_low, 1 + eps_high) * advantages
    loss = -torch.min(surr1, surr2)
    return ((loss * action_mask).sum(dim=-1) / action_mask.sum(dim=-1)).mean()


def test_policy_loss_matches_trl_and_openrlhf():
    new, old, advantages, *_, mask = random_batch(seed=1)
    loss, stats = policy_loss(new, old, advantages, mask, clip_coef=0.2, agg="token")
    ref_loss, ref_clipfrac = trl_policy_loss(new, old, advantages, ~mask, 0.2)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(stats["clipfrac"], ref_clipfrac)
    assert 0 < stats["clipfrac"] < 1
    (grad,) = torch.autograd.grad(loss, new)
    (ref_grad,) = torch.autograd.grad(ref_loss, new)
    torch.testing.assert_close(grad, ref_grad)
    loss, _ = policy_loss(new, old, advantages, mask, clip_coef=0.1, clip_coef_high=0.3, agg="sequence")
    torch.testing.assert_close(loss, openrlhf_policy_loss(new, old, advantages, mask.double(), 0.1, 0.3))


@pytest.mark.parametrize("agg", list(AGGREGATIONS))
def test_policy_loss_masked_tokens_change_nothing(agg):
    new, old, advantages, *_, mask = random_batch(seed=2)
    loss, stats = policy_loss(new, old, advantages, mask, agg=agg, n=2)
    (grad,) = torch.autograd.grad(loss, new)
    big = torch.full_like(old, 1e4)
    new2 = torch.where(mask, new.detach(), big).requires_grad_()  # exp(1e4) overflows if it leaks
    old2, advantages2 = torch.where(mask, old, -big), torch.where(mask, advantages, big)
    loss2, stats2 = policy_loss(new2, old2, advantages2, mask, agg=agg, n=2)
    (grad2,) = torch.autograd.grad(loss2, new2)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)
    assert grad2[~mask].abs().sum() == 0
    for key in ("clipfrac", "approx_kl"):
        torch.testing.assert_close(stats2[key], stats[key])


# --- value loss -------------------------------------------------------------------------------


def test_value_loss_hand_example():
    values = torch.tensor([[1.5, 0.9, 7.0]])
    old_values = torch.tensor([[1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_coef_value=0.2)
    # token 0: clip(1.5) = 1.2, max(0.25, 0.64) = 0.64; token 1: inside the clip, 0.01
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("clip", [0.2, None])
def test_value_loss_nan_at_masked_positions_reaches_neither_loss_nor_gradient(clip):
    values = torch.tensor([[1.5, 0.9, 7.0]], requires_grad=True)
    old_values, returns = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = value_loss(values, old_values, returns, mask, clip_coef_value=clip)
    (grad,) = torch.autograd.grad(loss, values)
    nan = torch.tensor([[0.0, 0.0, float("nan")]])
    values2 = (values.detach() + nan).requires_grad_()
    loss2, _ = value_loss(values2, old_values + nan, returns + nan, mask, clip_coef_value=clip)
    (grad2,) = torch.autograd.grad(loss2, values2)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)
    assert torch.isfinite(grad2).all() and grad2[0, 2] == 0
    loss, _ = value_loss(values, old_values, returns, mask, clip_coef_value=None)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.01) / 2)


def trl_value_loss(vpred, mb_values, mb_return, padding_mask, cliprange_value):
    """TRL PPOTrainer's value loss, as written there (padding_mask is True on padding)."""
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    keep = (~padding_mask).float()
    vf_loss = 0.5 * (vf_loss_max * keep).sum() / keep.sum()
    vf_clipfrac = ((vf_losses2 > vf_losses1).float() * keep).sum() / keep.sum()
    return vf_loss, vf_clipfrac


def openrlhf_value_loss(values, old_values, returns, action_mask, clip_eps):
    """OpenRLHF ValueLoss with per-sequence mean, as written there."""
    values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    surr1 = (values_clipped - returns) ** 2
    surr2 = (values - returns) ** 2
    loss = torch.max(surr1, surr2)
    return 0.5 * ((loss * action_mask).sum(dim=-1) / action_mask.sum(dim=-1)).mean()


def test_value_loss_matches_trl_and_openrlhf():
    *_, values, old_values, returns, mask = random_batch(seed=3)
    loss, stats = value_loss(values, old_values, returns, mask, clip_coef_value=0.2)
    ref_loss, ref_clipfrac = trl_value_loss(values, old_values, returns, ~mask, 0.2)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(stats["vf_clipfrac"], ref_clipfrac)
    assert 0 < stats["vf_clipfrac"] < 1
    torch.testing.assert_close(torch.autograd.grad(loss, values), torch.autograd.grad(ref_loss, values))
    loss, _ = value_loss(values, old_values, returns, mask, clip_coef_value=0.3, agg="sequence")
    torch.testing.assert_close(loss, openrlhf_value_loss(values, old_values, returns, mask.double(), 0.3))


def test_value_loss_masked_tokens_change_nothing():
    *_, values, old_values, returns, mask = random_batch(seed=4)
    loss, stats = value_loss(values, old_values, returns, mask, agg="group", n=3)
    big = torch.full_like(returns, 1e3)
    loss2, stats2 = value_loss(
        values, torch.where(mask, old_values, -big), torch.where(mask, returns, big), mask, agg="group", n=3
    )
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(stats2["vf_clipfrac"], stats["vf_clipfrac"])
    (grad,) = torch.autograd.grad(loss2, values)
    assert grad[~mask].abs().sum() == 0


# --- entropy ----------------------------------------------------------------------------------


def test_entropy_hand_example():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    # uniform over 4 -> log 4; probabilities (1/4, 3/4, 0, 0) -> -(1/4 log 1/4 + 3/4 log 3/4)
    expected = torch.tensor([[math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]])
    torch.testing.assert_close(entropy_from_logits(logits), expected)


def test_entropy_is_shift_invariant_and_stable():
    logits = torch.randn(2, 3, 11, dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(logits + 1e4), entropy_from_logits(logits))
    assert torch.isfinite(entropy_from_logits(logits.float() * 1e4)).all()


def test_entropy_matches_reference_loop():
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    ref = torch.zeros(2, 3, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            ref[b, t] = -sum(q * math.log(q) for q in p)
    torch.testing.assert_close(entropy_from_logits(logits), ref)


# --- KL ---------------------------------------------------------------------------------------


def test_kl_penalty_hand_example():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty_masked_tokens_are_zero(estimator):
    logp = -torch.rand(3, 4, dtype=torch.float64)
    ref = -torch.rand(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    kl = kl_penalty(logp, ref, estimator, mask)
    torch.testing.assert_close(kl, kl_penalty(logp, ref, estimator) * mask)
    junk = torch.where(mask.bool(), ref, torch.full_like(ref, -1e4))  # exp(1e4) if it leaks
    torch.testing.assert_close(kl_penalty(logp, junk, estimator, mask), kl)


def test_k1_and_k3_are_unbiased_for_the_exact_kl():
    p = torch.softmax(torch.randn(9, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(9, dtype=torch.float64), 0)
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    for estimator in ("k1", "k3"):  # expectation over tokens drawn from p, weighted exactly
        expected = (p * kl_penalty(p.log()[None], q.log()[None], estimator)[0]).sum().item()
        assert expected == pytest.approx(exact)
    assert (kl_penalty(p.log()[None], q.log()[None], "k3") >= 0).all()


def test_unknown_kl_estimator_lists_valid_names():
    with pytest.raises(KeyError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# --- KL controllers ---------------------------------------------------------------------------


def test_adaptive_kl_controller_hand_example():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=256)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    before = ctl.value
    ctl.update(current_kl=5.7, n_steps=100)  # error -0.05
    assert ctl.value == pytest.approx(before * (1 - 0.05 * 100 / 10000))
    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=256)
    assert fixed.value == 0.05


def test_adaptive_kl_controller_matches_trl_loop():
    kls = [0.5, 3.0, 9.0, 6.0, 20.0, 0.0]
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=1000)
    value = 0.2
    for kl in kls:  # TRL AdaptiveKLController.update, as written there
        proportional_error = min(max(kl / 6.0 - 1, -0.2), 0.2)
        mult = 1 + proportional_error * 64 / 1000
        value *= mult
        ctl.update(kl, 64)
        assert ctl.value == pytest.approx(value)


# --- rollout engine vs trainer log-probs ------------------------------------------------------


def test_logprob_gap_hand_example():
    engine = torch.tensor([[-1.0, -2.0, -9.0]])
    trainer = torch.tensor([[-1.0, -1.5, 4.0]])
    gap = logprob_gap(engine, trainer, torch.tensor([[1, 1, 0]]))
    assert gap["gap_mean"].item() == pytest.approx(0.25) and gap["gap_max"].item() == pytest.approx(0.5)
    ratios = [1.0, math.exp(0.5)]
    mean = sum(ratios) / 2
    assert gap["ratio_std"].item() == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in ratios) / 2))


def test_logprob_gap_masked_tokens_change_nothing_and_equal_logprobs_give_zero():
    new, old, *_, mask = random_batch(seed=5)
    gap = logprob_gap(old, new, mask)
    garbage = torch.where(mask, old, torch.full_like(old, float("nan")))
    for key, value in logprob_gap(garbage, new, mask).items():
        torch.testing.assert_close(value, gap[key])
    assert all(v.item() == 0 for v in logprob_gap(new, new, mask).values())


def test_logprob_gap_matches_a_reference_loop():
    new, old, *_, mask = random_batch(seed=6)
    diffs = [(new[b, t] - old[b, t]).item() for b in range(new.shape[0]) for t in range(new.shape[1]) if mask[b, t]]
    ratios = [math.exp(d) for d in diffs]
    mean = sum(ratios) / len(ratios)
    gap = logprob_gap(old, new, mask)
    assert gap["gap_mean"].item() == pytest.approx(sum(abs(d) for d in diffs) / len(diffs))
    assert gap["gap_max"].item() == pytest.approx(max(abs(d) for d in diffs))
    assert gap["ratio_std"].item() == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in ratios) / len(ratios)))
