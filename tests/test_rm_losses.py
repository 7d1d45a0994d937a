import math

import pytest
import torch

from rlhfscale.rewards.losses import (
    bce_loss, bt_loss, likelihood_reward, multitask_loss, next_token_loss, pair_accuracy, prm_loss, token_bce_loss,
)

LN3 = math.log(3.0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def softplus(x):
    return math.log1p(math.exp(x)) if x < 30 else x


def bce_ref(logit, label):
    """-[y log σ(z) + (1 - y) log(1 - σ(z))] = softplus(z) - y z."""
    return softplus(logit) - label * logit


# --- Bradley–Terry ----------------------------------------------------------------------------


def test_bt_hand_example():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log σ(1) = 0.3132617, -log σ(-1) = 1.3132617
    assert bt_loss(chosen, rejected).item() == pytest.approx(0.8132617, abs=1e-6)
    # with margins [0.5, 0]: -log σ(0.5) = 0.4740770
    assert bt_loss(chosen, rejected, torch.tensor([0.5, 0.0])).item() == pytest.approx(0.8936693, abs=1e-6)


def test_bt_gradient_and_stability():
    chosen = torch.tensor([0.0, -100.0], requires_grad=True)
    loss = bt_loss(chosen, torch.tensor([0.0, 0.0]))
    loss.backward()
    assert loss.item() == pytest.approx((math.log(2) + 100.0) / 2)  # not inf for a far-wrong pair
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.25, -0.5]))  # -σ(r_r - r_c) / B


def test_bt_invariant_to_shifting_both_rewards():
    c, r, m = randn(16, seed=1), randn(16, seed=2), randn(16, seed=3).abs()
    torch.testing.assert_close(bt_loss(c + 7.0, r + 7.0, m), bt_loss(c, r, m))


def test_bt_matches_reference_loop():
    c, r, m = randn(32, seed=4), randn(32, seed=5), randn(32, seed=6)
    expected = sum(softplus(-(ci - ri - mi)) for ci, ri, mi in zip(c.tolist(), r.tolist(), m.tolist())) / 32
    assert bt_loss(c, r, m).item() == pytest.approx(expected, rel=1e-9)


# --- BCE --------------------------------------------------------------------------------------


def test_bce_hand_example_hard_and_soft_labels():
    # log 2 = 0.6931472, softplus(2) = 2.1269280
    loss = bce_loss(torch.tensor([0.0, 2.0]), torch.tensor([True, False]))
    assert loss.item() == pytest.approx(1.4100376, abs=1e-6)
    # σ(ln 3) = 0.75 with soft label 0.25: -(0.25 ln 0.75 + 0.75 ln 0.25) = 1.1116414
    assert bce_loss(torch.tensor([LN3]), torch.tensor([0.25])).item() == pytest.approx(1.1116414, abs=1e-6)


def test_bce_hard_labels_as_bool_int_or_float_agree():
    scores = randn(8, seed=7)
    labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    expected = bce_loss(scores, labels.double())
    torch.testing.assert_close(bce_loss(scores, labels.bool()), expected)
    torch.testing.assert_close(bce_loss(scores, labels), expected)


def test_bce_matches_reference_loop():
    scores, labels = randn(20, seed=8) * 3, rand(20, seed=9)
    expected = sum(bce_ref(z, y) for z, y in zip(scores.tolist(), labels.tolist())) / 20
    assert bce_loss(scores, labels).item() == pytest.approx(expected, rel=1e-9)


# --- multi-task -------------------------------------------------------------------------------


def test_multitask_hand_example():
    loss, stats = multitask_loss(
        torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]), weight=0.25
    )
    # 0.25 * 0.3132617 + 0.75 * 0.6931472
    assert loss.item() == pytest.approx(0.5981758, abs=1e-6)
    assert stats["bt"] == pytest.approx(0.3132617, abs=1e-6)
    assert stats["bce"] == pytest.approx(0.6931472, abs=1e-6)
    assert (stats["pair_acc"], stats["n_pairs"], stats["n_labels"]) == (1.0, 1.0, 1.0)


def test_multitask_empty_part_contributes_nothing():
    c, r, s, y = randn(4, seed=1), randn(4, seed=2), randn(5, seed=3), (randn(5, seed=4) > 0).double()
    empty = torch.zeros(0, dtype=torch.float64)
    s.requires_grad_(True)
    only_cls, stats = multitask_loss(empty, empty, s, y, weight=0.3)
    only_cls.backward()
    torch.testing.assert_close(only_cls, 0.7 * bce_loss(s, y))
    assert "bt" not in stats and "pair_acc" not in stats and torch.isfinite(s.grad).all()
    only_pairs, stats = multitask_loss(c, r, empty, empty, weight=0.3)
    torch.testing.assert_close(only_pairs, 0.3 * bt_loss(c, r))
    assert "bce" not in stats
    with pytest.raises(ValueError, match="no preference pairs and no labelled responses"):
        multitask_loss(empty, empty, empty, empty, weight=0.5)
    with pytest.raises(ValueError, match="weight"):
        multitask_loss(c, r, s, y, weight=1.5)


def test_multitask_matches_reference_loop():
    c, r, s, y = randn(6, seed=5), randn(6, seed=6), randn(3, seed=7), rand(3, seed=8)
    w = 0.6
    bt = sum(softplus(-(ci - ri)) for ci, ri in zip(c.tolist(), r.tolist())) / 6
    bce = sum(bce_ref(z, t) for z, t in zip(s.tolist(), y.tolist())) / 3
    loss, _ = multitask_loss(c, r, s, y, weight=w)
    assert loss.item() == pytest.approx(w * bt + (1 - w) * bce, rel=1e-9)


# --- PRM --------------------------------------------------------------------------------------


def test_prm_hand_example():
    scores = torch.tensor([[0.0, 2.0], [LN3, 9.0]])
    labels = torch.tensor([[1.0, 0.0], [0.25, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # mean over the 3 valid steps of 0.6931472, 2.1269280, 1.1116414
    assert prm_loss(scores, labels, mask).item() == pytest.approx(1.3105722, abs=1e-6)
    assert prm_loss(scores, labels, torch.zeros_like(mask)).item() == 0.0


def test_prm_masked_steps_change_nothing():
    scores, labels = randn(3, 5, seed=1), rand(3, 5, seed=2)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    base = prm_loss(scores, labels, mask)
    garbage_scores = torch.where(mask, scores, torch.tensor([float("nan"), float("inf"), -1e9]).repeat(5)[:5])
    garbage_scores.requires_grad_(True)
    garbage_labels = torch.where(mask, labels, 7.0)
    loss = prm_loss(garbage_scores, garbage_labels, mask)
    loss.backward()
    torch.testing.assert_close(loss, base)
    assert torch.isfinite(garbage_scores.grad).all() and (garbage_scores.grad[~mask] == 0).all()


def test_prm_matches_reference_loop():
    scores, labels = randn(4, 6, seed=3) * 2, rand(4, 6, seed=4)
    lengths = [6, 2, 0, 4]
    mask = torch.arange(6) < torch.tensor(lengths).unsqueeze(-1)
    terms = [
        bce_ref(scores[b, s].item(), labels[b, s].item())
        for b, n in enumerate(lengths) for s in range(n)
    ]
    assert prm_loss(scores, labels, mask).item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


# --- pair accuracy ----------------------------------------------------------------------------


def test_pair_accuracy_hand_example_ties_count_half():
    assert pair_accuracy(torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([1.0, 2.0, 2.0, -1.0])) == 0.625


def test_pair_accuracy_swapping_sides_complements():
    c, r = randn(50, seed=1).round(), randn(50, seed=2).round()  # rounding makes ties
    assert (c == r).any()
    assert pair_accuracy(c, r) + pair_accuracy(r, c) == pytest.approx(1.0)


def test_pair_accuracy_matches_reference_loop():
    c, r = randn(40, seed=3).round(), randn(40, seed=4).round()
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(c.tolist(), r.tolist()))
    assert pair_accuracy(c, r) == pytest.approx(wins / 40)


# --- token-level outcome BCE -------------------------------------------------------------------


def test_token_bce_hand_example():
    scores = torch.tensor([[0.0, 2.0, 5.0], [LN3, 9.0, 9.0]])
    labels = torch.tensor([0.0, 0.25])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    # mean over the 3 valid tokens of softplus(0) - 0, softplus(2) - 0, softplus(ln 3) - 0.25 ln 3
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log(4) - 0.25 * LN3) / 3
    assert token_bce_loss(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_token_bce_masked_tokens_change_nothing_and_one_token_is_plain_bce():
    scores, labels = randn(3, 5, seed=5), rand(3, seed=6)
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    garbage = torch.where(mask, scores, torch.tensor(float("nan"))).requires_grad_(True)
    loss = token_bce_loss(garbage, labels, mask)
    loss.backward()
    torch.testing.assert_close(loss, token_bce_loss(scores, labels, mask))
    assert (garbage.grad[~mask] == 0).all()
    last = torch.zeros_like(mask)
    last[:, -1] = True  # one token per response: the last-token BCE
    torch.testing.assert_close(token_bce_loss(scores, labels, last), bce_loss(scores[:, -1], labels))


def test_token_bce_matches_reference_loop_and_multitask_uses_it():
    scores, labels = randn(4, 6, seed=7) * 2, rand(4, seed=8)
    lengths = [6, 2, 1, 4]
    mask = torch.arange(6) >= 6 - torch.tensor(lengths).unsqueeze(-1)  # response tokens on the right
    terms = [bce_ref(scores[b, t].item(), labels[b].item()) for b, n in enumerate(lengths) for t in range(6 - n, 6)]
    assert token_bce_loss(scores, labels, mask).item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    empty = torch.zeros(0, dtype=torch.float64)
    loss, stats = multitask_loss(empty, empty, scores, labels, weight=0.0, cls_mask=mask)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9) and stats["n_labels"] == 4


# --- next-token (LM) loss ---------------------------------------------------------------------


def test_next_token_loss_hand_example():
    # V = 2, W = I: logits are the hidden states. Targets: x_1 = 1 after h_0 = [0, ln 3] (p = 3/4)
    # and x_2 = 0 after h_1 = [0, 0] (p = 1/2); x_3 is not a target.
    hidden = torch.tensor([[[0.0, LN3], [0.0, 0.0], [5.0, -5.0], [1.0, 2.0]]])
    ids = torch.tensor([[0, 1, 0, 1]])
    mask = torch.tensor([[False, True, True, False]])
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert next_token_loss(hidden, torch.eye(2), ids, mask).item() == pytest.approx(expected, abs=1e-6)


def test_next_token_loss_masked_tokens_and_column_zero_change_nothing():
    hidden, weight = randn(3, 6, 4), randn(5, 4, seed=1)
    ids = torch.randint(5, (3, 6), generator=torch.Generator().manual_seed(2))
    mask = rand(3, 6, seed=3) > 0.4
    base = next_token_loss(hidden, weight, ids, mask)
    other_hidden, other_ids = hidden.clone(), ids.clone()
    last_free = ~mask[:, 1:].clone()  # positions whose next token is not a target
    other_hidden[:, :-1][last_free] = 100.0
    other_hidden[:, -1] = -7.0  # the last position predicts nothing
    other_ids[~mask] = (other_ids[~mask] + 1) % 5
    mask_col0 = mask.clone()
    mask_col0[:, 0] = ~mask[:, 0]
    assert next_token_loss(other_hidden, weight, other_ids, mask_col0).item() == pytest.approx(base.item(), abs=1e-6)
    assert next_token_loss(hidden, weight, ids, torch.zeros_like(mask)).item() == 0.0


def test_next_token_loss_matches_reference_loop():
    hidden, weight = randn(2, 5, 3), randn(7, 3, seed=1)
    ids = torch.randint(7, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = rand(2, 5, seed=3) > 0.3
    total, count = 0.0, 0
    for b in range(2):
        for t in range(1, 5):
            if mask[b, t]:
                logits = [sum(hidden[b, t - 1, d].item() * weight[v, d].item() for d in range(3)) for v in range(7)]
                top = max(logits)
                log_z = top + math.log(sum(math.exp(z - top) for z in logits))
                total += log_z - logits[ids[b, t]]
                count += 1
    assert next_token_loss(hidden, weight, ids, mask).item() == pytest.approx(total / count, abs=1e-6)  # float32


# --- the likelihood reward (SimPO) -----------------------------------------------------------------------------


def test_likelihood_reward_hand_example():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # beta 2: 2 * (-6 / 3) = -4; 2 * (-0.5 / 1) = -1; a row without tokens scores 0
    torch.testing.assert_close(likelihood_reward(logprobs, mask, 2.0), torch.tensor([-4.0, -1.0]))
    assert likelihood_reward(logprobs[:1], torch.zeros(1, 3), 2.0).item() == 0.0


def test_likelihood_reward_masked_tokens_change_nothing():
    logprobs, mask = -rand(3, 5, seed=5) * 4, torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    base = likelihood_reward(logprobs, mask, 1.5)
    garbage = torch.where(mask.bool(), logprobs, torch.tensor([float("nan"), float("-inf"), 1e9, 3.0, 0.0]))
    garbage.requires_grad_(True)
    reward = likelihood_reward(garbage, mask, 1.5)
    reward.sum().backward()
    torch.testing.assert_close(reward, base.float())
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[~mask.bool()] == 0).all()


def test_likelihood_reward_matches_reference_loop():
    logprobs, beta = -rand(4, 6, seed=6) * 3, 2.5
    mask = torch.arange(6) < torch.tensor([6, 2, 1, 4]).unsqueeze(-1)
    ref = [beta * sum(logprobs[b, :n].tolist()) / n for b, n in enumerate([6, 2, 1, 4])]
    assert likelihood_reward(logprobs, mask, beta).tolist() == pytest.approx(ref, rel=1e-6)
