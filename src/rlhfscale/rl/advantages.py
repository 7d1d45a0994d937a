"""Advantage estimators for PPO, GRPO, RLOO and REINFORCE++, chosen by name from `ESTIMATORS`.

Every estimator has the same signature, so the trainer calls any of them by name:

    fn(token_rewards [B, T], mask [B, T], *, n=1, values=None, gamma=1.0, gae_lambda=1.0,
       norm_std=True, eps=1e-6) -> (advantages [B, T], returns [B, T])

`token_rewards` holds the reward of each response token: an outcome reward on the last valid token,
process rewards on step-end tokens, per-token KL penalties added by the caller. B = num_prompts * n
with the n responses of a prompt contiguous, so `.view(num_prompts, n)` groups them. Tokens with
mask 0 are skipped: they get advantage and return 0, and nothing stored under them reaches a valid
token (a discounted sum steps from one valid token to the next valid one). Arguments an estimator
does not use are accepted and ignored.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
from torch import Tensor

from rlhfscale.registry import Registry
from rlhfscale.rl.losses import masked_mean, masked_whiten

Estimator = Callable[..., tuple[Tensor, Tensor]]


def discounted_cumsum(x: Tensor, mask: Tensor, discount: float) -> Tensor:
    """Reverse discounted sum over valid tokens: y_t = x_t + discount · y_{next valid t' > t}.

    x: [B, T]; mask: [B, T]. Returns [B, T], 0 at masked positions.
    """
    valid = mask.bool()
    running = torch.zeros_like(x[:, 0])
    out = []
    for t in reversed(range(x.shape[1])):
        running = torch.where(valid[:, t], x[:, t] + discount * running, running)
        out.append(running)
    return torch.stack(out[::-1], dim=1).masked_fill(~valid, 0.0)


def next_valid(x: Tensor, mask: Tensor) -> Tensor:
    """x at the next valid position after each t, 0 past the last one. [B, T] -> [B, T]."""
    B, T = x.shape
    positions = torch.arange(T, device=x.device).expand(B, T)
    first_at_or_after = torch.where(mask.bool(), positions, T).flip(-1).cummin(-1).values.flip(-1)
    first_after = torch.cat([first_at_or_after[:, 1:], torch.full_like(positions[:, :1], T)], dim=1)
    return torch.cat([x, torch.zeros_like(x[:, :1])], dim=1).gather(1, first_after)


def normalize(x: Tensor, mask: Tensor, norm_std: bool, eps: float) -> Tensor:
    """Whiten x over all valid tokens of the batch (only center it when norm_std is False). [B, T]."""
    if norm_std:
        return masked_whiten(x, mask, eps=eps)
    return (x - masked_mean(x, mask)).masked_fill(~mask.bool(), 0.0)


@functools.cache
def _warn_no_groups(name: str) -> None:
    warnings.warn(
        f"{name}: n=1 response per prompt forms no group; using the whole batch as the group",
        stacklevel=4,
    )


def group_scores(token_rewards: Tensor, mask: Tensor, n: int, name: str) -> Tensor:
    """Outcome score per response (sum of its valid token rewards), grouped: [B, T] -> [B // n, n].

    With n == 1 there is no group; the whole batch becomes one group [1, B] (warned once).
    """
    B = token_rewards.shape[0]
    if B % n:
        raise ValueError(f"{name}: batch of {B} responses is not a multiple of n={n}")
    scores = token_rewards.masked_fill(~mask.bool(), 0.0).sum(dim=-1)
    if n == 1:
        _warn_no_groups(name)
        return scores.view(1, B)
    return scores.view(B // n, n)


def gae(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    n: int = 1,
    values: Tensor | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation with a learned critic (PPO).

    δ_t = r_t + γ V_{t+1} - V_t (V = 0 after the last valid token), A_t = Σ_k (γλ)^k δ_{t+k}.
    values: [B, T], required. returns = A + V (unwhitened: the critic's targets). The advantages are
    then whitened over all valid tokens of the batch (centered only when norm_std is False).
    Returns (advantages [B, T], returns [B, T]).
    """
    if values is None:
        raise ValueError("gae needs `values` from a critic")
    valid = mask.bool()
    values = values.masked_fill(~valid, 0.0)
    deltas = token_rewards + gamma * next_valid(values, valid) - values
    advantages = discounted_cumsum(deltas, valid, gamma * gae_lambda)
    returns = (advantages + values).masked_fill(~valid, 0.0)
    return normalize(advantages, valid, norm_std, eps), returns


def grpo(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    n: int = 1,
    values: Tensor | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """GRPO (Shao et al. 2024): A_i = (s_i - mean(s_group)) / (std(s_group) + eps) on every valid token.

    s_i is the sum of response i's valid token rewards; std is the sample std (Bessel-corrected, as
    in TRL and verl); norm_std False drops the division. With n == 1 the batch is the group.
    Returns (advantages [B, T], returns [B, T]); returns equal advantages (there is no critic).
    """
    scores = group_scores(token_rewards, mask, n, "grpo")
    advantages = scores - scores.mean(dim=1, keepdim=True)
    if norm_std:
        correction = 1 if scores.shape[1] > 1 else 0
        advantages = advantages / (scores.std(dim=1, keepdim=True, correction=correction) + eps)
    advantages = advantages.reshape(-1, 1) * mask
    return advantages, advantages


def rloo(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    n: int = 1,
    values: Tensor | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """RLOO (Ahmadian et al. 2024): A_i = s_i - mean_{j≠i} s_j within the group, on every valid token.

    s_i is the sum of response i's valid token rewards. With n == 1 the batch is the group
    (leave-one-out over the batch; a batch of one keeps its raw score). norm_std is ignored.
    Returns (advantages [B, T], returns [B, T]); returns equal advantages (there is no critic).
    """
    scores = group_scores(token_rewards, mask, n, "rloo")
    k = scores.shape[1]
    baseline = (scores.sum(dim=1, keepdim=True) - scores) / max(k - 1, 1)
    advantages = (scores - baseline).reshape(-1, 1) * mask
    return advantages, advantages


def reinforce_pp(
    token_rewards: Tensor,
    mask: Tensor,
    *,
    n: int = 1,
    values: Tensor | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 1.0,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): G_t = Σ_k γ^k r_{t+k}, whitened over all valid tokens of the batch.

    norm_std False only centers. Returns (advantages [B, T], returns [B, T] = G unwhitened).
    """
    returns = discounted_cumsum(token_rewards, mask, gamma)
    return normalize(returns, mask, norm_std, eps), returns


ESTIMATORS: Registry[Estimator] = Registry.of(
    "advantage estimator", {"gae": gae, "grpo": grpo, "rloo": rloo, "reinforce++": reinforce_pp})
get_advantage = ESTIMATORS.get
