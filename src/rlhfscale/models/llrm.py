"""Likelihood reward models: a causal LM that scores a response by its length-normalized log-likelihood,
r = β / |y| · log π(y | x) (SimPO's reference-free implicit reward, Meng et al. 2024), trained with the
Bradley–Terry loss on preference pairs through that score (`rewards.losses.likelihood_reward`).

Started from a policy that learned to write the task's solutions, the score is informative before any
training: a wrong step is a token the model itself finds unlikely. The model stays a plain
`<Arch>ForCausalLM`; its config carries ``likelihood_rm = {"beta": β}``, so a saved folder loads with
`AutoModelForCausalLM` and nothing of ours, and `models.reward.load_reward_model` recognises it.

Layout: the rollout layout (``ids, attn [B, T]``, the response in the last R columns, ``response_mask [B, R]``).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from ..rewards.losses import likelihood_reward
from .forward import token_logprobs


def mark(model: PreTrainedModel, beta: float) -> None:
    """Write the likelihood-RM field into the model's config (saved with it)."""
    model.config.likelihood_rm = {"beta": float(beta)}


def is_likelihood(config) -> bool:
    return isinstance(getattr(config, "likelihood_rm", None), dict)


def likelihood_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor,
                      response_mask: torch.Tensor) -> torch.Tensor:
    """β / |y| · Σ log π(y_t | x, y_<t) [B] of the responses in the last R columns of ids, attn [B, T]."""
    R = response_mask.shape[1]
    logp = token_logprobs(model, ids, attn)[:, -R:]  # [B, R]: entry j predicts token j + 1: these, the last R tokens
    return likelihood_reward(logp, response_mask, model.config.likelihood_rm["beta"])
