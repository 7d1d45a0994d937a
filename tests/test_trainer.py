"""The RL trainer's wiring: reward placement, shaping by config, KL placement, minibatches, diagnostics,
FLOPs accounting, reward sources and the critic's alignment with the response tokens."""

import pytest
import torch

from rlhfscale.config import RLConfig
from rlhfscale.models.critic import critic_from_policy, token_values
from rlhfscale.models.io import new_policy
from rlhfscale.rewards.shaping import RunningMeanStd
from rlhfscale.rm.sources import Reward, Source
from rlhfscale.rl.trainer import (
    NonFiniteError,
    check_finite,
    explained_variance,
    kl_in_reward,
    minibatches,
    response_values,
    shape_scores,
    step_flops,
    token_rewards,
)
from rlhfscale.rollout.sampler import Rollout


def test_outcome_score_lands_on_the_last_valid_token_and_dense_rewards_stay_where_they_are():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    dense = torch.tensor([[0.0, 0.5, 0.0, 0.9], [0.25, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0, -2.0, 7.0]), dense, mask)
    expected = torch.tensor([
        [0.0, 0.5, 1.0, 0.0],  # outcome on token 2; the dense 0.9 sits on a pad and is dropped
        [0.25, -2.0, 0.0, 0.0],  # outcome on token 1
        [0.0, 0.0, 0.0, 0.0],  # an empty response gets nothing
    ])  # fmt: skip
    torch.testing.assert_close(rewards, expected)


def test_outcome_and_dense_reward_on_the_same_token_add_up():
    mask = torch.ones(1, 3)
    rewards = token_rewards(torch.tensor([1.0]), torch.tensor([[0.2, 0.0, 0.5]]), mask)
    torch.testing.assert_close(rewards, torch.tensor([[0.2, 0.0, 1.5]]))


def test_shaping_follows_the_config():
    scores = torch.tensor([0.0, 1.0, 2.0, 5.0])
    lengths = torch.tensor([3, 10, 4, 4])
    none = shape_scores(scores, lengths, 2, RLConfig(), RunningMeanStd())
    torch.testing.assert_close(none, scores)

    group = shape_scores(scores, lengths, 2, RLConfig(shaping="normalize", norm_mode="group"), RunningMeanStd())
    torch.testing.assert_close(group, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)

    # r0 = batch mean 2: deviations -2, -1, 0, 3 -> negatives x1.0, positives x0.5, then clamp to [-1.5, 1.5]
    rl = RLConfig(shaping="asymmetric", shrink_pos=0.5, shrink_neg=1.0, shrink_reference="batch", shrink_bound=1.5)
    torch.testing.assert_close(shape_scores(scores, lengths, 2, rl, RunningMeanStd()), torch.tensor([0.0, 1.0, 1.5, 1.5]))

    # length penalty 0.1 per token beyond 4, then clip to [-1, 1]
    rl = RLConfig(length_penalty=0.1, length_target=4, reward_clip=1.0)
    torch.testing.assert_close(shape_scores(scores, lengths, 2, rl, RunningMeanStd()), torch.tensor([0.0, 0.4, 1.0, 1.0]))


def test_running_normalization_keeps_its_statistics_across_calls():
    running, rl = RunningMeanStd(), RLConfig(shaping="normalize", norm_mode="running")
    shape_scores(torch.tensor([0.0, 2.0]), torch.ones(2), 1, rl, running)
    second = shape_scores(torch.tensor([4.0, 6.0]), torch.ones(2), 1, rl, running)
    # all four scores seen: mean 3, population std sqrt(5)
    torch.testing.assert_close(second, (torch.tensor([4.0, 6.0]) - 3) / (5**0.5 + 1e-6))


@pytest.mark.parametrize("algorithm, kl_in, in_reward", [
    ("ppo", "auto", True), ("reinforce++", "auto", True), ("grpo", "auto", False), ("rloo", "auto", False),
    ("grpo", "reward", True), ("ppo", "loss", False),
])  # fmt: skip
def test_kl_placement(algorithm, kl_in, in_reward):
    assert kl_in_reward(RLConfig(algorithm=algorithm, kl_in=kl_in)) is in_reward


def test_minibatches_cover_every_row_once_and_keep_groups_whole():
    chunks = minibatches(16, 4, 2, torch.Generator().manual_seed(0))
    assert [len(c) for c in chunks] == [8, 8]
    assert sorted(torch.cat(chunks).tolist()) == list(range(16))
    for chunk in chunks:
        for group in chunk.view(-1, 4):
            assert group.tolist() == list(range(group[0].item(), group[0].item() + 4)) and group[0] % 4 == 0
    shuffled = minibatches(12, 1, 3, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(shuffled).tolist()) == list(range(12)) and torch.cat(shuffled).tolist() != list(range(12))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # residuals 1, 0, -1 around values 0, 2, 4: Var = 2/3 of Var(returns) = 2/3 -> 1 - 1 = 0
    assert explained_variance(torch.tensor([[0.0, 2.0, 4.0, 0.0]]), returns, mask) == pytest.approx(0.0, abs=1e-6)
    assert explained_variance(torch.tensor([[1.5, 2.0, 2.5, 0.0]]), returns, mask) == pytest.approx(0.75)


def test_step_flops():
    # GRPO, 2 epochs, no critic, one RM of 50 params: (2 sample + 2 ref + 6*2 train) * 100 + 2 * 50 per token
    assert step_flops(10, RLConfig(epochs=2), 100, 0, 50) == 10 * (16 * 100 + 100)
    # PPO: the critic (40 params) forwards once at rollout and trains every epoch
    assert step_flops(10, RLConfig(epochs=1), 100, 40, 0) == 10 * (10 * 100 + 8 * 40)


def test_check_finite_names_step_and_quantity():
    check_finite(3, reward=torch.tensor([1.0, 2.0]))
    with pytest.raises(NonFiniteError, match=r"step 3: loss is not finite"):
        check_finite(3, reward=torch.tensor([1.0]), loss=torch.tensor(float("nan")))


def _rollout(response_mask):
    B, R = response_mask.shape
    return Rollout(torch.ones(B, 2, dtype=torch.long), torch.ones(B, 2, dtype=torch.long),
                   torch.ones(B, R, dtype=torch.long), response_mask, torch.zeros(B, R))


class Verifier:
    name = "toy"

    def score(self, example, response):
        return float(response == "right")


def test_reward_weights_outcome_and_dense_sources_and_always_reports_gold():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rm = Source(lambda ex, resp, ro: torch.tensor([0.5, -1.0]), params=7)
    prm = Source(lambda ex, resp, ro: torch.tensor([[0.0, 0.2, 0.4], [0.6, 0.0, 0.0]]), dense=True, params=3)
    rule = Source(lambda ex, resp, ro: torch.tensor([Verifier().score(e, r) for e, r in zip(ex, resp)]))
    reward = Reward(Verifier(), {"orm": (2.0, rm), "prm": (0.5, prm), "rule": (1.0, rule)})
    out = reward([None, None], ["right", "wrong"], _rollout(mask))
    torch.testing.assert_close(out.scores, torch.tensor([2.0 * 0.5 + 1.0, 2.0 * -1.0]))
    torch.testing.assert_close(out.dense, torch.tensor([[0.0, 0.1, 0.2], [0.3, 0.0, 0.0]]))
    torch.testing.assert_close(out.gold, torch.tensor([1.0, 0.0]))
    assert out.parts == pytest.approx({"rl/reward_orm": -0.25, "rl/reward_prm": 0.6, "rl/reward_rule": 0.5})
    assert reward.params == 10

    proxy_only = Reward(Verifier(), {"orm": (1.0, rm)})(["a", "b"], ["right", "right"], _rollout(mask))
    torch.testing.assert_close(proxy_only.gold, torch.tensor([1.0, 1.0]))  # gold beside a proxy that ignores it


def test_critic_reads_the_state_before_each_response_token():
    policy, _ = new_policy("nano", 0, 64)
    critic = critic_from_policy(policy)
    ids = torch.randint(4, 50, (2, 7))
    attn = torch.ones_like(ids)
    assert token_values(critic, ids, attn).abs().max() == 0  # a zero head: every value starts at 0
    torch.nn.init.normal_(critic.score.weight)
    values = response_values(critic, ids, attn, prompt_len=3)  # 4 response tokens
    assert values.shape == (2, 4)
    # the value of response token t (position 3 + t) is read at position 2 + t: it sees only the prefix
    torch.testing.assert_close(values, token_values(critic, ids, attn)[:, 2:6])
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50 + 4
    torch.testing.assert_close(response_values(critic, changed, attn, prompt_len=3), values)
    # the backbone is the policy's, copied: training the critic leaves the policy alone
    assert critic.model.layers[0].mlp.up_proj.weight.data_ptr() != policy.model.layers[0].mlp.up_proj.weight.data_ptr()
    torch.testing.assert_close(critic.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
