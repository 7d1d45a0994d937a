"""The sampler's fused draw (`csrc/sample.cpp`: inverse CDF, one uniform a row) against the math it implements."""

import math

import pytest
import torch

from rlhfscale.models import decode_attention
from rlhfscale.rollout import sampler
from rlhfscale.rollout.sampler import next_tokens

fused = pytest.mark.skipif(not decode_attention.fused_available(), reason="the C++ extension could not be built")


def draw(logits, u, temperature=1.0):
    return torch.ops.rlhfscale.sample_next(logits, u, 1.0 / temperature)


def draw_loop(logits, u, temperature=1.0):
    """The first token whose cumulative probability exceeds u, row by row, in float64."""
    tokens, logprobs = [], []
    for row, ur in zip(logits.double() / temperature, u.double()):
        p = row.softmax(-1)
        i = int((p.cumsum(-1) > ur).nonzero()[0])
        tokens.append(i)
        logprobs.append(math.log(p[i]))
    return torch.tensor(tokens), torch.tensor(logprobs, dtype=torch.float64)


@fused
def test_draw_by_hand():
    """p = (1/4, 3/4): u below 1/4 draws token 0, above it token 1; the log-probs are log 1/4 and log 3/4."""
    logits = torch.tensor([[0.0, math.log(3.0)]]).expand(3, 2)
    tokens, logprobs = draw(logits, torch.tensor([0.2, 0.3, 0.999]))
    assert tokens.tolist() == [0, 1, 1]
    torch.testing.assert_close(logprobs, torch.tensor([math.log(0.25), math.log(0.75), math.log(0.75)]))


@fused
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_draw_equals_the_float64_loop(temperature):
    torch.manual_seed(0)
    logits, u = torch.randn(200, 50) * 3, torch.rand(200)
    tokens, logprobs = draw(logits, u, temperature)
    loop_tokens, loop_logprobs = draw_loop(logits, u, temperature)
    assert torch.equal(tokens, loop_tokens)
    torch.testing.assert_close(logprobs.double(), loop_logprobs, atol=1e-5, rtol=0)


@fused
def test_draw_ignores_a_shift_of_a_row_and_never_picks_a_masked_token():
    torch.manual_seed(1)
    logits, u = torch.randn(300, 40), torch.rand(300)
    logits[:, ::3] = float("-inf")  # masked entries: weight 0
    tokens, logprobs = draw(logits, u)
    shifted_tokens, shifted_logprobs = draw(logits + torch.randn(300, 1) * 50, u)
    assert torch.equal(tokens, shifted_tokens)
    torch.testing.assert_close(logprobs, shifted_logprobs, atol=1e-4, rtol=0)
    assert not (tokens % 3 == 0).any()


@fused
def test_draw_takes_bf16_logits_and_strided_rows():
    torch.manual_seed(2)
    wide, u = torch.randn(64, 80).bfloat16(), torch.rand(64)
    logits = wide[:, 10:60]  # rows strided
    assert logits.stride(0) == 80
    tokens, logprobs = draw(logits, u)
    loop_tokens, loop_logprobs = draw_loop(logits.float(), u)
    assert torch.equal(tokens, loop_tokens)
    torch.testing.assert_close(logprobs.double(), loop_logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused_draw", [True, False])
def test_both_draws_follow_the_tempered_distribution(fused_draw, monkeypatch):
    """The fused draw and the Gumbel-max one (truncation, other devices, no extension) sample the same law."""
    if fused_draw and not decode_attention.fused_available():
        pytest.skip("the C++ extension could not be built")
    if not fused_draw:
        monkeypatch.setattr(sampler, "extension_ok", lambda *tensors: False)
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).expand(40_000, 4)
    tokens, logprobs = next_tokens(logits, 0.5, 0, 1.0, torch.Generator().manual_seed(0))
    expected = (logits[0] / 0.5).softmax(-1)
    torch.testing.assert_close(torch.bincount(tokens, minlength=4) / len(tokens), expected, atol=0.01, rtol=0)
    torch.testing.assert_close(logprobs, expected.log()[tokens])
