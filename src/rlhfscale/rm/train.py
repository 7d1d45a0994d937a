"""The reward-model training loop (CleanRL style): ORM on pairs and/or labels, PRM on step labels.

An outcome RM step scores B chosen, B rejected and B labelled sequences in one forward and takes
`multitask_loss`: w · Bradley–Terry + (1 - w) · BCE (w = 1: pairs only, w = 0: labels only; an
empty part contributes nothing); the BCE is at the last token, or with `token_level` at every
response token (`token_bce_loss`). A process RM step reads its logits at the step ends of B
step-labelled sequences and takes `prm_loss`. With `lm_coef` > 0 either adds lm_coef times the
next-token loss (`next_token_loss`, through the tied embeddings) of the text the labels call right:
chosen and correct sequences whole, a step-labelled one up to its first wrong step (prompt tokens
included). A generative verifier ("generative") reads each labelled sequence followed by its verification
question and takes `genrm_loss`, the next-token loss of the Yes / No verdict (with `lm_coef`, plus the
next-token loss of the correct sequences: GenRM's unified variant). A likelihood RM ("likelihood") scores the
chosen and rejected responses of B pairs by β / |y| · log π(y | x) and takes the Bradley–Terry loss on those
scores (SimPO's objective without its margin). Batches are drawn with replacement;
AdamW with linear warm-up, then cosine decay or a constant rate, gradients clipped to norm 1, as in SFT;
optionally under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..models.forward import hidden_states, token_logprobs
from ..models.genrm import Verdict
from ..models.train import adamw, final_ratio, left_pad, mixed_precision, response_batch, warmup_cosine
from ..rewards.losses import (
    bt_loss, genrm_loss, genrm_score, likelihood_reward, multitask_loss, next_token_loss, prm_loss,
)

Pair = tuple[list[int], list[int]]  # chosen, rejected token sequences
Labelled = tuple[list[int], float, int]  # token sequence, correctness label in [0, 1], prompt length
Stepped = tuple[list[int], list[int], list[float]]  # token sequence, step-end indices, step labels
Split = tuple[list[int], list[int]]  # prompt tokens, response tokens
SplitPair = tuple[Split, Split]  # chosen, rejected of one prompt


@dataclass
class RMData:
    """Encoded training data (see `rm.data`); an ORM uses pairs and outcomes, a PRM steps, a likelihood RM
    split pairs (the prompt apart from each response)."""

    pairs: list[Pair] = field(default_factory=list)
    outcomes: list[Labelled] = field(default_factory=list)
    steps: list[Stepped] = field(default_factory=list)
    split_pairs: list[SplitPair] = field(default_factory=list)


def response_token_mask(outcomes: list[Labelled], width: int) -> torch.Tensor:
    """[C, T] bool, True on the response tokens of left-padded labelled sequences of length T = `width`."""
    starts = torch.tensor([width - len(seq) + prompt_len for seq, _, prompt_len in outcomes])
    return torch.arange(width)[None, :] >= starts[:, None]


def lm_targets(seqs: list[list[int]], upto: list[int], width: int) -> torch.Tensor:
    """[B, T] bool: True at tokens 1..upto[i] of sequence i (unpadded indices; -1: none) in the
    left-padded layout of length T = `width`."""
    lengths, ends = torch.tensor([len(s) for s in seqs]), torch.tensor(upto)
    col = torch.arange(width)[None, :] - (width - lengths)[:, None]  # index into the unpadded sequence
    return (col >= 1) & (col <= ends[:, None])


def lm_aux(model: PreTrainedModel, h: torch.Tensor, ids: torch.Tensor, seqs: list[list[int]], upto: list[int],
           stats: dict[str, float]) -> torch.Tensor:
    """The next-token loss of tokens 1..upto[i] of each sequence i (h [B, T, D], ids [B, T]); logged as "lm"."""
    lm = next_token_loss(h, model.get_input_embeddings().weight, ids, lm_targets(seqs, upto, ids.shape[1]).to(ids.device))
    stats["lm"] = lm.item()
    return lm


def orm_loss(model: PreTrainedModel, pairs: list[Pair], outcomes: list[Labelled], weight: float, pad_id: int,
             token_level: bool = False, lm_coef: float = 0.0):
    """Multi-task ORM loss of one batch; returns (loss, stats, tokens in the batch)."""
    device = model.device
    seqs = [c for c, _ in pairs] + [r for _, r in pairs] + [s for s, _, _ in outcomes]
    ids, attn = left_pad(seqs, pad_id, device)
    h = hidden_states(model, ids, attn)  # [2P + C, T, D]
    token_scores = model.score(h).squeeze(-1).float()  # the head at every token, [2P + C, T]
    scores = token_scores[:, -1]  # left-padded: the last real token is the last column
    b = len(pairs)
    labels = torch.tensor([label for _, label, _ in outcomes], device=device)
    cls_scores, cls_mask = scores[2 * b:], None
    if token_level:
        cls_scores, cls_mask = token_scores[2 * b:], response_token_mask(outcomes, ids.shape[1]).to(device)
    loss, stats = multitask_loss(scores[:b], scores[b:2 * b], cls_scores, labels, weight=weight, cls_mask=cls_mask)
    if outcomes:
        stats["label_acc"] = ((scores[2 * b:] > 0) == (labels > 0.5)).float().mean().item()
    if lm_coef:
        right = [len(c) - 1 for c, _ in pairs] + [-1] * b + [len(s) - 1 if y >= 0.5 else -1 for s, y, _ in outcomes]
        loss = loss + lm_coef * lm_aux(model, h, ids, seqs, right, stats)
    return loss, stats, int(attn.sum())


def generative_loss(model: PreTrainedModel, outcomes: list[Labelled], verdict: Verdict, pad_id: int,
                    lm_coef: float = 0.0):
    """Generative-verifier loss of one batch: each sequence + the question, the verdict predicted at the last
    column; returns (loss, stats, tokens in the batch)."""
    seqs = [s + verdict.question for s, _, _ in outcomes]
    ids, attn = left_pad(seqs, pad_id, model.device)
    h = hidden_states(model, ids, attn)  # [C, T, D]
    w = model.get_output_embeddings().weight
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -1] = True  # left-padded: the question's last token, whose next token is the verdict
    labels = torch.tensor([label for _, label, _ in outcomes], device=model.device)
    loss = genrm_loss(h, w, mask, labels, verdict.yes, verdict.no)
    scores = genrm_score(h[:, -1] @ w[[verdict.yes, verdict.no]].T, 0, 1)
    stats = {"genrm": loss.item(), "label_acc": ((scores > 0) == (labels > 0.5)).float().mean().item()}
    if lm_coef:  # the correct sequences themselves (prompt + response + EOS, not the question)
        right = [len(s) - 1 if y >= 0.5 else -1 for s, y, _ in outcomes]
        lm = next_token_loss(h, w, ids, lm_targets(seqs, right, ids.shape[1]).to(ids.device))
        stats["lm"] = lm.item()
        loss = loss + lm_coef * lm
    return loss, stats, int(attn.sum())


def likelihood_loss(model: PreTrainedModel, pairs: list[SplitPair], beta: float, pad_id: int):
    """Likelihood-RM loss of one batch: Bradley–Terry on β / |y| · log π(y | x) of the chosen and the rejected
    responses (one forward over both); returns (loss, stats, tokens in the batch)."""
    ids, attn, response = response_batch([c for c, _ in pairs] + [r for _, r in pairs], pad_id, model.device)
    scores = likelihood_reward(token_logprobs(model, ids, attn), response, beta)  # [2B]
    chosen, rejected = scores[:len(pairs)], scores[len(pairs):]
    loss = bt_loss(chosen, rejected)
    stats = {"bt": loss.item(), "pair_acc": (chosen > rejected).float().mean().item()}
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


def prm_batch_loss(model: PreTrainedModel, items: list[Stepped], pad_id: int, lm_coef: float = 0.0):
    """PRM loss of one batch at the step ends; returns (loss, stats, tokens in the batch)."""
    seqs = [seq for seq, _, _ in items]
    ids, attn = left_pad(seqs, pad_id, model.device)
    labels, mask = (t.to(model.device) for t in step_targets(items, ids.shape[1]))
    h = hidden_states(model, ids, attn)
    logits = model.score(h).squeeze(-1).float()  # [B, T]
    loss = prm_loss(logits, labels, mask)
    step_acc = ((logits > 0) == (labels > 0.5))[mask].float().mean().item()
    stats = {"prm": loss.item(), "step_acc": step_acc}
    if lm_coef:
        loss = loss + lm_coef * lm_aux(model, h, ids, seqs, [right_prefix_end(it) for it in items], stats)
    return loss, stats, int(attn.sum())


def right_prefix_end(item: Stepped) -> int:
    """The index of the last token of the steps before the first one labelled wrong (< 0.5); -1 if step 1 is."""
    _, ends, step_labels = item
    good = next((i for i, y in enumerate(step_labels) if y < 0.5), len(step_labels))
    return ends[good - 1] if good else -1


def training_parts(model: PreTrainedModel, data: RMData, kind: str, verdict: Verdict | None, lm_coef: float
                   ) -> list[list]:
    """The data sets a `kind` of reward model trains on, one batch drawn from each a step; a combination that
    cannot train is refused here, naming what is missing."""
    parts = {"prm": [data.steps], "generative": [data.outcomes], "likelihood": [data.split_pairs]}.get(
        kind, [data.pairs, data.outcomes])
    if not any(parts):
        raise ValueError(f"train_reward_model: no training data for a {kind} reward model")
    if kind == "generative" and verdict is None:
        raise ValueError("train_reward_model: a generative verifier needs its question and verdict tokens")
    if lm_coef and kind == "likelihood":
        raise ValueError("train_reward_model: a likelihood RM takes no auxiliary LM loss (its score is the LM's)")
    if lm_coef and kind != "generative" and not model.config.tie_word_embeddings:
        raise ValueError("train_reward_model: lm_coef needs a backbone with tied input and output embeddings")
    return parts


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
    lm_coef: float = 0.0,
    verdict: Verdict | None = None,
    beta: float = 1.0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Train an ORM (`kind` "orm": `weight` w of BT vs BCE), a PRM ("prm"), a generative verifier
    ("generative", on the outcomes, its question and verdict tokens `verdict`) or a likelihood RM ("likelihood",
    on the split pairs, its score scaled by `beta`) in place.

    schedule: "cosine" (warm-up, then decay to a tenth of `lr`) or "constant"; bf16: autocast the
    forward passes; token_level: the ORM's BCE at every response token; lm_coef: the weight of the
    next-token loss on what the labels call right (needs tied embeddings). Calls on_step(step, stats)
    after each optimizer step (stats: loss, lr and the loss parts). Returns the number of tokens
    trained on (for the 6·N·tokens FLOPs estimate).
    """
    min_ratio = final_ratio(schedule)
    parts = training_parts(model, data, kind, verdict, lm_coef)
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
                loss, stats, n = prm_batch_loss(model, batches[0], pad_id, lm_coef)
            elif kind == "generative":
                loss, stats, n = generative_loss(model, batches[0], verdict, pad_id, lm_coef)
            elif kind == "likelihood":
                loss, stats, n = likelihood_loss(model, batches[0], beta, pad_id)
            else:
                loss, stats, n = orm_loss(model, *batches, weight, pad_id, token_level, lm_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += n
        if on_step is not None:
            on_step(step + 1, {"loss": loss.item(), "lr": opt.param_groups[0]["lr"], **stats})
    model.eval()
    return tokens
