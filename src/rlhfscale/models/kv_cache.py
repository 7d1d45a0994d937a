"""The sampler's forwards on the fast Llama path (`models.llama`): prompts prefilled into a KV cache, then one
token per row a step.

The cache is written in place, allocated once with room for the prompts and every token the sampler will feed
(HF's default cache concatenates every layer's keys and values at every step). Only the real prompt tokens go
through the layers in `prefill`, each attending within its prompt; `decode_step` feeds one token per row and
attends it to the cache (`models.decode_attention`). On a CPU both run the oneDNN products of `models.kernels`,
the weights packed once a rollout, and the decoding step is prepared once a rollout (`models.decode_plan`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from . import decode_attention, kernels
from .cache_memory import CacheMemory
from .decode_plan import DecodePlan
from .llama import Rope, attention_mask_4d, check_config, checked_decoder, decoder, positions_of, self_attention

# `prefill` runs the prompts in groups of rows of about this many tokens, which bounds the activations a group
# holds while keeping the products large. On the 2-core CPU host, prefilling `bench rollout`'s 256 prompts
# (3,300 tokens) in one group took 0.91 of the time of two groups of 2048 at `micro` and 0.95 at `tiny`
# (in-process A/B, 20 interleaved rounds, medians of the paired ratios); groups of 1024, 512 and 256 took
# 1.10, 1.24 and 1.55 of the time of groups of 2048.
PREFILL_TOKENS = 4096


@dataclass
class KVCache:
    """Keys and values of every layer, for decoding one token at a time.

    k: the keys transposed (a column per token), C the capacity: [L, B, Hkv, Dh, C], or where the fused kernel
        attends [L, B, Hkv, C / TILE, Dh, TILE], in tiles of `decode_attention.TILE` columns (`key_layout`; C
        then a multiple of TILE);
    v: [L, B, Hkv, C, Dh]. Columns [0, length) hold the prompt and the tokens fed
        so far, prompt pads zeros; the others zeros, or anything where the fused
        kernel attends (`decode_attention.uses_fused`: it never reads them).
    mask: [B, 1, 1, C], additive: 0 on real tokens, -inf on prompt pads and
        on columns not written yet.
    positions: [B], the RoPE position of each row's next token.
    rope: the RoPE table of positions 0..C-1 (`decode_step` builds it if missing).
    ops: the kernels of the forwards that fill it (`kernels.for_inference`: the model's weights packed for
        oneDNN once, at `for_prompts`; a cache serves one rollout of fixed weights).
    plan: the decoding step with those kernels looked up once (`models.decode_plan`), where it applies.

    A step's attention (`models.decode_attention`) reads the written columns only (the fused CPU kernel) or
    all C with the mask hiding the others (the eager ops). A caller that knows how many tokens it will feed
    sizes the cache for them (`sample` does); the capacity doubles when full.
    """

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    length: int
    rope: Rope | None = None
    ops: type[kernels.FAST] | kernels.Prepacked = kernels.FAST
    plan: DecodePlan | None = None

    @classmethod
    def for_prompts(cls, model: LlamaForCausalLM, attention_mask: torch.Tensor, capacity: int,
                    memory: CacheMemory | None = None, packs: MutableMapping | None = None) -> KVCache:
        """An empty cache for prompts with attention_mask [B, P], of capacity >= P columns (rounded up to whole
        tiles where the keys are tiled, and then in `memory` where given); its kernels' packed weights in the
        buffers of `packs` where given (`kernels.pack`)."""
        config, (B, P), emb = model.config, attention_mask.shape, model.model.embed_tokens.weight
        check_config(config)
        L, Hkv, Dh = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        tiled, T = decode_attention.key_layout(emb.device) == "tiled", decode_attention.TILE
        capacity = -(-capacity // T) * T if tiled else capacity
        mask = torch.full((B, 1, 1, capacity), float("-inf"), dtype=emb.dtype, device=emb.device)
        mask[:, 0, 0, :P].masked_fill_(attention_mask.bool(), 0.0)
        rope = Rope.of(config, capacity, emb.dtype, emb.device)
        if tiled:  # the fused kernel reads written columns and prompt pads only: those zeroed
            k, v = _tiled_buffers((L, B, Hkv, capacity, Dh), emb, memory)
            k[:, :, :, : -(-P // T)].zero_()
            v[:, :, :, :P].zero_()
        else:  # the eager attention reads every column, the mask hiding the unwritten ones
            k, v = emb.new_zeros((L, B, Hkv, Dh, capacity)), emb.new_zeros((L, B, Hkv, capacity, Dh))
        ops = kernels.for_inference(model, rows=B, kept=packs)
        return cls(k, v, mask, positions=attention_mask.long().sum(-1), length=P, rope=rope, ops=ops,
                   plan=DecodePlan.of(model, ops))

    @property
    def capacity(self) -> int:
        """C, the columns the cache has room for."""
        return self.v.shape[3]

    def select(self, rows: torch.Tensor, memory: CacheMemory | None = None) -> KVCache:
        """The cache of the batch rows `rows` [B'] only (drops finished sequences, or repeats a prompt's rows), in
        `memory` where given and the keys are tiled.

        `index_select`, not `k[:, rows]`: on a CPU the advanced-indexing gather of these 5-d buffers is
        about 10x slower."""
        if memory is not None and self.k.dim() == 6:
            L, _, Hkv, C, Dh = self.v.shape
            k, v = _tiled_buffers((L, len(rows), Hkv, C, Dh), self.v, memory)
            torch.index_select(self.k, 1, rows, out=k)
            torch.index_select(self.v, 1, rows, out=v)
        else:
            k, v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        return KVCache(k, v, self.mask.index_select(0, rows), self.positions.index_select(0, rows), self.length,
                       self.rope, self.ops, self.plan)

    def open_column(self) -> None:
        """Make room for one more token: unmask column `length`, doubling the capacity if full."""
        if self.length == self.capacity:
            self.k = torch.cat((self.k, torch.zeros_like(self.k)), dim=3 if self.k.dim() == 6 else 4)
            self.v = torch.cat((self.v, torch.zeros_like(self.v)), dim=3)
            self.mask = torch.cat((self.mask, torch.full_like(self.mask, float("-inf"))), dim=-1)
        self.mask[..., self.length] = 0

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store one token per row, k, v [B, Hkv, Dh], in column `length`; attend q [B, H, Dh] to the cache.

        Returns [B, H·Dh].
        """
        return decode_attention.attend(q, k, v, self.k[layer], self.v[layer], self.mask, self.length + 1)


def _tiled_buffers(shape: tuple[int, ...], like: torch.Tensor, memory: CacheMemory | None):
    """Uninitialised k [L, B, Hkv, C / TILE, Dh, TILE] and v [L, B, Hkv, C, Dh] of shape = (L, B, Hkv, C, Dh), of
    `like`'s dtype and device, side by side in one buffer: `memory`'s where given."""
    L, B, Hkv, C, Dh = shape
    n, T = L * B * Hkv * C * Dh, decode_attention.TILE  # elements of k, and of v
    nbytes = 2 * n * like.element_size()
    block = memory.take(nbytes) if memory else torch.empty(nbytes, dtype=torch.uint8, device=like.device)
    k, v = block.view(like.dtype).view(2, n)
    return k.view(L, B, Hkv, C // T, Dh, T), v.view(shape)


def prefill(
    model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, capacity: int,
    memory: CacheMemory | None = None, packs: MutableMapping | None = None,
) -> tuple[torch.Tensor, KVCache]:
    """Run left-padded prompts [B, P] through the model, caching keys and values.

    Returns the next-token logits [B, V] at each row's last token and a
    `KVCache` of `capacity` >= P columns (in `memory` where given and it applies, its packed weights in
    the buffers of `packs`: `KVCache.for_prompts`). Only the real tokens go through the
    layers (the pads are skipped, not computed and masked); they are placed in
    their rows for the attention only. Prompts go through in groups of about
    `PREFILL_TOKENS` tokens.
    """
    B, P = input_ids.shape
    cache = KVCache.for_prompts(model, attention_mask, capacity, memory, packs)
    positions = positions_of(attention_mask)
    logits, group = [], max(1, PREFILL_TOKENS // P)
    for rows in (slice(start, start + group) for start in range(0, B, group)):
        real = attention_mask[rows].bool()
        last = _prefill_rows(model, cache, rows, real, input_ids[rows][real], positions[rows][real])
        logits.append(cache.ops.linear(model.lm_head, last))
    return torch.cat(logits), cache


def _prefill_rows(model, cache, rows, real, tokens, positions) -> torch.Tensor:
    """Final hidden states [B', D] of the last real token of each prompt in `rows` (a slice of the batch), caching
    the keys and values of its real tokens [N]. real [B', P] marks where they sit, row by row.

    Where every prompt ends in column P - 1 (left padding), the last layer computes the other tokens' keys and
    values only (`decoder`'s `keep`): at `micro` that skips 44% of a prefill's products."""
    b, p = real.nonzero(as_tuple=True)  # row and column of each real token
    P, layers = real.shape[1], len(model.model.layers)
    ends = real.sum(-1).cumsum(0) - 1  # each prompt's last token among the N
    keep = ends if bool(real[:, -1].all()) else None
    if decode_attention.uses_fused(tokens.device):  # the fused kernel stores and attends in one pass
        def attend_all(i, q, k, v):
            return decode_attention.prefill(q, k, v, cache.k[i], cache.v[i], cache.mask, b + rows.start, p)
    else:
        causal = attention_mask_4d(real)  # [B', 1, P, P]

        def attend_all(i, q, k, v):  # q [N, H, Dh], k, v [N, Hkv, Dh] -> placed in their rows [B', P, heads, Dh]
            # keys, values: views of the cache's first P columns, [B', P, Hkv, Dh]
            keys, values = cache.k[i, rows, ..., :P].permute(0, 3, 1, 2), cache.v[i, rows, :, :P].transpose(1, 2)
            keys[b, p], values[b, p] = k, v
            queries = q.new_zeros(*real.shape, *q.shape[1:])  # a pad queries its own (zero) key
            queries[b, p] = q
            a = self_attention(queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), causal)
            return a.transpose(1, 2)[b, p].flatten(1)

    def attend(i, q, k, v):
        if keep is not None and i == layers - 1:  # the last tokens' queries only
            return _attend_last(cache, i, rows, b, p, q, k, v, keep)
        return attend_all(i, q, k, v)

    h = decoder(model.model, tokens, *cache.rope.at(positions), attend, ops=cache.ops, keep=keep)
    return h if keep is not None else h[ends]


def _attend_last(cache, i, rows, b, p, q, k, v, ends) -> torch.Tensor:
    """Layer i of a prefill whose prompts (cache rows `rows`) all end in column P - 1: store the keys and values
    k, v [N, Hkv, Dh] of every real token (row b, column p) in the cache, then attend the queries q [B', H, Dh] of
    the last tokens (`ends`) as a decoding step at column P - 1 does. Returns [B', H·Dh]."""
    kt, vc, P = cache.k[i, rows], cache.v[i, rows], cache.length
    decode_attention.store_keys(kt, b, p, k)
    vc[b, :, p] = v
    return decode_attention.attend(q, k[ends], v[ends], kt, vc, cache.mask[rows], P)


def decode_step(model: LlamaForCausalLM, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens [B]; returns next-token logits [B, V] and advances the cache."""
    cache.open_column()
    if cache.rope is None or len(cache.rope.cos) < cache.capacity:  # a cache built elsewhere, or grown
        check_config(model.config)  # (`for_prompts` checked it for the caches of `prefill`)
        cache.rope = Rope.of(model.config, cache.capacity, cache.v.dtype, cache.v.device)
    if cache.plan is not None and len(tokens) >= cache.plan.min_rows:
        logits = cache.plan.logits(cache, tokens)
    else:
        h = checked_decoder(model.model, tokens, *cache.rope.at(cache.positions), cache.attend, cache.ops)
        logits = cache.ops.linear(model.lm_head, h)
    cache.length += 1
    cache.positions += 1
    return logits
