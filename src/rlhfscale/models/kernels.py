"""The matmul kernels of an inference forward: oneDNN for float32 on a CPU, the modules' own calls elsewhere.

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_MACS = 1 << 20  # rows · D_in · D_out: e.g. x [64, 128] by a 128 × 128 weight
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


class PLAIN:
    """The modules' own forwards (any device, dtype, autograd)."""

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


class FAST(PLAIN):
    """`PLAIN`'s products through oneDNN where `onednn_ok`, the activation or product in the matmul's epilogue."""

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
