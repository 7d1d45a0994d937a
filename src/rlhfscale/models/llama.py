"""A compact Llama forward that runs on the weights of a Hugging Face Llama.

The HF classes are the storage format. Every function here reads the
parameters of a `LlamaModel` backbone in place (`model.model` of a
`LlamaForCausalLM` or of a `LlamaForSequenceClassification`), so gradients
flow into the HF model and `save_pretrained` saves what was trained. What we
gain over calling the HF model is a short, fixed sequence of tensor ops: no
mask factories, cache objects or output dataclasses, the per-call overhead
that dominates tiny models on a CPU.

One decoder layer on x [B, T, D], with H query heads and Hkv key/value heads
of size Dh (query head i reads key/value head i // (H / Hkv)):

    h = rms_norm(x);  q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ;  q, k = rope(q), rope(k)
    x = x + softmax(q kᵀ / √Dh + mask) v Woᵀ
    h = rms_norm(x);  x = x + (silu(h Wgᵀ) * h Wuᵀ) Wdᵀ

Positions count real tokens only (`attention_mask.cumsum(-1) - 1`), so a
left-padded prompt gets the positions it would have unpadded, as in HF
`generate`; pads are masked as keys wherever they sit in the row.

Incremental decoding (`prefill`, then `decode_step` once per token) keeps
keys and values in a `KVCache` preallocated for the whole rollout, and runs
on `DecodeWeights`: the same weights with q/k/v and gate/up fused into one
matrix each, copied once without gradient because sampling needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from rlhfscale.errors import BadInput

# RoPE variants whose frequencies do not depend on the sequence length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def check_config(config: LlamaConfig) -> None:
    """Raise `BadInput` for Llama variants this forward does not implement."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        raise BadInput(
            f"model config: field 'rope_parameters.rope_type': expected one of "
            f"{', '.join(STATIC_ROPE_TYPES)}, found {rope_type!r}"
        )
    if config.hidden_act != "silu":
        raise BadInput(f"model config: field 'hidden_act': expected 'silu', found {config.hidden_act!r}")
    if config.attention_dropout:
        raise BadInput(f"model config: field 'attention_dropout': expected 0, found {config.attention_dropout}")


def rope_frequencies(config: LlamaConfig, device: torch.device) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [Dh/2] (float32) and the cos/sin scale of the config's RoPE."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type != "default":
        return ROPE_INIT_FUNCTIONS[rope_type](config, device)
    dim = config.head_dim or config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim), 1.0


def rope_cos_sin(
    inv_freq: torch.Tensor, scale: float, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., Dh] for integer positions [...]: angle(p, j) = p · inv_freq[j mod Dh/2]."""
    freqs = positions[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., Dh] pairwise (i, i + Dh/2) by the angles in cos, sin (broadcast to x)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / sqrt(mean(x²) + eps) over the last dim, computed in float32 as HF does."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def attention_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T]: query t may read key s iff s <= t and s is not a pad.

    The diagonal is always open, so a pad query reads itself instead of nothing
    (a fully masked row would give NaN); no real query has a pad on its diagonal.
    """
    T = attention_mask.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    diagonal = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    return causal & (attention_mask.bool()[:, None, None, :] | diagonal)


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated for a whole rollout.

    k, v: [L, B, Hkv, T_max, Dh], filled in columns [0, length).
    mask: [B, 1, 1, T_max], additive: 0 for real tokens, -inf for prompt pads.
    positions: [B], the RoPE position of each row's next token.
    """

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    length: int

    def select(self, rows: torch.Tensor) -> KVCache:
        """The cache of the batch rows `rows` [B'] only (drops finished sequences)."""
        return KVCache(self.k[:, rows], self.v[:, rows], self.mask[rows], self.positions[rows], self.length)


def _layer(layer, x, cos, sin, mask):
    """One HF `LlamaDecoderLayer` on x [B, T, D] -> (x [B, T, D], k, v [B, Hkv, T, Dh])."""
    attn, mlp = layer.self_attn, layer.mlp
    B, T, _ = x.shape
    h = rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
    q = attn.q_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, H, T, Dh]
    k = attn.k_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
    v = attn.v_proj(h).view(B, T, -1, attn.head_dim).transpose(1, 2)  # [B, Hkv, T, Dh]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])
    x = x + attn.o_proj(a.transpose(1, 2).reshape(B, T, -1))
    h = rms_norm(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
    return x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h)), k, v


def _forward(backbone: LlamaModel, input_ids, attention_mask, cache: KVCache | None = None):
    """Final-normed hidden states [B, T, D]; stores every layer's k, v in `cache` when given."""
    check_config(backbone.config)
    x = backbone.embed_tokens(input_ids)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    cos, sin = rope_cos_sin(*rope_frequencies(backbone.config, x.device), positions, x.dtype)
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, Dh]: the same angles for every head
    mask = attention_mask_4d(attention_mask)
    for i, layer in enumerate(backbone.layers):
        x, k, v = _layer(layer, x, cos, sin, mask)
        if cache is not None:
            cache.k[i, :, :, : k.shape[2]] = k
            cache.v[i, :, :, : v.shape[2]] = v
    return rms_norm(x, backbone.norm.weight, backbone.norm.variance_epsilon)


def hidden_states(backbone: LlamaModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states [B, T, D] of input_ids [B, T] (pads: attention_mask [B, T] == 0)."""
    return _forward(backbone, input_ids, attention_mask)


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
    distributions. Computed in float32 (or wider) whatever the model dtype.
    """
    h = hidden_states(model.model, input_ids, attention_mask)[:, :-1]
    logp = (model.lm_head(h).float() / temperature).log_softmax(-1)  # [B, T-1, V]
    chosen = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return chosen
    return chosen, -(logp.exp() * logp).sum(-1)


@dataclass
class LayerWeights:
    """One layer's weights for decoding: q/k/v stacked as rows of `qkv`, gate/up of `gate_up`."""

    attn_norm: torch.Tensor  # [D]
    qkv: torch.Tensor  # [(H + 2 Hkv) Dh, D]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor  # [D, H Dh]
    o_bias: torch.Tensor | None
    mlp_norm: torch.Tensor  # [D]
    gate_up: torch.Tensor  # [2 F, D]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [D, F]
    down_bias: torch.Tensor | None


@dataclass
class DecodeWeights:
    """A `LlamaForCausalLM` laid out for one-token steps (a detached copy: refresh after training)."""

    config: LlamaConfig
    embed: torch.Tensor  # [V, D]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [V, D]
    inv_freq: torch.Tensor  # [Dh/2]
    rope_scale: float


def _fused(*linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights (and biases, if any) of `nn.Linear`s sharing an input, stacked along the output dim."""
    weight = torch.cat([lin.weight for lin in linears])
    biases = [lin.bias for lin in linears]
    return weight, None if biases[0] is None else torch.cat(biases)


@torch.no_grad()
def decode_weights(model: LlamaForCausalLM) -> DecodeWeights:
    """Fuse a model's projections for `decode_step`: one qkv and one gate_up matrix per layer."""
    backbone = model.model
    check_config(backbone.config)
    layers = []
    for layer in backbone.layers:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        gate_up, gate_up_bias = _fused(mlp.gate_proj, mlp.up_proj)
        layers.append(LayerWeights(
            layer.input_layernorm.weight.detach(), qkv, qkv_bias, attn.o_proj.weight.detach(), attn.o_proj.bias,
            layer.post_attention_layernorm.weight.detach(), gate_up, gate_up_bias,
            mlp.down_proj.weight.detach(), mlp.down_proj.bias,
        ))  # fmt: skip
    inv_freq, scale = rope_frequencies(backbone.config, backbone.embed_tokens.weight.device)
    return DecodeWeights(
        backbone.config, backbone.embed_tokens.weight.detach(), layers, backbone.norm.weight.detach(),
        model.lm_head.weight.detach(), inv_freq, scale,
    )  # fmt: skip


def prefill(
    model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_len: int
) -> tuple[torch.Tensor, KVCache]:
    """Run left-padded prompts [B, P] through the model, caching keys and values.

    Returns the next-token logits [B, V] at the last column and a `KVCache` with
    room for max_len columns in total (prompt included).
    """
    config = model.config
    B, P = input_ids.shape
    emb = model.model.embed_tokens.weight
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    shape = (config.num_hidden_layers, B, config.num_key_value_heads, max_len, head_dim)
    mask = torch.zeros(B, 1, 1, max_len, dtype=emb.dtype, device=emb.device)
    mask[:, 0, 0, :P].masked_fill_(attention_mask == 0, float("-inf"))
    cache = KVCache(
        k=torch.empty(shape, dtype=emb.dtype, device=emb.device),
        v=torch.empty(shape, dtype=emb.dtype, device=emb.device),
        mask=mask,
        positions=attention_mask.long().sum(-1),
        length=P,
    )
    h = _forward(model.model, input_ids, attention_mask, cache)
    return model.lm_head(h[:, -1]), cache


def decode_step(w: DecodeWeights, cache: KVCache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens [B]; returns next-token logits [B, V] and advances the cache."""
    config, t = w.config, cache.length
    B, H, Hkv = tokens.shape[0], config.num_attention_heads, config.num_key_value_heads
    eps, head_dim = config.rms_norm_eps, cache.k.shape[-1]
    cos, sin = rope_cos_sin(w.inv_freq, w.rope_scale, cache.positions[:, None], w.embed.dtype)  # [B, 1, Dh]
    mask = cache.mask[..., : t + 1]  # [B, 1, 1, t+1]
    x = F.embedding(tokens, w.embed)  # [B, D]
    for i, lw in enumerate(w.layers):
        qkv = F.linear(rms_norm(x, lw.attn_norm, eps), lw.qkv, lw.qkv_bias).view(B, H + 2 * Hkv, head_dim)
        q, k = apply_rope(qkv[:, : H + Hkv], cos, sin).split((H, Hkv), dim=1)
        cache.k[i, :, :, t] = k
        cache.v[i, :, :, t] = qkv[:, H + Hkv :]
        keys, values = cache.k[i, :, :, : t + 1], cache.v[i, :, :, : t + 1]  # [B, Hkv, t+1, Dh]
        q = q.reshape(B, Hkv, H // Hkv, head_dim)  # the query heads that share a key/value head
        scores = (q @ keys.transpose(-2, -1)) * head_dim**-0.5 + mask  # [B, Hkv, H/Hkv, t+1]
        a = scores.float().softmax(-1).to(values.dtype) @ values  # [B, Hkv, H/Hkv, Dh]
        x = x + F.linear(a.view(B, H * head_dim), lw.o, lw.o_bias)
        gate, up = F.linear(rms_norm(x, lw.mlp_norm, eps), lw.gate_up, lw.gate_up_bias).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, lw.down, lw.down_bias)
    cache.length += 1
    cache.positions += 1
    return F.linear(rms_norm(x, w.norm, eps), w.lm_head)
