"""The kernels of an inference forward: oneDNN products and fused row ops on a CPU, plain torch elsewhere.

PyTorch sends a float32 `nn.Linear` on a CPU to MKL's sgemm. oneDNN (PyTorch's
`mkldnn` backend) computes the same product 2-2.5x faster at the sampler's
shapes (x [256, 128] by the ladder models' weights) on the CPU measured (an
AVX-512 AMD EPYC: about 90 GFLOP/s a core through MKL, 150-200 through oneDNN),
and can apply an activation or a product with another tensor in the same pass.
Its results equal MKL's up to the float32 summation order.

`FAST` uses it only where that is a plain product: float32 on a CPU, without
autograd (the op has no backward) or autocast (which would not cast it), an
`nn.Linear` without bias, and a product of at least `MIN_MACS` multiply-adds
(below about that, oneDNN's fixed cost per call, 10-20 µs, makes it the slower).
Every other call runs the module itself, exactly as `PLAIN` does, so GPUs, bf16
models and training forwards are unchanged.

oneDNN reorders a plain weight into its blocked layout on every call. `Prepacked` does it once for a model whose
weights hold still (the sampler's rollout): for float32, `FAST`'s products bit for bit, 3-10% faster at the
sampler's shapes. A fresh packing (`torch.ops.mkldnn._reorder_linear_weight`) also builds oneDNN's product
descriptor to learn the layout, 100-220 µs a weight at `micro` whatever its size; `pack` copies the weight into a
buffer of that layout kept from the last rollout instead (30-40 µs; `models.cache_memory` keeps them).

`Prepacked` also packs a bfloat16 model's weights (RL's bf16 actor), which `FAST` leaves to the module: there the
activation, product or sum applies to the float accumulator and the result is rounded to bf16 once,
where the eager ops round after the product and again after the activation. Packed, a bf16 model's decoding step
is prepared too (`models.decode_plan`): a bf16 rollout at `micro`, 128 rows by 16 tokens, in 0.79-0.88 of the
time of the modules' own products.

The layer's per-token steps, `rms_norm` and `apply_rope` (the math is here, written out), are five to seven
tensor ops each; at the sampler's sizes each op's fixed cost outweighs its arithmetic. On a CPU without autograd
`FAST` runs each as one pass of the project's C++ extension (`csrc/row_ops.cpp`, built with the decode attention,
`models.decode_attention.fused_available`), rounding where these functions round.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
import torch.nn.functional as F
from torch import nn

from . import decode_attention

MIN_MACS = 1 << 20  # rows · D_in · D_out: e.g. x [64, 128] by a 128 × 128 weight
PACKED_DTYPES = (torch.float32, torch.bfloat16)  # the weights `Prepacked` packs
_ONEDNN = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def onednn_available() -> bool:
    """Whether this torch has the oneDNN linear kernel (`onednn_product`)."""
    return _ONEDNN is not None


def onednn_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x weightᵀ through oneDNN: x [N, D_in], weight [D_out, D_in] -> [N, D_out] (no autograd)."""
    return _ONEDNN(x, weight, None, "none", [], "")


def onednn_ok(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether x [N, D_in] through `module` can take the oneDNN kernel (see the module docstring)."""
    return (
        _ONEDNN is not None
        and type(module) is nn.Linear
        and module.bias is None
        and x.device.type == "cpu"
        and x.dtype == module.weight.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] * module.in_features * module.out_features >= MIN_MACS
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / sqrt(mean(x²) + eps) over the last dim, computed in float32 as HF does."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., Dh] pairwise (i, i + Dh/2) by the angles of a `llama.Rope` table (cos, signed sin)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def extension_ok(*tensors: torch.Tensor) -> bool:
    """Whether the C++ extension's ops take these tensors: on a CPU, float32 or bfloat16 alike, and the extension
    built."""
    x = tensors[0]
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and all(t.dtype == x.dtype and t.device == x.device for t in tensors)
        and decode_attention.fused_available()
    )


def row_ops_ok(*tensors: torch.Tensor) -> bool:
    """Whether `FAST`'s fused row ops take these tensors: `extension_ok`, and no autograd (they have no backward)."""
    return not torch.is_grad_enabled() and extension_ok(*tensors)


class PLAIN:
    """The modules' own forwards and the eager row ops (any device, dtype, autograd)."""

    rms_norm = staticmethod(rms_norm)
    apply_rope = staticmethod(apply_rope)

    @staticmethod
    def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x): [N, D_in] -> [N, D_out]."""
        return module(x)

    @staticmethod
    def linear_silu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """silu(module(x)): [N, D_in] -> [N, D_out]."""
        return F.silu(module(x))

    @staticmethod
    def linear_mul(module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """module(x) * other: [N, D_in], [N, D_out] -> [N, D_out]."""
        return module(x) * other

    @staticmethod
    def linear_add(module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """module(x) + other (a residual connection): [N, D_in], [N, D_out] -> [N, D_out]."""
        return module(x) + other

    @classmethod
    def swiglu(cls, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """An MLP's gated product silu(h W_gateᵀ) · h W_upᵀ: [N, D] -> [N, D_ff]."""
        return cls.linear_mul(mlp.up_proj, h, cls.linear_silu(mlp.gate_proj, h))


class FAST(PLAIN):
    """`PLAIN`'s products through oneDNN where `onednn_ok` (the activation, product or sum in the matmul's
    epilogue), and its row ops through the C++ extension where `row_ops_ok`."""

    @staticmethod
    def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if onednn_ok(x, module):
            return onednn_product(x, module.weight)
        return module(x)

    @staticmethod
    def linear_silu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if onednn_ok(x, module):
            return _ONEDNN(x, module.weight, None, "swish", [], "")  # swish(x) = x·sigmoid(x) = silu(x)
        return F.silu(module(x))

    @staticmethod
    def linear_mul(module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if onednn_ok(x, module) and other.shape == (x.shape[0], module.out_features) and other.dtype == x.dtype:
            return _ONEDNN.binary(x, other, module.weight, None, "mul")
        return module(x) * other

    @staticmethod
    def linear_add(module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if onednn_ok(x, module) and other.shape == (x.shape[0], module.out_features) and other.dtype == x.dtype:
            return _ONEDNN.binary(x, other, module.weight, None, "add")
        return module(x) + other

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if x.dim() == 2 and x.stride(-1) == 1 and row_ops_ok(x, weight):
            return torch.ops.rlhfscale.rms_norm(x, weight.contiguous(), eps)
        return rms_norm(x, weight, eps)

    @staticmethod
    def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, heads, Dh]; cos, sin [N, 1, Dh] (`llama.Rope.at`)."""
        if x.dim() == 3 and x.stride(-1) == 1 and x.stride(1) == x.shape[2] and row_ops_ok(x, cos, sin):
            N, Dh = x.shape[0], x.shape[2]
            return torch.ops.rlhfscale.rope(x, cos.reshape(N, Dh).contiguous(), sin.reshape(N, Dh).contiguous())
        return apply_rope(x, cos, sin)


class Prepacked(FAST):
    """`FAST` for one model whose weights hold still (a rollout): each of its bias-free float32 or bfloat16
    `nn.Linear` weights on a CPU reordered once into oneDNN's blocked layout for products of about `rows` rows
    (`torch.ops.mkldnn._reorder_linear_weight`). A product of x of the weight's dtype, of at least `MIN_MACS`,
    takes the packed weight: for float32 `FAST`'s oneDNN product bit for bit; for bfloat16 oneDNN's product with
    the epilogue on the float accumulator (see the module docstring). Elsewhere it is `FAST`. A weight changed in
    place after packing is refused: its tensor version moved.

    For inference only (no autograd): built under `torch.inference_mode()` or `torch.no_grad()`, without
    autocast (under either it packs nothing). `kept`: buffers of packed weights kept from the last rollout on this
    model (`pack`), filled with this model's weights now; they are this instance's until the next one takes them."""

    def __init__(self, model: nn.Module, rows: int, kept: MutableMapping | None = None):
        self.rows, self.kept = rows, kept
        self.packed = {}  # module -> (packed weight, weight version when packed, D_in · D_out)
        self.row_ops = decode_attention.fused_available()  # the extension, asked once
        if _ONEDNN is None or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return
        for m in model.modules():
            w = m.weight if type(m) is nn.Linear and m.bias is None else None
            if w is not None and w.device.type == "cpu" and w.dtype in PACKED_DTYPES:
                self.packed[m] = (self.pack(m, w), w._version, w.numel())

    def pack(self, key: object, weight: torch.Tensor) -> torch.Tensor:
        """`pack` of weight [D_out, D_in] for this instance's rows, into the buffer kept under `key` where there is
        one."""
        return pack(weight, self.rows, self.kept, key)

    def _weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight of `module` where x [N, D_in] through it takes oneDNN (`onednn_ok`), else None."""
        entry = self.packed.get(module)
        if (entry is None or x.dim() != 2 or x.dtype != module.weight.dtype or x.shape[0] * entry[2] < MIN_MACS
                or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")):
            return None
        if module.weight._version != entry[1]:
            raise RuntimeError("kernels.Prepacked: a weight changed in place after it was packed; pack the model again")
        return entry[0]

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if (self.row_ops and x.dtype == weight.dtype == torch.float32 and x.dim() == 2 and x.stride(-1) == 1
                and not torch.is_grad_enabled()):
            return torch.ops.rlhfscale.rms_norm(x, weight, eps)
        return FAST.rms_norm(x, weight, eps)

    def apply_rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [N, heads, Dh]; cos, sin [N, 1, Dh] (`llama.Rope.at`)."""
        N, Dh = x.shape[0], x.shape[-1]
        if (self.row_ops and x.dtype == cos.dtype == torch.float32 and x.dim() == 3 and x.stride(-1) == 1
                and x.stride(1) == Dh and not torch.is_grad_enabled()):
            return torch.ops.rlhfscale.rope(x, cos.reshape(N, Dh).contiguous(), sin.reshape(N, Dh).contiguous())
        return FAST.apply_rope(x, cos, sin)

    def swiglu(self, mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """`PLAIN.swiglu` through this instance's products."""
        return self.linear_mul(mlp.up_proj, h, self.linear_silu(mlp.gate_proj, h))

    def linear(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = self._weight(module, x)
        return FAST.linear(module, x) if w is None else _ONEDNN(x, w, None, "none", [], "")

    def linear_silu(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        w = self._weight(module, x)
        return FAST.linear_silu(module, x) if w is None else _ONEDNN(x, w, None, "swish", [], "")

    def linear_mul(self, module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        w = self._weight(module, x)
        if w is None or other.shape != (x.shape[0], module.out_features) or other.dtype != x.dtype:
            return FAST.linear_mul(module, x, other)
        return _ONEDNN.binary(x, other, w, None, "mul")

    def linear_add(self, module: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        w = self._weight(module, x)
        if w is None or other.shape != (x.shape[0], module.out_features) or other.dtype != x.dtype:
            return FAST.linear_add(module, x, other)
        return _ONEDNN.binary(x, other, w, None, "add")


def pack(weight: torch.Tensor, rows: int, kept: MutableMapping | None = None, key: object = None) -> torch.Tensor:
    """weight [D_out, D_in] (float32 or bfloat16, on a CPU) in oneDNN's blocked layout for products of about `rows`
    rows. With `kept` (a mapping kept from one call to the next): copied into the buffer kept under `key` by an
    earlier call of the same shape, dtype and rows (the same bits as a fresh packing, without building oneDNN's
    descriptor again: see the module docstring), or packed afresh and kept there."""
    like = (rows, weight.shape, weight.dtype)
    entry = kept.get(key) if kept is not None else None
    if entry is not None and entry[0] == like:
        return entry[1].copy_(weight.contiguous().to_mkldnn())
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    if kept is not None:
        kept[key] = (like, packed)
    return packed


def for_inference(model: nn.Module, rows: int, kept: MutableMapping | None = None) -> type[FAST] | Prepacked:
    """The kernels of a run of inference forwards on `model` with fixed weights, about `rows` rows a product:
    `Prepacked` (its weights packed into the buffers of `kept` where given) where it packs any weight (float32 or
    bfloat16 on a CPU, without autograd or autocast), else `FAST`."""
    ops = Prepacked(model, rows, kept)
    return ops if ops.packed else FAST
