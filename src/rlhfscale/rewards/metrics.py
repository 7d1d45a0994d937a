"""Judging reward models on a pool of sampled responses: pair accuracy, step accuracy and F1,
Best-of-N and majority-vote curves; and how erratic a training run's reward is (`fluctuation`).

A pool holds M responses to each of P prompts: ``scores [P, M]`` from a reward model and
``values [P, M]`` the gold value of each response (1 / 0 correctness, or the gold rater's score).
Best-of-N draws N of the M responses without replacement and keeps the best-scored one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb

import torch
from torch import Tensor

from .aggregate import step_f1


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-empty answer (first seen wins a tie), or None."""
    counts = Counter(a for a in answers if a is not None)
    return max(counts, key=counts.__getitem__) if counts else None


def pool_pair_accuracy(scores: Tensor, values: Tensor) -> float:
    """Fraction of pairs (i, j) of responses to the same prompt with v_i > v_j that the RM orders
    s_i > s_j (a tie counts one half), over all such pairs of all prompts.

    scores, values: [P, M]. Returns a float (NaN when no pair has unequal values).
    """
    better = values[:, :, None] > values[:, None, :]  # [P, M, M]
    s_i, s_j = scores[:, :, None], scores[:, None, :]
    wins = (s_i > s_j).float() + 0.5 * (s_i == s_j).float()
    return wins[better].mean().item()


def best_of_n(scores: Tensor, values: Tensor, n: int) -> float:
    """Expected value of the best-scored of n responses drawn without replacement, mean over prompts.

    Exact (no sampling): with the M responses ranked by score, best first, the response at rank r
    is the best of a uniform n-subset with probability C(M-1-r, n-1) / C(M, n). Equal scores rank
    in pool order. scores, values: [P, M]; 1 <= n <= M. `best_of_n(values, values, n)` is the oracle.
    """
    M = scores.shape[-1]
    if not 1 <= n <= M:
        raise ValueError(f"best_of_n: n must be in 1..{M}, got {n}")
    ranked = values.gather(-1, scores.argsort(dim=-1, descending=True, stable=True))  # [P, M]
    weights = torch.tensor([comb(M - 1 - r, n - 1) / comb(M, n) for r in range(M)], dtype=torch.float64)
    return (ranked.double() * weights).sum(-1).mean().item()


def majority_of_n(
    answers: Sequence[Sequence[str | None]], gold: Sequence[str], n: int, draws: int, generator: torch.Generator
) -> float:
    """Accuracy of the majority answer of n responses drawn without replacement (Monte-Carlo).

    answers: [P][M] extracted final answers (None: no answer); gold: [P]. Each prompt gets `draws`
    random n-subsets (one when n = M, the whole pool); returns the fraction of correct votes.
    """
    hits, total = 0, 0
    for row, answer in zip(answers, gold):
        for _ in range(draws if n < len(row) else 1):
            picked = torch.randperm(len(row), generator=generator)[:n].tolist()
            hits += majority_vote([row[i] for i in picked]) == answer
            total += 1
    return hits / total


def step_metrics(step_logits: Sequence[Tensor], gold: Sequence[Sequence[bool]]) -> dict[str, float]:
    """Step accuracy and F1 of a PRM's step predictions σ(logit) > 1/2 against gold step labels.

    step_logits: per response, the logits at its step ends [S_i]; gold: per response, its gold
    labels. Steps pair up in order, over the first min(S_i, len(gold_i)) of each response. F1 is
    that of `rewards.aggregate.step_f1`: erroneous steps are the positive class. Beside them, what a
    PRM that calls every step an error would get (``step_f1_all_errors``), and ``step_error_rate``.
    """
    pred, ref = [], []
    for logits, labels in zip(step_logits, gold):
        k = min(len(logits), len(labels))
        pred.append(logits[:k] > 0)
        ref.append(torch.tensor(list(labels[:k]), dtype=torch.bool))
    pred_all, ref_all = torch.cat(pred), torch.cat(ref)
    m = step_f1(pred_all, ref_all)
    return {"step_acc": m["accuracy"], "step_f1": m["f1"],
            "step_f1_all_errors": step_f1(torch.zeros_like(ref_all), ref_all)["f1"],
            "step_error_rate": 1.0 - ref_all.float().mean().item()}


def fluctuation(series: Sequence[float]) -> float:
    """How erratic a training curve is: the standard deviation of its step-to-step changes,
    sqrt(mean((d_t - mean d)^2)) with d_t = x_t - x_{t-1}. A steady climb (constant d_t) scores 0, however fast,
    so learning is not mistaken for instability; NaN with fewer than two points.

    series: the per-step values x_1..x_T (e.g. the batch-mean proxy reward of each RL step).
    """
    if len(series) < 2:
        return float("nan")
    return torch.tensor(series, dtype=torch.float64).diff().std(correction=0).item()
