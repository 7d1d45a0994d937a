"""Training utilities shared by SFT, RM and RL: batching, the optimizer and its schedule, bf16
autocast, the SFT loop."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .checkpoint import Checkpointer
from .forward import token_logprobs
from .text import encode_prompts, encode_responses


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``ids [B, T]`` and ``mask [B, T]`` (1 on real tokens).

    One tensor of all the tokens, scattered under the mask: for `bench rollout`'s 256 prompts 0.35 ms, where a
    copy a row took 1.2."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    T = int(lengths.max())
    real = torch.arange(T) >= T - lengths[:, None]  # [B, T]
    ids = torch.full(real.shape, pad_id, dtype=torch.long)
    ids[real] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)
    return ids.to(device), real.long().to(device)


def encode_pairs(tok: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Tokenize (prompt, response) pairs: the prompt through the chat template when the tokenizer has one
    (`models.text`), the response as it is with the EOS token appended."""
    return list(zip(encode_prompts(tok, list(prompts)), encode_responses(tok, list(responses), eos=True)))


def response_batch(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ids [B, T]``, ``attn [B, T]`` and ``loss_mask [B, T-1]`` (1 where token t+1 is a response token)."""
    ids, attn = left_pad([p + r for p, r in pairs], pad_id, device)
    is_resp = torch.zeros_like(attn)
    for i, (_, r) in enumerate(pairs):
        is_resp[i, attn.shape[1] - len(r):] = 1
    return ids, attn, is_resp[:, 1:]


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (β = 0.9, 0.95) with decay on matrices only, as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


@contextmanager
def mixed_precision(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast (rl.bf16, rm.bf16) for forward passes; their backward follows.

    The fast Llama path's attention on a CPU takes the project's kernel (`models.seq_attention`). Where SDPA runs
    instead (the generic path, or without the C++ extension), a forward that will be differentiated (grad enabled
    on entry) runs it through the math kernel: its bf16 backward is a few bf16 matmuls, the fused flash kernel's is
    several times slower (forward and backward of a micro GRPO batch's response attention, 128 × 4 heads × 16
    queries × 32 keys: 30 vs 5 ms). A forward without grad (the reference model's, scoring) keeps the flash kernel,
    4× faster than the math one there (1.6 vs 7 ms)."""
    if not enabled:
        yield
        return
    math = device.type == "cpu" and torch.is_grad_enabled()
    with torch.autocast(device.type, dtype=torch.bfloat16), (sdpa_kernel(SDPBackend.MATH) if math else nullcontext()):
        yield


def checkpoint_activations(model: PreTrainedModel, enabled: bool) -> PreTrainedModel:
    """With `enabled` (the config's gradient_checkpointing), recompute each decoder layer's activations in the
    backward pass: transformers' own on the generic forward, `llama.decoder`'s on the fast path (it reads the
    same per-layer flag). Returns `model`."""
    if enabled:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


SCHEDULES = {"cosine": 0.1, "constant": 1.0}  # name -> the final fraction of the peak learning rate


def final_ratio(schedule: str) -> float:
    """The final fraction of the peak learning rate of a `SCHEDULES` name; an unknown name lists the valid ones."""
    if schedule not in SCHEDULES:
        raise KeyError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up to 1, cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sft_loss(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (teacher forcing)."""
    logp = token_logprobs(model, ids, attn)  # [B, T-1]
    return -(logp * loss_mask).sum() / loss_mask.sum().clamp(min=1)


def sft_loop(
    model: PreTrainedModel,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    weight_decay: float,
    pad_id: int,
    seed: int,
    schedule: str = "cosine",
    on_step: Callable[[int, float, float], None] | None = None,
    checkpoint: Checkpointer | None = None,
    extra_state: Callable[[], dict[str, Any]] = dict,
) -> list[float]:
    """Supervised fine-tuning on (prompt, response) token pairs; returns the loss per step.

    schedule: "cosine" (warm-up, then decay to a tenth of `lr`) or "constant" (warm-up, then `lr`).
    With `checkpoint`, the state (model, optimizer, data order, losses, the caller's `extra_state()`)
    is saved on its schedule, and a state it holds is resumed from: the result is the uninterrupted run's."""
    min_ratio = final_ratio(schedule)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(model, lr, weight_decay)
    losses: list[float] = []
    start = 0
    if checkpoint is not None and (state := checkpoint.load()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        losses, start = list(state["losses"]), state["step"]
    model.train()
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, steps, warmup, min_ratio)
        idx = torch.randint(len(pairs), (batch_size,), generator=gen).tolist()
        ids, attn, loss_mask = response_batch([pairs[i] for i in idx], pad_id, device)
        loss = sft_loss(model, ids, attn, loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1], opt.param_groups[0]["lr"])
        if checkpoint is not None and checkpoint.due(step + 1, steps):
            checkpoint.save(step + 1, {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                                       "losses": losses, "extra": extra_state()})
    model.eval()
    return losses
