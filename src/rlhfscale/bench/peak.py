"""The machine's matmul peak: the FLOP/s ceiling that model throughput is compared against.

The ceiling is the fastest matmul this torch has for the dtype, not only the one `a @ b` calls. On a
CPU torch sends a float32 `@` to MKL's sgemm, while oneDNN's kernel (`models.kernels`, what the sampler
runs) can be faster: on the AVX-512 AMD EPYC of our machines MKL reaches about 90 GFLOP/s a core at
n = 1024 and oneDNN about 200. A fraction of MKL's figure would overstate how close a model comes to
what the machine can do.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from rlhfscale.models import kernels


def matmul_kernels(device: torch.device, dtype: torch.dtype) -> dict[str, Callable]:
    """The product kernels of (a [n, n], b [n, n]) worth timing on this device and dtype, by name."""
    found = {"matmul": lambda a, b: a @ b}
    if kernels.onednn_available() and torch.device(device).type == "cpu" and dtype == torch.float32:
        found["onednn"] = kernels.onednn_product  # a bᵀ: the same FLOPs
    return found


def _best_burst(product: Callable, a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """Seconds per product, best burst of a few over about `seconds`.

    A burst is 4 products followed by reading one result element, which waits
    for an asynchronous device to finish.
    """
    product(a, b)[0, 0].item()  # warm-up: kernel selection, thread pool start
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        for _ in range(4):
            c = product(a, b)
        c[0, 0].item()
        best = min(best, (time.perf_counter() - start) / 4)
    return best


def measure_matmul_peak(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0
) -> float:
    """FLOP/s of an n×n by n×n product (2n³ FLOPs) through the fastest of `matmul_kernels`, each timed
    for about `seconds`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        best = min(_best_burst(product, a, b, seconds) for product in matmul_kernels(a.device, dtype).values())
    return 2 * n**3 / best
