"""Held-out evaluation: pass@1 (greedy), pass@k and maj@k (sampled)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models.forward import input_device
from ..models.text import encode_prompts, encode_responses
from ..rewards.metrics import majority_vote, pass_at_k
from ..tasks import score_all
from ..tasks.base import Example, Task
from .sampler import sample


@torch.no_grad()
def generate(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: Sequence[str], *, n: int = 1,
    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 64,
    seed: int = 0, batch_size: int = 1024, prefixes: Sequence[str] | None = None,
) -> list[list[str]]:
    """`n` responses (decoded, without EOS) for each prompt, in batches of `batch_size` sequences.

    Prompts go through the chat template when the tokenizer has one (`models.text`). `prefixes`: response text
    already written after each prompt (e.g. the first steps, for Monte-Carlo step labels); the responses
    returned continue it (without repeating it)."""
    ids = encode_prompts(tok, list(prompts))
    if prefixes is not None:
        ids = [p + r for p, r in zip(ids, encode_responses(tok, list(prefixes)), strict=True)]
    flat = [p for p in ids for _ in range(n)]
    gen = torch.Generator(device=input_device(model)).manual_seed(seed)
    texts: list[str] = []
    for i in range(0, len(flat), batch_size):
        ro = sample(model, flat[i:i + batch_size], max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, top_k=top_k, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=gen)
        texts += tok.batch_decode(ro.response_ids, skip_special_tokens=True)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def evaluate(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, task: Task, examples: Sequence[Example], *,
    max_new_tokens: int, k: int = 0, temperature: float = 1.0, seed: int = 0,
) -> dict[str, float]:
    """``eval/pass@1`` (greedy) and, when k > 0, ``eval/maj@k``, ``eval/sample_acc`` (the sampled pass@1) and,
    for k > 1, ``eval/pass@k`` from k samples (k = 1 leaves ``eval/pass@1`` the greedy figure)."""
    prompts = [e.prompt for e in examples]
    greedy = generate(model, tok, prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    out = {"eval/pass@1": sum(score_all(task, examples, [r[0] for r in greedy])) / len(examples)}
    if k > 0:
        samples = generate(model, tok, prompts, n=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        scores = score_all(task, [e for e in examples for _ in range(k)], [r for rs in samples for r in rs])
        correct = [sum(s >= 1.0 for s in scores[i * k:(i + 1) * k]) for i in range(len(examples))]
        votes = [majority_vote([task.extract_answer(r) for r in rs]) for rs in samples]
        if k > 1:
            out[f"eval/pass@{k}"] = sum(pass_at_k(k, c, k) for c in correct) / len(examples)
        out[f"eval/maj@{k}"] = sum(v is not None and v == e.answer for e, v in zip(examples, votes)) / len(examples)
        out["eval/sample_acc"] = sum(correct) / (k * len(examples))
    return out
