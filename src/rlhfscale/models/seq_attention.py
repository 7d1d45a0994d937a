"""The attention of whole sequences on a CPU through the project's C++ kernel, forward and backward
(`csrc/seq_attention.cpp`): the bf16 forwards of training and of the reference model, where torch would take SDPA.

    out = softmax(q kᵀ / √Dh + mask) v     keys k = [k1[idx[b]] ; k2[b]] for query row b, mask True: may read

Query row b reads a shared prefix, row idx[b] of k1 and v1, then its own keys k2[b], v2[b]: the n responses of a
prompt read the prompt's keys where they sit, so the shared-prompt forward (`models.shared_prefix`) copies no
prompt per response, and its backward sums each prompt's gradient over its responses inside the kernel. Tensors
are token-major as the layers make them: q [B, R, H, Dh], k1, v1 [U, S1, Hkv, Dh], k2, v2 [B, S2, Hkv, Dh];
query head i reads key/value head i // (H / Hkv).

All arithmetic is float and each result (out, dq, dk, dv) is rounded to bf16 once, as torch's math kernel computes
bf16 inputs on a CPU; the forward keeps each query's log-sum-exp and the backward recomputes the probabilities from
it (FlashAttention's recipe), so nothing of size R × S is kept. Under autocast the inputs are cast to bf16 first, as
autocast casts SDPA's. float32 stays on SDPA.
"""

from __future__ import annotations

import torch

from . import decode_attention

LANES = 16  # queries per vector of the kernel: the mask's query axis is padded to a multiple of it


def applies(q: torch.Tensor) -> bool:
    """Whether `attention` runs for queries q [..., Dh]: on a CPU with the extension built, in bf16 (after autocast's
    cast), Dh a multiple of 16."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return (q.device.type == "cpu" and dtype == torch.bfloat16 and q.shape[-1] % LANES == 0
            and decode_attention.fused_available())


def attention(q: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, idx: torch.Tensor, k2: torch.Tensor | None,
              v2: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √Dh + mask) v [B, R, H, Dh] for q [B, R, H, Dh], the prefix k1, v1 [U, S1, Hkv, Dh] read by
    row idx[b], the rows' own keys k2, v2 [B, S2, Hkv, Dh] (None: none), a boolean mask [B, 1, R, S1 + S2] (True:
    the query may read the key); differentiable in q, k1, v1, k2 and v2. Inputs for which `applies`."""
    dtype = torch.bfloat16
    B, R = q.shape[:2]
    if k2 is None:
        k2 = v2 = k1.new_empty(B, 0, *k1.shape[2:])
    q, k1, v1, k2, v2 = (t.to(dtype).contiguous() for t in (q, k1, v1, k2, v2))
    S, padded = k1.shape[1] + k2.shape[1], -(-R // LANES) * LANES
    additive = torch.full((B, S, padded), float("-inf"), device=q.device)  # [B, S, R]: the query lanes last
    additive[..., :R].masked_fill_(mask.expand(B, 1, R, S)[:, 0].transpose(1, 2), 0.0)
    return _Attention.apply(q, k1, v1, idx.contiguous(), k2, v2, additive, q.shape[-1] ** -0.5)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k1, v1, idx, k2, v2, mask, scale):
        out, lse = torch.ops.rlhfscale.seq_attention(q, k1, v1, idx, k2, v2, mask, scale)
        ctx.save_for_backward(q, k1, v1, idx, k2, v2, mask, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k1, v1, idx, k2, v2, mask, lse = ctx.saved_tensors
        dq, dk1, dv1, dk2, dv2 = torch.ops.rlhfscale.seq_attention_backward(grad.contiguous(), q, k1, v1, idx, k2, v2,
                                                                            mask, lse, ctx.scale)
        return dq, dk1, dv1, None, dk2, dv2, None, None
