"""A compact Llama forward that runs on the weights of a Hugging Face Llama: the miniature world's fast path.

It implements exactly the Llama that `models.forward.fast_path_reason` accepts (tests show its
logits equal `LlamaForCausalLM`'s on the same weights); `models.forward` sends every other model,
of any architecture, through the model's own forward, so nothing else should call these functions
on a model that does not pass that check. The HF classes are the storage format. Every function here reads the
parameters of a `LlamaModel` backbone in place (`model.model` of a
`LlamaForCausalLM` or of a `LlamaForSequenceClassification`), so gradients
flow into the HF model and `save_pretrained` saves what was trained. What we
gain over calling the HF model: a short, fixed sequence of tensor ops (no mask
factories or output objects), decoding into a cache written in place
(HF's default cache concatenates every layer's keys and values at every step),
and for the sampler's forwards (`prefill`, `decode_step`) on a CPU, the oneDNN
matmuls of `models.kernels` (the weights packed once a rollout) instead of MKL's.

One decoder layer on tokens x [N, D], with H query heads and Hkv key/value
heads of size Dh (query head i reads key/value head i // (H / Hkv)):

    h = rms_norm(x);  q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ;  q, k = rope(q), rope(k)
    x = x + softmax(q kᵀ / √Dh + mask) v Woᵀ
    h = rms_norm(x);  x = x + (silu(h Wgᵀ) * h Wuᵀ) Wdᵀ

Everything but the attention acts on each token alone, so a layer takes its
tokens as one flat list [N, D] and leaves their arrangement into sequences to
the attention. Positions count real tokens only (`attention_mask.cumsum(-1) - 1`),
so a left-padded prompt gets the positions it would have unpadded, as in HF
`generate`; pads are masked as keys wherever they sit in the row.

What differs between uses is which tokens go in and how they attend: every
token of a padded batch, within its sequence (`hidden_states`, training and
scoring); the real prompt tokens only, within their prompt, while filling a
`KVCache` (`prefill`); one new token per row, to the cache (`decode_step`);
distinct prompts and the responses that share them (`models.shared_prefix`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from rlhfscale.errors import BadInput

from . import decode_attention, kernels, seq_attention, train_ops
from .cache_memory import CacheMemory
from .decode_plan import DecodePlan

# RoPE variants whose frequencies do not depend on the sequence length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# `prefill` runs the prompts in groups of rows of about this many tokens: on a
# CPU a group's activations then stay in cache (a quarter faster for the ladder
# models), and the matmuls remain large enough to fill a GPU.
PREFILL_TOKENS = 2048


def unsupported_features(config: LlamaConfig) -> list[str]:
    """The settings of a model config this forward does not implement (empty: it runs the model exactly).

    It implements a Llama: SiLU MLP and attention without biases, dropout or sliding window, a RoPE
    whose frequencies do not depend on the length, one kind of attention in every layer."""
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    found = {
        "model_type": config.model_type != "llama",
        "rope_parameters.rope_type": rope_type not in STATIC_ROPE_TYPES,
        "hidden_act": getattr(config, "hidden_act", None) != "silu",
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": bool(getattr(config, "mlp_bias", False)),
        "attention_dropout": bool(getattr(config, "attention_dropout", 0.0)),
        "sliding_window": getattr(config, "sliding_window", None) is not None,
        "pretraining_tp": getattr(config, "pretraining_tp", 1) not in (None, 1),
        "layer_types": any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()),
    }
    return [name for name, bad in found.items() if bad]


def check_config(config: LlamaConfig) -> None:
    """Raise `BadInput` for a model this forward does not implement (`unsupported_features`)."""
    found = unsupported_features(config)
    if "rope_parameters.rope_type" in found:
        raise BadInput(
            f"model config: field 'rope_parameters.rope_type': expected one of "
            f"{', '.join(STATIC_ROPE_TYPES)}, found {config.rope_parameters.get('rope_type')!r}"
        )
    if found:
        raise BadInput(f"model config: the fast Llama forward does not implement {', '.join(found)} "
                       f"(models.forward runs such a model through its own forward)")


def rope_frequencies(config: LlamaConfig, device: torch.device) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [Dh/2] (float32) and the cos/sin scale of the config's RoPE."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        return ROPE_INIT_FUNCTIONS[rope_type](config, device)
    dim = config.head_dim
    theta = config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim), 1.0


@dataclass
class Rope:
    """The RoPE angles of positions 0..n-1, computed once and looked up by position.

    cos, sin: [n, Dh], angle(p, j) = p · inv_freq[j mod Dh/2], times the config's
    scale. `sin` carries the sign of rotate-half, -sin on the first half of a head
    and +sin on the second: rotate_half(x) = cat(-x2, x1) and roll(x, Dh/2) =
    cat(x2, x1), so rope(x) = x·cos + rotate_half(x)·sin = x·cos + roll(x, Dh/2)·sin
    (`kernels.apply_rope`), the same products as HF's.
    """

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def of(cls, config: LlamaConfig, n: int, dtype: torch.dtype, device: torch.device) -> Rope:
        """The table of the config's RoPE for n positions, in `dtype`."""
        inv_freq, scale = rope_frequencies(config, device)
        freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq  # [n, Dh/2]
        cos, sin = torch.cat((freqs, freqs), dim=-1).cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
        return cls((cos * scale).to(dtype), (sin * scale).to(dtype))

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, 1, Dh] of integer positions [N] (the 1 broadcasts over heads)."""
        return self.cos[positions, None], self.sin[positions, None]


def attention_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T]: query t may read key s iff s <= t and s is not a pad.

    The diagonal is always open, so a pad query reads itself instead of nothing
    (a fully masked row would give NaN); no real query has a pad on its diagonal.
    """
    T = attention_mask.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    return causal & (attention_mask.bool()[:, None, None, :] | diagonal)


def positions_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions [B, T]: the index of each token among the real ones (pads get their neighbour's)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def self_attention(q, k, v, mask):
    """softmax(q kᵀ / √Dh + mask) v within one sequence: q [B, H, T, Dh], k, v [B, Hkv, T, Dh]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def _layer(layer, x, cos, sin, attend, ops=train_ops.TRAIN, keep=None):
    """One HF `LlamaDecoderLayer` on tokens x [N, D]; attend(q, k, v) -> [M, H·Dh] is its attention.

    ops: its kernels (`train_ops.TRAIN`, or `kernels.FAST` for inference). keep: indices [M] of the tokens whose
    output is wanted (None: all N); the others only give their keys and values to `attend`, which gets the
    queries of the kept tokens alone."""
    attn, mlp = layer.self_attn, layer.mlp
    N, Dh = x.shape[0], attn.head_dim
    h = ops.rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
    hq, cq, sq = (h, cos, sin) if keep is None else (h[keep], cos[keep], sin[keep])
    # q, k, v in this order: autograd sums h's gradient from them in reverse, so another order would change training
    q = ops.apply_rope(ops.linear(attn.q_proj, hq).view(len(hq), -1, Dh), cq, sq)  # [M, H, Dh]
    k = ops.apply_rope(ops.linear(attn.k_proj, h).view(N, -1, Dh), cos, sin)  # [N, Hkv, Dh]
    v = ops.linear(attn.v_proj, h).view(N, -1, Dh)
    x = ops.linear_add(attn.o_proj, attend(q, k, v), x if keep is None else x[keep])
    h = ops.rms_norm(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
    return ops.linear_add(mlp.down_proj, ops.swiglu(mlp, h), x)


def decoder(backbone: LlamaModel, tokens, cos, sin, attend, ops=train_ops.TRAIN, keep=None) -> torch.Tensor:
    """Final-normed hidden states [N, D] of tokens [N] whose RoPE angles are cos, sin [N, 1, Dh].

    attend(i, q, k, v) is the attention of layer i; ops: the layers' kernels (see `_layer`). With `keep`
    (indices [M]), the states [M, D] of those tokens only: the last layer computes the others' keys and values
    and nothing more (a prompt's prefill needs its last token's state and every token's keys and values).
    """
    check_config(backbone.config)
    return _layers(backbone, tokens, cos, sin, attend, ops, keep)


def _layers(backbone: LlamaModel, tokens, cos, sin, attend, ops, keep=None) -> torch.Tensor:
    """`decoder` on a backbone whose config was checked (a decoding step: when its cache was built)."""
    x, last = backbone.embed_tokens(tokens), len(backbone.layers) - 1
    for i, layer in enumerate(backbone.layers):
        if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
            # recomputed in backward
            x = checkpoint(_layer, layer, x, cos, sin, partial(attend, i), ops, use_reentrant=False)
        else:
            x = _layer(layer, x, cos, sin, partial(attend, i), ops, keep if i == last else None)
    return ops.rms_norm(x, backbone.norm.weight, backbone.norm.variance_epsilon)


def hidden_states(backbone: LlamaModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states [B, T, D] of input_ids [B, T] (pads: attention_mask [B, T] == 0)."""
    (B, T), emb = input_ids.shape, backbone.embed_tokens.weight
    mask, rows = attention_mask_4d(attention_mask), torch.arange(B, device=input_ids.device)
    rope = Rope.of(backbone.config, T, emb.dtype, emb.device)

    def attend(i, q, k, v):  # [B·T, heads, Dh] -> [B, heads, T, Dh] and back
        q, k, v = (t.view(B, T, *t.shape[1:]) for t in (q, k, v))
        if seq_attention.applies(q):  # token-major, as the layers make them
            return seq_attention.attention(q, k, v, rows, None, None, mask).view(B * T, -1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return self_attention(q, k, v, mask).transpose(1, 2).reshape(B * T, -1)

    h = decoder(backbone, input_ids.flatten(), *rope.at(positions_of(attention_mask).flatten()), attend)
    return h.view(B, T, -1)


def causal_lm_logits(model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, T, V] of input_ids [B, T]."""
    return model.lm_head(hidden_states(model.model, input_ids, attention_mask))


def token_logprobs(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(x_t | x_<t) [B, T-1] for t = 1..T-1 under softmax(logits / temperature).

    With `with_entropy`, also the entropy [B, T-1] of each of those next-token
    distributions. Computed in float32 whatever the model dtype.
    """
    h = hidden_states(model.model, input_ids, attention_mask)[:, :-1]
    return next_token_logprobs(model, h, input_ids[:, 1:], temperature, with_entropy)


def next_token_logprobs(
    model: LlamaForCausalLM, h: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) [B, T] of the LM head on hidden states h [B, T, D] under softmax(logits / temperature),
    in float32; with `with_entropy`, also each distribution's entropy [B, T]."""
    return select_logprobs(model.lm_head(h), targets, temperature, with_entropy)


def select_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) [B, T] under softmax(logits [B, T, V] / temperature), in float32; with `with_entropy`,
    also each distribution's entropy [B, T]."""
    logp = (logits.float() / temperature).log_softmax(-1)  # [B, T, V]
    chosen = logp.gather(-1, targets[..., None]).squeeze(-1)
    if not with_entropy:
        return chosen
    return chosen, -(logp.exp() * logp).sum(-1)


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
        h = _layers(model.model, tokens, *cache.rope.at(cache.positions), cache.attend, cache.ops)
        logits = cache.ops.linear(model.lm_head, h)
    cache.length += 1
    cache.positions += 1
    return logits
