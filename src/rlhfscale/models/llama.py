"""A compact Llama forward that runs on the weights of a Hugging Face Llama: the miniature world's fast path.

It implements exactly the Llama that `models.forward.fast_path_reason` accepts (tests show its
logits equal `LlamaForCausalLM`'s on the same weights); `models.forward` sends every other model,
of any architecture, through the model's own forward, so nothing else should call these functions
on a model that does not pass that check. The HF classes are the storage format. Every function here reads the
parameters of a `LlamaModel` backbone in place (`model.model` of a
`LlamaForCausalLM` or of a `LlamaForSequenceClassification`), so gradients
flow into the HF model and `save_pretrained` saves what was trained. What we
gain over calling the HF model: a short, fixed sequence of tensor ops (no mask
factories or output objects), and on a CPU the fused row ops of `models.train_ops`.
The sampler's forwards on these layers, a prompt's prefill into a KV cache and one
token a step, are `models.kv_cache`.

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
KV cache, and one new token per row, to the cache (`models.kv_cache`);
distinct prompts and the responses that share them (`models.shared_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from rlhfscale.errors import BadInput

from . import seq_attention, train_ops

# RoPE variants whose frequencies do not depend on the sequence length.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


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
    return checked_decoder(backbone, tokens, cos, sin, attend, ops, keep)


def checked_decoder(backbone: LlamaModel, tokens, cos, sin, attend, ops, keep=None) -> torch.Tensor:
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
