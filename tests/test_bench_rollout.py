"""`bench rollout` (native backend) on a small shape: the same work on both sides, in either dtype, and its
device and dtype refused in one line where this machine cannot run them."""

import pytest
import torch

from rlhfscale.bench.rollout import run_rollout_bench
from rlhfscale.errors import BadInput
from rlhfscale.rollout.sampler import sample


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_both_sides_generate_every_token_in_the_dtype_asked(dtype, monkeypatch):
    peaks, sampled = [], []
    monkeypatch.setattr("rlhfscale.bench.rollout.measure_matmul_peak",
                        lambda device, dtype: peaks.append(dtype) or 1e9)
    monkeypatch.setattr("rlhfscale.bench.rollout.sample",
                        lambda model, *a, **k: sampled.append(model.dtype) or sample(model, *a, **k))
    result = run_rollout_bench(size="nano", batch=6, new_tokens=5, repeats=2, dtype=dtype)
    assert result["dtype"] == dtype and result["device"] == "cpu"
    assert set(sampled) == {getattr(torch, dtype)} and len(sampled) == 3  # the warm-up and 2 timed calls
    assert peaks == [getattr(torch, dtype)]  # the peak of the dtype the model ran in
    assert result["ratio_vs_hf"] == pytest.approx(result["ours_tok_s"] / result["hf_tok_s"])
    assert result["peak_frac"] == pytest.approx(2 * result["params"] * result["ours_tok_s"] / 1e9)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtype": "float16"}, "bench rollout --dtype: expected one of float32, bfloat16, found 'float16'"),
    ({"device": "nonsense"}, "bench rollout --device: expected a device this machine has, found 'nonsense'"),
])
def test_a_dtype_or_device_it_cannot_run_is_refused(kwargs, message):
    with pytest.raises(BadInput, match=message):
        run_rollout_bench(size="nano", batch=2, new_tokens=2, repeats=1, **kwargs)
