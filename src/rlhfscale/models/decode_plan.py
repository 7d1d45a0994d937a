"""The sampler's decoding step on a CPU, prepared once a rollout (`kv_cache.decode_step` runs it where it applies).

`kv_cache.decode_step` runs each layer through `llama._layer`, which looks up modules, weights and kernels at every
call (`kernels.Prepacked`). On a CPU those lookups cost about a tenth of a `micro` decoding step. A `DecodePlan`
does them once, when the rollout's cache is built: every layer's tensors in a flat record, and the step as the
straight sequence of the same kernel calls, so its logits equal `_layer`'s bit for bit (tested). It merges
calls in two places:
- the three products of q, k and v are one, of the three weights stacked (packed once more, when the plan is
  built): oneDNN sums each output over the same blocks of h either way, so the same bits, and at `micro` (256 rows)
  one product of 384 outputs takes 148 µs where three of 128 take 218;
- RoPE of q and k runs inside the attention kernel (`decode_attention_rope`, the row op's arithmetic), which reads
  q, k and v from that product's output and the angles from the cache's RoPE table at each row's position: four
  fewer calls a step and no gather of the angles. A `micro` rollout took 0.963 and 0.970 of the time, `tiny` 0.981
  (in-process A/B, 20 interleaved rounds, medians of the paired ratios; the same tokens and log-probs).
One layer on the rows' tokens x [N, D], as `_layer` writes it:

    h = rms_norm(x);  q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ;  q, k = rope(q), rope(k)     (one product: h [Wq; Wk; Wv]ᵀ)
    x = x + attend(q, k, v) Woᵀ                  (rope and attend: the fused kernel, over the cache)
    h = rms_norm(x);  x = x + (silu(h Wgᵀ) * h Wuᵀ) Wdᵀ

It applies where every call of a step takes those kernels: the model's products packed for oneDNN
(`kernels.Prepacked`), the C++ extension built, and at least `min_rows` rows (with fewer, `kernels.MIN_MACS` sends
a product to MKL, and `_layer` runs the step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from . import decode_attention, kernels


@dataclass(frozen=True)
class Layer:
    """One decoder layer's tensors: its norms' weights [D] and epsilons, its products' packed weights (q, k and v
    stacked in one, whose output holds the `heads` query heads, then the key heads, then the value heads)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: tuple[float, float]
    qkv: torch.Tensor
    heads: int
    o: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class DecodePlan:
    """The tensors of a decoding step, looked up once (see the module docstring).

    weights: the products' weights as packed, each with its tensor version then: a weight changed in place
    since is refused, as `kernels.Prepacked` refuses it.
    """

    embed: torch.Tensor
    layers: tuple[Layer, ...]
    norm: torch.Tensor
    norm_eps: float
    head: torch.Tensor
    head_dim: int
    min_rows: int
    weights: tuple[tuple[torch.Tensor, int], ...]

    @classmethod
    def of(cls, model: LlamaForCausalLM, ops) -> DecodePlan | None:
        """The plan of `model` (which passed `llama.check_config`) with the kernels `ops` of its cache; None where a
        step would not run on the fast kernels alone (`ops` not `kernels.Prepacked`, a product it did not pack,
        the extension or its attention not in use, autocast on)."""
        backbone = model.model
        products = [model.lm_head] + [m for layer in backbone.layers for m in _products(layer)]
        fast = (isinstance(ops, kernels.Prepacked) and ops.row_ops and decode_attention.uses_fused(model.device)
                and not torch.is_autocast_enabled("cpu"))
        if not fast or any(m not in ops.packed for m in products):
            return None
        packed = lambda m: ops.packed[m][0]  # noqa: E731
        layers = tuple(
            Layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                  (layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon),
                  *_stacked_qkv(layer.self_attn, ops), *(packed(m) for m in _products(layer)[3:]))
            for layer in backbone.layers
        )  # fmt: skip
        return cls(
            embed=backbone.embed_tokens.weight, layers=layers, norm=backbone.norm.weight,
            norm_eps=backbone.norm.variance_epsilon, head=packed(model.lm_head), head_dim=model.config.head_dim,
            min_rows=-(-kernels.MIN_MACS // min(ops.packed[m][2] for m in products)),
            weights=tuple((m.weight, ops.packed[m][1]) for m in products),
        )  # fmt: skip

    def logits(self, cache, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, V] of tokens [B] fed in column `cache.length` of a `kv_cache.KVCache` whose column is
        open (`open_column`); leaves `length` and `positions` to the caller. B >= `min_rows`."""
        if any(w._version != version for w, version in self.weights):
            raise RuntimeError("decode plan: a weight changed in place after it was packed; build the cache again")
        ops, onednn, Dh = torch.ops.rlhfscale, kernels._ONEDNN, self.head_dim
        mask, t, (cos, sin) = cache.mask.view(len(tokens), -1), cache.length + 1, (cache.rope.cos, cache.rope.sin)
        x = torch.embedding(self.embed, tokens)
        for i, w in enumerate(self.layers):
            h = ops.rms_norm(x, w.input_norm, w.eps[0])
            qkv = onednn(h, w.qkv, None, "none", [], "")  # RoPE of q and k, the cache's store and the attention: one op
            a = ops.decode_attention_rope(qkv, w.heads, cos, sin, cache.positions, cache.k[i], cache.v[i], mask, t,
                                          Dh**-0.5)
            x = onednn.binary(a, x, w.o, None, "add")
            h = ops.rms_norm(x, w.post_norm, w.eps[1])
            x = onednn.binary(onednn.binary(h, onednn(h, w.gate, None, "swish", [], ""), w.up, None, "mul"), x,
                              w.down, None, "add")
        return onednn(ops.rms_norm(x, self.norm, self.norm_eps), self.head, None, "none", [], "")


def _stacked_qkv(attn, ops: kernels.Prepacked) -> tuple[torch.Tensor, int]:
    """The q, k and v projections' weights stacked [Wq; Wk; Wv] and packed as `ops` packs (kept under the attention
    module), and the number of query heads."""
    w = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
    return ops.pack(attn, w), attn.q_proj.out_features // attn.head_dim


def _products(layer) -> tuple:
    """The seven products of a `LlamaDecoderLayer`, in `Layer`'s order."""
    attn, mlp = layer.self_attn, layer.mlp
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj
