"""The SFT learning-rate schedules: warm-up, then cosine decay to a tenth or a constant rate."""

import math

import pytest
import torch

from rlhfscale.models.ladder import build_model
from rlhfscale.models.train import SCHEDULES, sft_loop, warmup_cosine


def test_warmup_then_cosine_to_a_tenth_by_hand():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.1)


def test_constant_schedule_keeps_the_peak_after_warmup():
    ratio = SCHEDULES["constant"]
    assert [warmup_cosine(s, 50, 5, min_ratio=ratio) for s in (0, 4, 5, 30, 49)] == pytest.approx([0.2, 1, 1, 1, 1])


def test_unknown_schedule_names_the_valid_ones():
    model = build_model("nano", 16, seed=0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with pytest.raises(KeyError, match="valid: cosine, constant"):
        sft_loop(model, [([3], [4, 2])], steps=1, batch_size=1, lr=1e-3, warmup=0, weight_decay=0.0, pad_id=0,
                 seed=0, schedule="linear")
    assert all(torch.isfinite(p).all() for p in model.parameters())
