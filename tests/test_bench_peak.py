"""The measured matmul peak is the fastest kernel's, not only the one `a @ b` calls."""

import time

import pytest
import torch

from rlhfscale.bench import peak
from rlhfscale.models import kernels


def test_the_peak_is_the_fastest_kernels(monkeypatch):
    def slow(a, b):
        time.sleep(0.01)
        return a @ b

    n = 64
    monkeypatch.setattr(peak, "matmul_kernels", lambda device, dtype: {"slow": slow})
    slow_peak = peak.measure_matmul_peak(n=n, seconds=0.1)
    assert slow_peak < 2 * n**3 / 0.01  # every burst of the slow kernel sleeps 10 ms a product
    monkeypatch.setattr(peak, "matmul_kernels", lambda device, dtype: {"slow": slow, "matmul": lambda a, b: a @ b})
    assert peak.measure_matmul_peak(n=n, seconds=0.1) > 5 * slow_peak


@pytest.mark.skipif(kernels._ONEDNN is None, reason="this torch has no oneDNN linear")
def test_cpu_float32_times_onednn_beside_matmul_on_the_same_flops():
    found = peak.matmul_kernels(torch.device("cpu"), torch.float32)
    assert set(found) == {"matmul", "onednn"}
    assert set(peak.matmul_kernels(torch.device("cpu"), torch.bfloat16)) == {"matmul"}
    a, b = torch.randn(48, 48), torch.randn(48, 48)
    with torch.inference_mode():
        torch.testing.assert_close(found["onednn"](a, b), a @ b.T, atol=1e-4, rtol=1e-4)  # a bᵀ, 2n³ FLOPs
