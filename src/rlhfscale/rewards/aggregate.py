"""From step scores to one response score (PRM aggregation), and step-level classification metrics.

A process reward model gives each step s a logit; p_s = σ(logit) is its probability that the
solution is still correct after step s. A response's score aggregates the p_s of its valid steps:
`min` (the weakest step), `last` (the final step), `mean`, or `prod` (all steps correct, as if
independent). A response with zero valid steps scores 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry


def agg_min(step_scores: Tensor, step_mask: Tensor) -> Tensor:
    """min_s p_s over valid steps. step_scores, step_mask: [B, S]. Returns [B]."""
    p = torch.where(step_mask, torch.sigmoid(step_scores), 1.0)
    return p.min(dim=-1).values


def agg_last(step_scores: Tensor, step_mask: Tensor) -> Tensor:
    """p_s at the last valid step. step_scores, step_mask: [B, S]. Returns [B]."""
    positions = torch.arange(1, step_mask.shape[-1] + 1, device=step_mask.device)
    last = (step_mask.long() * positions).argmax(dim=-1, keepdim=True)  # [B, 1]
    return torch.sigmoid(step_scores.gather(-1, last).squeeze(-1))


def agg_mean(step_scores: Tensor, step_mask: Tensor) -> Tensor:
    """Mean of p_s over valid steps. step_scores, step_mask: [B, S]. Returns [B]."""
    p = torch.where(step_mask, torch.sigmoid(step_scores), 0.0)
    return p.sum(dim=-1) / step_mask.sum(dim=-1).clamp(min=1)


def agg_prod(step_scores: Tensor, step_mask: Tensor) -> Tensor:
    """∏_s p_s over valid steps, as exp Σ_s log σ(logit_s).

    step_scores, step_mask: [B, S]. Returns [B].
    """
    log_p = torch.where(step_mask, F.logsigmoid(step_scores), 0.0)
    return log_p.sum(dim=-1).exp()


AGGREGATIONS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry.of(
    "step aggregation", {"min": agg_min, "last": agg_last, "mean": agg_mean, "prod": agg_prod})


def aggregate_steps(step_scores: Tensor, step_mask: Tensor, how: str) -> Tensor:
    """Response scores from step logits, aggregated by `how` (a key of AGGREGATIONS).

    step_scores: [B, S] logits; step_mask: [B, S] bool, True at valid steps (masked entries,
    whatever their value, change nothing). Returns [B] in [0, 1]; 0 for a response with no valid step.
    """
    mask = step_mask.bool()
    score = AGGREGATIONS.get(how)(torch.where(mask, step_scores, 0.0), mask)
    return torch.where(mask.any(dim=-1), score, 0.0)


def step_f1(pred: Tensor, gold: Tensor, *, positive: bool = False) -> dict[str, float]:
    """Step-classification metrics of predicted step labels against gold ones.

    pred, gold: [N] bool step labels (True = the step is correct). The positive class is
    `positive`; by default False, i.e. the metrics measure how well *erroneous* steps are found,
    as PRM evaluations (ProcessBench, PRM800K) do. Precision or recall with an empty denominator
    is 0, and so is F1 when both are 0. Returns floats `precision`, `recall`, `f1`, `accuracy`.
    """
    pred_pos, gold_pos = pred.bool() == positive, gold.bool() == positive
    tp = (pred_pos & gold_pos).sum().item()
    precision = tp / max(pred_pos.sum().item(), 1)
    recall = tp / max(gold_pos.sum().item(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy = (pred_pos == gold_pos).float().mean().item()
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}
