"""The reward-model training loop (CleanRL style): ORM on pairs and/or labels, PRM on step labels.

An outcome RM step scores B chosen, B rejected and B labelled sequences in one forward and takes
`multitask_loss`: w · Bradley–Terry + (1 - w) · BCE (w = 1: pairs only, w = 0: labels only; an
empty part contributes nothing); the BCE is at the last token, or with `token_level` at every
response token (`token_bce_loss`). A process RM step reads its logits at the step ends of B
step-labelled sequences and takes `prm_loss`. Batches are drawn with replacement; AdamW with
linear warm-up, then cosine decay or a constant rate, gradients clipped to norm 1, as in SFT;
optionally under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..models.reward import prm_token_scores
from ..models.train import adamw, final_ratio, left_pad, mixed_precision, warmup_cosine
from .losses import multitask_loss, prm_loss

Pair = tuple[list[int], list[int]]  # chosen, rejected token sequences
Labelled = tuple[list[int], float, int]  # token sequence, correctness label in [0, 1], prompt length
Stepped = tuple[list[int], list[int], list[float]]  # token sequence, step-end indices, step labels


@dataclass
class RMData:
    """Encoded training data (see `rewards.data`); an ORM uses pairs and outcomes, a PRM steps."""

    pairs: list[Pair] = field(default_factory=list)
    outcomes: list[Labelled] = field(default_factory=list)
    steps: list[Stepped] = field(default_factory=list)


def response_token_mask(outcomes: list[Labelled], width: int) -> torch.Tensor:
    """[C, T] bool, True on the response tokens of left-padded labelled sequences of length T = `width`."""
    starts = torch.tensor([width - len(seq) + prompt_len for seq, _, prompt_len in outcomes])
    return torch.arange(width)[None, :] >= starts[:, None]


def orm_loss(model: PreTrainedModel, pairs: list[Pair], outcomes: list[Labelled], weight: float, pad_id: int,
             token_level: bool = False):
    """Multi-task ORM loss of one batch; returns (loss, stats, tokens in the batch)."""
    device = model.device
    seqs = [c for c, _ in pairs] + [r for _, r in pairs] + [s for s, _, _ in outcomes]
    ids, attn = left_pad(seqs, pad_id, device)
    token_scores = prm_token_scores(model, ids, attn).float()  # the head at every token, [2P + C, T]
    scores = token_scores[:, -1]  # left-padded: the last real token is the last column
    b = len(pairs)
    labels = torch.tensor([label for _, label, _ in outcomes], device=device)
    cls_scores, cls_mask = scores[2 * b:], None
    if token_level:
        cls_scores, cls_mask = token_scores[2 * b:], response_token_mask(outcomes, ids.shape[1]).to(device)
    loss, stats = multitask_loss(scores[:b], scores[b:2 * b], cls_scores, labels, weight=weight, cls_mask=cls_mask)
    if outcomes:
        stats["label_acc"] = ((scores[2 * b:] > 0) == (labels > 0.5)).float().mean().item()
    return loss, stats, int(attn.sum())


def step_targets(items: list[Stepped], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [B, T] and step mask [B, T] of left-padded sequences of length T = `width`."""
    labels = torch.zeros(len(items), width)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (seq, ends, step_labels) in enumerate(items):
        cols = torch.tensor(ends, dtype=torch.long) + width - len(seq)
        labels[row, cols] = torch.tensor(step_labels, dtype=torch.float32)
        mask[row, cols] = True
    return labels, mask


def prm_batch_loss(model: PreTrainedModel, items: list[Stepped], pad_id: int):
    """PRM loss of one batch at the step ends; returns (loss, stats, tokens in the batch)."""
    ids, attn = left_pad([seq for seq, _, _ in items], pad_id, model.device)
    labels, mask = (t.to(model.device) for t in step_targets(items, ids.shape[1]))
    logits = prm_token_scores(model, ids, attn).float()  # [B, T]
    loss = prm_loss(logits, labels, mask)
    step_acc = ((logits > 0) == (labels > 0.5))[mask].float().mean().item()
    return loss, {"prm": loss.item(), "step_acc": step_acc}, int(attn.sum())


def train_reward_model(
    model: PreTrainedModel,
    data: RMData,
    *,
    kind: str,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    weight: float,
    pad_id: int,
    seed: int,
    schedule: str = "cosine",
    bf16: bool = False,
    token_level: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Train an ORM (`kind` "orm": `weight` w of BT vs BCE) or a PRM ("prm") in place.

    schedule: "cosine" (warm-up, then decay to a tenth of `lr`) or "constant"; bf16: autocast the
    forward passes; token_level: the ORM's BCE at every response token. Calls on_step(step, stats)
    after each optimizer step (stats: loss, lr and the loss parts). Returns the number of tokens
    trained on (for the 6·N·tokens FLOPs estimate).
    """
    min_ratio = final_ratio(schedule)
    parts = [data.steps] if kind == "prm" else [data.pairs, data.outcomes]
    if not any(parts):
        raise ValueError(f"train_reward_model: no training data for a {kind} reward model")
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(model, lr, weight_decay)
    tokens = 0
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, steps, warmup, min_ratio)
        batches = [[part[i] for i in torch.randint(len(part), (batch_size,), generator=gen).tolist()] if part else []
                   for part in parts]
        with mixed_precision(model.device, bf16):
            if kind == "prm":
                loss, stats, n = prm_batch_loss(model, batches[0], pad_id)
            else:
                loss, stats, n = orm_loss(model, *batches, weight, pad_id, token_level)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += n
        if on_step is not None:
            on_step(step + 1, {"loss": loss.item(), "lr": opt.param_groups[0]["lr"], **stats})
    model.eval()
    return tokens
