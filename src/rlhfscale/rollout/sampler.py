"""Batched sampling with a KV cache (any device, any dtype).

    prompts ─left-pad─▶ prefill ─▶ logits ─▶ next token ─▶ decode_step ─▶ logits ─▶ …

Each distinct prompt is prefilled once and its cache copied to the rows that
continue it (RL samples n responses per prompt). On a CPU the cache, and the weights packed for
oneDNN, take memory kept from the last rollout (`CACHE_MEMORY`, `models.cache_memory`). Each step then feeds one
token per unfinished row through `models.forward.decode_step`: for the ladder's
Llama models the hand-written forward, into a cache allocated once with room for
the prompts and every token fed; for any other model its own forward and KV cache
(`models.forward` decides which, per model).
A row finishes at EOS (kept in the response) or after `max_new_tokens`; when
half of the rows still in the batch have finished, they are dropped from the
batch and the cache, so long stragglers do not drag finished rows along.

The recorded log-prob of a token is under softmax(logits / temperature) of the
full vocabulary (temperature 1 for greedy), whatever top-k / top-p truncation
chose it: that is the behaviour policy's log-prob that RL losses compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import PreTrainedModel

from rlhfscale.models.cache_memory import CacheMemory
from rlhfscale.models.forward import decode_step, input_device, prefill, select_rows
from rlhfscale.models.kernels import extension_ok
from rlhfscale.models.shared_prefix import distinct_prompts
from rlhfscale.models.train import left_pad

CACHE_MEMORY = CacheMemory()  # the KV caches' memory on a CPU, kept from one rollout to the next


@dataclass
class Rollout:
    """Prompts and sampled responses, padded into rectangles.

    prompt_ids, prompt_mask: [B, P], left-padded with pad_id (mask 0 on pads).
    response_ids, response_mask: [B, R], right-padded with pad_id; the mask is 1
        on generated tokens, the EOS included.
    logprobs: [B, R], log-prob of each generated token when it was sampled; 0 on pads.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor

    @property
    def sequences(self) -> torch.Tensor:
        """Prompt and response side by side, [B, P + R]."""
        return torch.cat((self.prompt_ids, self.response_ids), dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """The mask of `sequences`, [B, P + R]."""
        return torch.cat((self.prompt_mask, self.response_mask), dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """Generated tokens per row, [B]."""
        return self.response_mask.sum(-1)


def truncate(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf the log-probs [B, V] outside the top k, then outside the top-p nucleus.

    The nucleus is the smallest set of most likely tokens whose probability
    (renormalised after top-k) reaches top_p; the most likely token is always kept.
    """
    if top_k > 0:
        kth = logp.topk(min(top_k, logp.shape[-1]), dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_logp.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        sorted_logp = sorted_logp.masked_fill(mass_before >= top_p, float("-inf"))
        logp = torch.empty_like(logp).scatter_(-1, order, sorted_logp)
    return logp


def next_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a token per row from logits [B, V]; returns tokens [B] and their log-probs [B].

    Without truncation on a CPU, one C++ pass a row draws by the inverse CDF from one uniform a row
    (`csrc/sample.cpp`). Elsewhere sampling is Gumbel-max: argmax(log p + G) with G = -log(-log U), U
    uniform, is a draw from p; drawing uniforms only, it is about 3× faster on a CPU than `torch.multinomial`.
    """
    if temperature > 0 and top_k == 0 and top_p == 1.0 and logits.stride(-1) == 1 and extension_ok(logits):
        u = torch.rand(logits.shape[0], generator=generator, device=logits.device)
        return torch.ops.rlhfscale.sample_next(logits, u, 1.0 / temperature)
    logits = logits.float()
    logp = (logits if temperature in (0, 1) else logits / temperature).log_softmax(-1)
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        u = torch.rand(logp.shape, generator=generator, device=logp.device)
        tokens = (truncate(logp, top_k, top_p) - u.log().neg().log()).argmax(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def _check_args(prompts, max_new_tokens, temperature, top_p, top_k) -> None:
    if not prompts or not all(prompts):
        raise ValueError("sample: every prompt needs at least one token")
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"sample: expected max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1, top_k >= 0; "
            f"found {max_new_tokens}, {temperature}, {top_p}, {top_k}"
        )


def sample(
    model: PreTrainedModel,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Continue each prompt (a list of token ids) until EOS or max_new_tokens.

    temperature 0 is greedy; top_k 0 and top_p 1 disable truncation. The same
    `generator` state gives the same tokens. Runs on the model's device under
    `torch.inference_mode()`; the returned tensors are ordinary ones, usable in
    autograd (e.g. as masks and old log-probs of an RL loss).
    """
    _check_args(prompts, max_new_tokens, temperature, top_p, top_k)
    with torch.inference_mode(), CACHE_MEMORY.lend() as memory:
        rollout = _generate(model, prompts, max_new_tokens, temperature, top_p, top_k, eos_id, pad_id, generator,
                            memory)
    return Rollout(**{f.name: getattr(rollout, f.name).clone() for f in fields(Rollout)})


def _generate(model, prompts, max_new_tokens, temperature, top_p, top_k, eos_id, pad_id, generator,
              memory) -> Rollout:
    """The decoding loop of `sample`; the cache takes `memory` (`models.cache_memory`) where it can."""
    device = input_device(model)
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    (B, P), R = prompt_ids.shape, max_new_tokens
    ids_u, mask_u, inverse = distinct_prompts(prompt_ids, prompt_mask)  # the n copies of a prompt: one prefill
    packs = memory.packs if memory is not None else None
    if len(ids_u) == B:  # every prompt distinct: prefill them in place, no copy of the cache
        logits, cache = prefill(model, prompt_ids, prompt_mask, P + R - 1, memory, packs)  # the last token is not fed
    else:
        logits, cache = prefill(model, ids_u, mask_u, P + R - 1, packs=packs)
        logits, cache = logits.index_select(0, inverse), select_rows(cache, inverse, memory)

    tokens_out = torch.full((B, R), pad_id, dtype=torch.long, device=device)
    logprobs_out = torch.zeros((B, R), dtype=torch.float32, device=device)
    rows = torch.arange(B, device=device)  # batch row of each sequence still in the loop
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(R):
        tokens, logprobs = next_tokens(logits, temperature, top_k, top_p, generator)
        at = slice(None) if len(rows) == B else rows  # a plain copy until the first compaction
        tokens_out[at, step], logprobs_out[at, step] = tokens, logprobs
        done |= tokens == eos_id
        alive = len(done) - int(done.sum())
        if alive == 0 or step == R - 1:
            break
        if alive <= len(done) // 2:  # compact: keep only the unfinished rows
            keep = (~done).nonzero().squeeze(1)
            rows, tokens, done, cache = rows[keep], tokens[keep], done[keep], cache.select(keep)
        logits = decode_step(model, cache, tokens)

    eos = tokens_out[:, : step + 1] == eos_id
    mask = (eos.cumsum(-1) - eos.long()) == 0  # up to and including each row's first EOS
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=tokens_out[:, : step + 1].masked_fill(~mask, pad_id),
        response_mask=mask.long(),
        logprobs=logprobs_out[:, : step + 1].masked_fill(~mask, 0.0),
    )
