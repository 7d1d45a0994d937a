"""PPO-family losses as pure tensor functions: masked statistics, clipped policy and value losses,
entropy, per-token KL estimators and the KL-coefficient controllers.

Shapes: B sequences (B = num_prompts * n, the n responses of a prompt contiguous), T response tokens,
V vocabulary entries. `mask` is [B, T], bool or 0/1, 1 on response tokens that count. Values at
masked positions never reach a result or a gradient.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhfscale.registry import Registry


# ---------------------------------------------------------------------------------------------
# masked statistics


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is set.

    x, mask: [B, T] (any matching shapes). dim None: a 0-dim tensor over all valid entries;
    otherwise the mean along `dim`, with 0 where a slice has no valid entry.
    """
    valid = mask.bool()
    total = x.masked_fill(~valid, 0.0).sum() if dim is None else x.masked_fill(~valid, 0.0).sum(dim)
    count = valid.sum() if dim is None else valid.sum(dim)
    return total / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Population variance of `x` over valid positions (divides by the count, no Bessel correction).

    x, mask: [B, T]; dim as in `masked_mean`.
    """
    mean = masked_mean(x, mask, dim)
    centered = x - (mean if dim is None else mean.unsqueeze(dim))
    return masked_mean(centered.square(), mask, dim)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-6) -> Tensor:
    """(x - mean) / (std + eps) with mean and population std over all valid entries of `x`.

    x, mask: [B, T] -> [B, T]. shift_mean False adds the mean back (scale only). Masked entries
    come back as 0.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) / (masked_var(x, mask).sqrt() + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened.masked_fill(~mask.bool(), 0.0)


# ---------------------------------------------------------------------------------------------
# loss aggregation: [B, T] per-token losses -> scalar


def agg_token(losses: Tensor, mask: Tensor, n: int) -> Tensor:
    """Mean over every valid token of the batch (long responses weigh more). [B, T] -> []."""
    return masked_mean(losses, mask)


def agg_sequence(losses: Tensor, mask: Tensor, n: int) -> Tensor:
    """Mean over each sequence's valid tokens, then over sequences. [B, T] -> []."""
    return masked_mean(losses, mask, dim=-1).mean()


def agg_group(losses: Tensor, mask: Tensor, n: int) -> Tensor:
    """Mean over the valid tokens of each group of n responses, then over groups. [B, T] -> []."""
    num_prompts = losses.shape[0] // n
    return masked_mean(losses.reshape(num_prompts, -1), mask.reshape(num_prompts, -1), dim=-1).mean()


def agg_token_sum(losses: Tensor, mask: Tensor, n: int) -> Tensor:
    """Sum over valid tokens divided by a constant, B · T (Dr. GRPO, Liu et al. 2025): no response's
    tokens are weighted by its length, so long wrong answers are not favoured. [B, T] -> []."""
    return losses.masked_fill(~mask.bool(), 0.0).sum() / mask.numel()


AGGREGATIONS: Registry[Callable[[Tensor, Tensor, int], Tensor]] = Registry.of(
    "loss aggregation", {"token": agg_token, "sequence": agg_sequence, "group": agg_group, "token_sum": agg_token_sum})


# ---------------------------------------------------------------------------------------------
# per-token KL estimators (Schulman, "Approximating KL divergence"), samples drawn from the policy


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log π - log π_ref: unbiased, high variance, can be negative. [B, T] -> [B, T]."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """½ (log π - log π_ref)²: biased, low variance, non-negative. [B, T] -> [B, T]."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """exp(log π_ref - log π) - (log π_ref - log π) - 1: unbiased, non-negative. [B, T] -> [B, T]."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry.of(
    "KL estimator", {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3})


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1", mask: Tensor | None = None
) -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled by π.

    logprobs, ref_logprobs: [B, T] log-probabilities of the sampled tokens under π and π_ref.
    estimator: a name in `KL_ESTIMATORS`. mask: [B, T] or None; masked tokens give 0.
    Returns [B, T].
    """
    fn = KL_ESTIMATORS.get(estimator)
    if mask is None:
        return fn(logprobs, ref_logprobs)
    valid = mask.bool()
    kl = fn(logprobs.masked_fill(~valid, 0.0), ref_logprobs.masked_fill(~valid, 0.0))
    return kl.masked_fill(~valid, 0.0)


# ---------------------------------------------------------------------------------------------
# PPO losses


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_coef: float = 0.2,
    clip_coef_high: float | None = None,
    agg: str = "token",
    n: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A), ρ = π / π_old.

    logprobs: [B, T] log π of the sampled tokens (with grad); old_logprobs: [B, T] under the
    policy that sampled them; advantages: [B, T]; mask: [B, T]. ε_low = clip_coef,
    ε_high = clip_coef_high (defaults to clip_coef; a larger value is DAPO's "clip higher").
    agg: a name in `AGGREGATIONS`; n: responses per prompt, for agg="group".
    Returns (scalar loss, stats): `clipfrac` (fraction of valid tokens where the clip is active)
    and `approx_kl` (k3 estimate of KL(π_old ‖ π)), both detached 0-dim tensors.
    """
    aggregate = AGGREGATIONS.get(agg)
    valid = mask.bool()
    high = clip_coef if clip_coef_high is None else clip_coef_high
    log_ratio = (logprobs - old_logprobs).masked_fill(~valid, 0.0)
    ratio = log_ratio.exp()
    advantages = advantages.masked_fill(~valid, 0.0)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + high)
    loss = aggregate(torch.maximum(pg_losses, pg_losses_clipped), valid, n)
    stats = {
        "clipfrac": masked_mean((pg_losses_clipped > pg_losses).float(), valid).detach(),
        "approx_kl": masked_mean(kl_penalty(old_logprobs, logprobs, "k3", valid), valid).detach(),
    }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_coef_value: float | None = 0.2,
    agg: str = "token",
    n: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ½ max((V - R)², (clip(V, V_old - c, V_old + c) - R)²), as in PPO/TRL/OpenRLHF.

    values: [B, T] critic outputs (with grad); old_values: [B, T] at rollout time; returns: [B, T]
    targets; mask: [B, T]. clip_coef_value None: plain ½ (V - R)². agg, n as in `policy_loss`. Inputs are
    masked before the squared error, so a NaN or inf at a masked position reaches neither loss nor gradient.
    Returns (scalar loss, stats): `vf_clipfrac`, the fraction of valid tokens where the clipped
    term is the larger one (detached 0-dim tensor).
    """
    aggregate = AGGREGATIONS.get(agg)
    valid = mask.bool()
    values, old_values, returns = (x.masked_fill(~valid, 0.0) for x in (values, old_values, returns))
    vf_losses = (values - returns).square()
    if clip_coef_value is None:
        return 0.5 * aggregate(vf_losses, valid, n), {"vf_clipfrac": torch.zeros(())}
    values_clipped = old_values + (values - old_values).clamp(-clip_coef_value, clip_coef_value)
    vf_losses_clipped = (values_clipped - returns).square()
    loss = 0.5 * aggregate(torch.maximum(vf_losses, vf_losses_clipped), valid, n)
    vf_clipfrac = masked_mean((vf_losses_clipped > vf_losses).float(), valid).detach()
    return loss, {"vf_clipfrac": vf_clipfrac}


def logprob_gap(rollout_logprobs: Tensor, trainer_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far a rollout engine's log-probs of the sampled tokens are from the trainer's own.

    rollout_logprobs, trainer_logprobs: [B, T]; mask: [B, T]. Returns detached 0-dim tensors over valid
    tokens: ``gap_mean`` and ``gap_max`` (mean and max of |log π_rollout - log π_trainer|) and
    ``ratio_std`` (the spread of the importance ratio π_trainer / π_rollout; 0 when they agree).
    """
    valid = mask.bool()
    diff = (trainer_logprobs - rollout_logprobs).masked_fill(~valid, 0.0).detach()
    ratio = diff.exp()
    mean_ratio = masked_mean(ratio, valid)
    return {"gap_mean": masked_mean(diff.abs(), valid), "gap_max": diff.abs().max(),
            "ratio_std": masked_mean((ratio - mean_ratio).square(), valid).sqrt()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per position: logsumexp(z) - Σ softmax(z) z. [B, T, V] -> [B, T]."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019)


class FixedKLController:
    """A KL coefficient β that stays at `value`."""

    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        """β is fixed: nothing changes."""


class AdaptiveKLController:
    """β driven toward a target KL: β ← β (1 + clip(KL / target - 1, -0.2, 0.2) · n_steps / horizon).

    The same update as TRL and OpenRLHF; `n_steps` is the number of samples since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
