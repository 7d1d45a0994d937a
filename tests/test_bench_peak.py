"""The measured matmul peak is the fastest kernel's, not only the one `a @ b` calls."""

import pytest
import torch

from rlhfscale.bench import peak
from rlhfscale.models import kernels


class Clock:
    """A stand-in for `time`: its clock moves only when a fake kernel runs."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def kernel(self, seconds: float):
        def product(a, b):
            self.now += seconds
            return a @ b

        return product


def test_the_peak_is_the_fastest_kernels(monkeypatch):
    clock, n = Clock(), 16
    monkeypatch.setattr(peak, "time", clock)
    kernels_here = {"slow": clock.kernel(0.5), "fast": clock.kernel(0.125)}
    monkeypatch.setattr(peak, "matmul_kernels", lambda device, dtype: kernels_here)
    assert peak.measure_matmul_peak(n=n, seconds=1.0) == pytest.approx(2 * n**3 / 0.125)
    kernels_here.pop("fast")
    assert peak.measure_matmul_peak(n=n, seconds=1.0) == pytest.approx(2 * n**3 / 0.5)


@pytest.mark.skipif(not kernels.onednn_available(), reason="this torch has no oneDNN linear")
def test_cpu_float32_times_onednn_beside_matmul_on_the_same_flops():
    found = peak.matmul_kernels(torch.device("cpu"), torch.float32)
    assert set(found) == {"matmul", "onednn"}
    assert set(peak.matmul_kernels(torch.device("cpu"), torch.bfloat16)) == {"matmul"}
    a, b = torch.randn(48, 48), torch.randn(48, 48)
    with torch.inference_mode():
        torch.testing.assert_close(found["onednn"](a, b), a @ b.T, atol=1e-4, rtol=1e-4)  # a bᵀ, 2n³ FLOPs
