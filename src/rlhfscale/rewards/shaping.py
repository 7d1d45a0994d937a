"""Reward shaping: pure functions on per-response scores [B], each switched on by the RL config.

B = num_prompts * n with the n responses of a prompt contiguous, so `.view(num_prompts, n)` groups
them. `SHAPING` maps a config name to its function; the functions take the scores first and their
own keyword arguments.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..registry import Registry


@functools.cache
def _warn_no_groups(what: str) -> None:
    warnings.warn(f"{what}: n=1 response per prompt forms no group; using the whole batch", stacklevel=5)


def grouped(scores: Tensor, n: int, what: str) -> Tensor:
    """[B] -> [B // n, n]; with n == 1 the whole batch is one group [1, B] (warned once)."""
    B = scores.shape[0]
    if B % n:
        raise ValueError(f"{what}: batch of {B} scores is not a multiple of n={n}")
    if n == 1:
        _warn_no_groups(what)
        return scores.view(1, B)
    return scores.view(B // n, n)


@dataclass
class RunningMeanStd:
    """Running mean and population variance of a stream of scores (Chan et al. parallel update)."""

    mean: float = 0.0
    var: float = 1.0
    count: int = 0

    def update(self, x: Tensor) -> None:
        """Fold a batch x [B] into the statistics."""
        x = x.detach().double().flatten()
        batch_count = x.numel()
        batch_mean, batch_var = x.mean().item(), x.var(correction=0).item()
        total = self.count + batch_count
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean += delta * batch_count / total
        self.var = m2 / total
        self.count = total


# ---------------------------------------------------------------------------------------------
# normalization: (s - μ) / (σ + eps) with μ, σ from the batch, the group or a running estimate


def norm_batch(scores: Tensor, n: int, running: RunningMeanStd | None, eps: float) -> Tensor:
    """Over the whole batch, population std. [B] -> [B]."""
    return (scores - scores.mean()) / (scores.std(correction=0) + eps)


def norm_group(scores: Tensor, n: int, running: RunningMeanStd | None, eps: float) -> Tensor:
    """Within each prompt's group of n responses, population std. [B] -> [B]."""
    groups = grouped(scores, n, "group normalization")
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, correction=0)
    return ((groups - mean) / (std + eps)).reshape(-1)


def norm_running(scores: Tensor, n: int, running: RunningMeanStd | None, eps: float) -> Tensor:
    """With running statistics, updated with this batch first. [B] -> [B]."""
    if running is None:
        raise ValueError("running normalization needs a RunningMeanStd")
    running.update(scores)
    return (scores - running.mean) / (running.var**0.5 + eps)


NORMALIZATIONS: Registry[Callable[..., Tensor]] = Registry.of("normalization mode", {
    "batch": norm_batch,
    "group": norm_group,
    "running": norm_running,
})


def normalize_rewards(
    scores: Tensor,
    *,
    mode: str = "batch",
    n: int = 1,
    running: RunningMeanStd | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Reward normalization of RM scores: (s - μ) / (σ + eps).

    scores: [B]. mode: a name in `NORMALIZATIONS` ("batch", "group" over each prompt's n responses,
    "running" over every score seen so far, which updates `running`). Returns [B].
    """
    return NORMALIZATIONS.get(mode)(scores, n, running, eps)


# ---------------------------------------------------------------------------------------------
# asymmetric shrinking around a reference point r0


def ref_zero(scores: Tensor, n: int) -> Tensor:
    """r0 = 0. [B] -> [B]."""
    return torch.zeros_like(scores)


def ref_batch(scores: Tensor, n: int) -> Tensor:
    """r0 = the batch mean. [B] -> [B]."""
    return scores.mean().expand_as(scores)


def ref_group(scores: Tensor, n: int) -> Tensor:
    """r0 = the mean of each prompt's group of n responses. [B] -> [B]."""
    groups = grouped(scores, n, "group reference")
    return groups.mean(dim=1, keepdim=True).expand_as(groups).reshape(-1)


REFERENCES: Registry[Callable[[Tensor, int], Tensor]] = Registry.of(
    "shrink reference", {"zero": ref_zero, "batch": ref_batch, "group": ref_group})


def asymmetric_shrink(
    scores: Tensor,
    *,
    pos_factor: float,
    neg_factor: float,
    reference: str = "zero",
    n: int = 1,
    bound: float | None = None,
) -> Tensor:
    """Asymmetric reward shrinking: scale deviations from r0 by one factor above it, another below.

    Hou et al. 2024 name "asymmetric reward shrinking" without a formula in any source we can
    reach; this is our natural reading of it, not their published definition:
        s' = r0 + pos_factor · (s - r0)   if s > r0
        s' = r0 + neg_factor · (s - r0)   otherwise
    then clamped to [-bound, bound] when bound is given. A pos_factor below neg_factor shrinks the
    RM's most confident high scores, the least reliable ones, more than its low ones.
    scores: [B]; reference: a name in `REFERENCES` (r0 = 0, the batch mean, or each group's mean
    over its n responses). Factors (1, 1) without bound return the scores unchanged. Returns [B].
    """
    r0 = REFERENCES.get(reference)(scores, n)
    deviation = scores - r0
    shaped = r0 + torch.where(deviation > 0, pos_factor * deviation, neg_factor * deviation)
    return shaped if bound is None else clip_rewards(shaped, bound)


def clip_rewards(scores: Tensor, bound: float) -> Tensor:
    """Clamp scores to [-bound, bound]. [B] -> [B]."""
    return scores.clamp(-bound, bound)


def length_penalty(scores: Tensor, lengths: Tensor, *, coef: float, target_len: int = 0) -> Tensor:
    """s - coef · max(0, length - target_len). scores: [B]; lengths: [B] response tokens. -> [B]."""
    return scores - coef * (lengths - target_len).clamp(min=0).to(scores.dtype)


SHAPING: Registry[Callable[..., Tensor]] = Registry.of("reward shaping", {
    "normalize": normalize_rewards,
    "shrink": asymmetric_shrink,
    "clip": clip_rewards,
    "length_penalty": length_penalty,
})
get_shaping = SHAPING.get
