"""The machine's matmul peak: the FLOP/s ceiling that model throughput is compared against."""

from __future__ import annotations

import time

import torch


def measure_matmul_peak(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0
) -> float:
    """FLOP/s of an n×n by n×n matmul (2n³ FLOPs), best burst of a few over about `seconds`.

    A burst is 4 matmuls followed by reading one result element, which waits
    for an asynchronous device to finish.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (a @ b)[0, 0].item()  # warm-up: kernel selection, thread pool start
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        for _ in range(4):
            c = a @ b
        c[0, 0].item()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best
