"""The kernels of forwards that may train: `kernels.PLAIN`, with RMSNorm, RoPE and SwiGLU's gate fused on a CPU.

Eagerly each is three to eight tensor ops each way, every one a pass over memory. In a GRPO step at `tiny`
(4,352 tokens of 192 features, 640 in the MLP; four layers) the data no longer sits in the CPU's caches, so each
op streams its tensors from memory. `TRAIN` runs each as an autograd function whose forward and backward are one
C++ pass (`csrc/row_ops.cpp`, `csrc/train_ops.cpp`), with autograd on or off (the reference model's forward):

    rms_norm(x, w)  = w · round(x / sqrt(mean(x²) + eps))
    apply_rope(x)   = round(x · cos) + roll(x, Dh/2) · sin     (out: the promotion of x's and the angles' dtypes)
    swiglu(a, b)    = round(silu(a)) · b                      (a = h W_gateᵀ, b = h W_upᵀ)

RoPE's forward and backward round where the eager op and its autograd round: the same bits in every dtype,
autocast's mix included (a bf16 x, float32 angles), so it is fused wherever the extension runs. RMSNorm sums in
another order and SwiGLU takes its own exp, a float rounding from the eager results: they are fused only where
results round to bf16 (bf16 tensors, or autocast to bf16, under which RMSNorm gets the float32 residual and its
output is cast for every product). A float32 model outside autocast thus trains on the eager bits: one such
rounding had moved a 200-step reward-model test's held-out accuracy from 0.674 to 0.578 at its seed. Elsewhere
(a GPU, the extension not built) `TRAIN` is `PLAIN`.

Measured at `tiny` (the reference forward and the policy's forward and backward of 128 responses of 32 tokens
under autocast, interleaved in one process, 15 pairs, slower host, 2 threads): the eager ops 0.357 s (median
0.413), RMSNorm and RoPE fused 0.327 (0.369), SwiGLU too 0.319 (0.374); median ratio of pairs 1.10 against the
eager ops, 1.02 for SwiGLU's part. Alone on data the caches hold, SwiGLU's pass (1.36 ms at [4352, 640]) is no
faster than silu and the product (1.39): its exp bounds it there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels


class FusedRMSNorm(torch.autograd.Function):
    """`kernels.rms_norm` (x [N, D], weight [D], eps) as one C++ pass each way, float32 or bf16."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return torch.ops.rlhfscale.rms_norm(x, weight, eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx, dweight = torch.ops.rlhfscale.rms_norm_backward(grad.contiguous(), x, weight, ctx.eps)
        return dx, dweight if ctx.needs_input_grad[1] else None, None


class FusedRope(torch.autograd.Function):
    """`kernels.apply_rope` (x [N, heads, Dh], cos and sin [N, Dh]) as one C++ pass each way: the eager bits."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        return torch.ops.rlhfscale.rope(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return torch.ops.rlhfscale.rope_backward(grad.contiguous(), cos, sin, ctx.x_dtype), None, None


class FusedSwiGLU(torch.autograd.Function):
    """silu(a) · b (a, b [N, D_ff] of one dtype) as one C++ pass each way, float32 or bf16."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.ops.rlhfscale.swiglu(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return torch.ops.rlhfscale.swiglu_backward(grad.contiguous(), a, b)


def in_bf16(*tensors: torch.Tensor) -> bool:
    """Whether the results of an op on these tensors round to bf16: they are bf16, or autocast to bf16 is on."""
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast or all(t.dtype == torch.bfloat16 for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`kernels.rms_norm` of x [N, D] with weight [D], fused both ways where `kernels.extension_ok` and `in_bf16`
    (its float sums in another order: in float32 it stays the eager op, bit for bit)."""
    if x.dim() == 2 and in_bf16(x, weight) and kernels.extension_ok(x, weight):
        return FusedRMSNorm.apply(x.contiguous(), weight.contiguous(), eps)
    return kernels.rms_norm(x, weight, eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`kernels.apply_rope` of x [N, heads, Dh] at cos, sin [N, 1, Dh] (`llama.Rope.at`), fused both ways on a CPU
    where x and the angles are of one dtype, or x bf16 and the angles float32 (autocast)."""
    mixed = x.dtype == torch.bfloat16 and cos.dtype == torch.float32
    if x.dim() == 3 and (x.dtype == cos.dtype or mixed) and x.device == cos.device and kernels.extension_ok(cos, sin):
        N, Dh = x.shape[0], x.shape[2]
        return FusedRope.apply(x.contiguous(), cos.reshape(N, Dh).contiguous(), sin.reshape(N, Dh).contiguous())
    return kernels.apply_rope(x, cos, sin)


def swiglu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(a) · b of the gate a and the up projection b [N, D_ff], fused both ways where `kernels.extension_ok` and
    both are bf16 (its own exp: in float32 it stays the eager ops, bit for bit)."""
    if a.shape == b.shape and a.dtype == torch.bfloat16 and kernels.extension_ok(a, b):
        return FusedSwiGLU.apply(a.contiguous(), b.contiguous())
    return b * F.silu(a)


class TRAIN(kernels.PLAIN):
    """`kernels.PLAIN` with RMSNorm, RoPE and SwiGLU's gate fused both ways (see the module docstring)."""

    rms_norm = staticmethod(rms_norm)
    apply_rope = staticmethod(apply_rope)

    @classmethod
    def swiglu(cls, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """silu(h W_gateᵀ) · h W_upᵀ: [N, D] -> [N, D_ff]."""
        return swiglu(cls.linear(mlp.gate_proj, h), cls.linear(mlp.up_proj, h))
