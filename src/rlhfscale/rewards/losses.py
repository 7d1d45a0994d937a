"""Reward-model losses: Bradley–Terry on preference pairs, BCE on correctness labels (at the last
token, or at every response token), their multi-task mix, the process (per-step) BCE, and the
auxiliary next-token loss of a verifier trained with the LM objective, the verdict loss and score of a
generative verifier, and the likelihood reward (SimPO's). Pure functions on tensors.

Symbols: r_c, r_r are the scalar rewards of the chosen and rejected response of a pair,
m an optional margin, σ the logistic function. Scores are logits (unbounded rewards);
σ(score) is the model's probability that a response (or step) is correct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bt_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None) -> Tensor:
    """Bradley–Terry loss  -log σ(r_c - r_r - m), averaged over pairs.

    chosen, rejected: [B] rewards; margin: [B] or None (no margin). Returns a scalar.
    """
    logits = chosen - rejected
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits).mean()


def bce_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of outcome labels under σ(scores), averaged over responses.

    scores: [B] logits; labels: [B] in [0, 1], hard (0/1, bool) or soft. Returns a scalar.
    """
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))


def token_bce_loss(token_scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Outcome BCE at every response token: each token's logit is trained on its response's label,
    averaged over the valid tokens (the verifier objective of Cobbe et al. 2021, who found it
    better than the last token alone; the score is still read at the last token).

    token_scores: [B, T] logits; labels: [B] in [0, 1]; mask: [B, T] bool, True on response
    tokens. Masked entries change nothing. Returns a scalar (0 when no token is valid).
    """
    return prm_loss(token_scores, labels[:, None].expand_as(token_scores), mask)


def multitask_loss(
    pref_chosen: Tensor,
    pref_rejected: Tensor,
    cls_scores: Tensor,
    cls_labels: Tensor,
    *,
    weight: float,
    cls_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """One reward model trained on preferences and on correctness labels:
    L = w · L_BT + (1 - w) · L_BCE.

    pref_chosen, pref_rejected: [P] rewards of P preference pairs; cls_scores, cls_labels: [C]
    logits and labels of C labelled responses, or with cls_mask [C, T] (True on response tokens)
    cls_scores [C, T] token logits and the BCE at every response token (`token_bce_loss`). Either
    part may be empty (P = 0 or C = 0): it then contributes nothing (its term is 0, not NaN) and is
    left out of the stats; both empty is an error.
    Returns (scalar loss, stats) with stats keys among `bt`, `bce`, `pair_acc`, `n_pairs`, `n_labels`.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"multitask_loss: weight must be in [0, 1], got {weight}")
    n_pairs, n_labels = pref_chosen.numel(), cls_labels.numel()
    if n_pairs == 0 and n_labels == 0:
        raise ValueError("multitask_loss: no preference pairs and no labelled responses")
    terms: list[Tensor] = []
    stats: dict[str, float] = {"n_pairs": float(n_pairs), "n_labels": float(n_labels)}
    if n_pairs > 0:
        bt = bt_loss(pref_chosen, pref_rejected)
        terms.append(weight * bt)
        stats["bt"] = bt.item()
        stats["pair_acc"] = pair_accuracy(pref_chosen, pref_rejected)
    if n_labels > 0:
        bce = bce_loss(cls_scores, cls_labels) if cls_mask is None else token_bce_loss(cls_scores, cls_labels, cls_mask)
        terms.append((1.0 - weight) * bce)
        stats["bce"] = bce.item()
    return torch.stack(terms).sum(), stats


def prm_loss(step_scores: Tensor, step_labels: Tensor, step_mask: Tensor) -> Tensor:
    """Process-reward loss: BCE of step labels under σ(step_scores), averaged over valid steps.

    step_scores: [B, S] logits; step_labels: [B, S] in [0, 1] (hard or Monte-Carlo soft);
    step_mask: [B, S] bool, True at real steps. Masked entries (any values) change nothing.
    Returns a scalar (0 when no step is valid).
    """
    mask = step_mask.bool()
    labels = torch.where(mask, step_labels.to(step_scores.dtype), 0.0)
    scores = torch.where(mask, step_scores, 0.0)
    per_step = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    return torch.where(mask, per_step, 0.0).sum() / mask.sum().clamp(min=1)


def next_token_loss(hidden: Tensor, out_weight: Tensor, ids: Tensor, target_mask: Tensor) -> Tensor:
    """Language-model loss  -log softmax(h_{t-1} Wᵀ)[x_t], averaged over the target tokens x_t.

    A reward model whose backbone ties its input and output embeddings still holds its LM head
    (W = the embedding matrix), so it can keep the next-token objective beside its reward loss, as
    the verifiers of Cobbe et al. (2021) do. Logits are formed only at the targets' positions.

    hidden: [B, T, D] final-normed hidden states; out_weight: [V, D]; ids: [B, T] token ids;
    target_mask: [B, T] bool, True at tokens to predict (column 0 has no predecessor and is
    ignored). Masked entries change nothing. Returns a scalar (0 when no token is a target).
    """
    targets = target_mask[:, 1:].bool()
    if not targets.any():
        return hidden.sum() * 0.0
    logits = hidden[:, :-1][targets].float() @ out_weight.float().T  # [N, V]
    return F.cross_entropy(logits, ids[:, 1:][targets])


def genrm_loss(hidden: Tensor, out_weight: Tensor, verdict_mask: Tensor, labels: Tensor, yes: int, no: int) -> Tensor:
    """Generative-verifier loss (Zhang et al. 2024): the next-token loss of the verdict token,
    -[y log p(Yes | x) + (1 - y) log p(No | x)],  p = softmax(h Wᵀ) over the whole vocabulary,
    read at the position that predicts the verdict, averaged over responses (a soft label y mixes both).

    hidden: [B, T, D] final-normed hidden states; out_weight: [V, D] the LM head; verdict_mask: [B, T]
    bool, exactly one True per row (the question's last token); labels: [B] in [0, 1]; yes, no: token
    ids. Masked-out positions (pads, prompt, response) change nothing. Returns a scalar.
    """
    rows, cols = verdict_mask.bool().nonzero(as_tuple=True)
    if rows.numel() != labels.numel() or not torch.equal(rows, torch.arange(labels.numel(), device=rows.device)):
        raise ValueError("genrm_loss: expected exactly one verdict position per row")
    logp = torch.log_softmax(hidden[rows, cols].float() @ out_weight.float().T, -1)  # [B, V]
    y = labels.to(logp.dtype)
    return -(y * logp[:, yes] + (1 - y) * logp[:, no]).mean()


def genrm_score(verdict_logits: Tensor, yes: int, no: int) -> Tensor:
    """A generative verifier's reward  log p(Yes) − log p(No) = z_Yes − z_No  (the softmax's normalizer cancels).

    verdict_logits: [..., V] logits at the verdict position (or any slice holding the two ids). Returns [...].
    """
    return verdict_logits[..., yes].float() - verdict_logits[..., no].float()


def likelihood_reward(logprobs: Tensor, mask: Tensor, beta: float) -> Tensor:
    """The length-normalized log-likelihood reward of SimPO (Meng et al. 2024),  r = β / |y| · Σ_t log π(y_t | x, y_<t),
    reference-free: a causal LM that wrote the task's solutions scores a response by how likely it finds it.

    logprobs: [B, T] token log-probs; mask: [B, T], 1 on the response's tokens (a row without any scores 0).
    Returns [B], float32.
    """
    total = torch.where(mask.bool(), logprobs.float(), 0.0).sum(-1)  # masked columns may hold anything
    return beta * total / mask.float().sum(-1).clamp(min=1.0)


def pair_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Fraction of pairs with r_c > r_r; a tie counts one half.

    chosen, rejected: [B]. Returns a float (NaN when B = 0).
    """
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return wins.mean().item()
