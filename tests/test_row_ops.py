"""`kernels.FAST`'s fused row ops (RMSNorm, RoPE; the C++ extension) against the eager math they replace."""

import math

import pytest
import torch

from rlhfscale.models import decode_attention, kernels
from rlhfscale.models.ladder import build_model
from rlhfscale.rollout.sampler import sample

fused = pytest.mark.skipif(not decode_attention.fused_available(), reason="the C++ extension could not be built")


def rope_loop(x, cos, sin):
    """The rotation written out with HF's rotate_half, one token and head at a time: x [N, heads, D], cos, sin
    [N, 1, D] with sin signed as `llama.Rope` stores it (its second half is +sin θ)."""
    out, half = torch.empty_like(x), x.shape[-1] // 2
    for n in range(x.shape[0]):
        c, s = cos[n, 0], sin[n, 0, half:].repeat(2)  # cos θ, sin θ per pair
        for h in range(x.shape[1]):
            rotated = torch.cat((-x[n, h, half:], x[n, h, :half]))
            out[n, h] = x[n, h] * c + rotated * s
    return out


def angles(n, d, dtype=torch.float32):
    """cos, signed sin [n, 1, d] of random angles, as `llama.Rope.at` returns them."""
    theta = torch.rand(n, 1, d // 2) * 6.0
    cos, sin = theta.cos().repeat(1, 1, 2), torch.cat((-theta.sin(), theta.sin()), dim=-1)
    return cos.to(dtype), sin.to(dtype)


@fused
def test_rms_norm_by_hand():
    x, weight = torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        out = kernels.FAST.rms_norm(x, weight, 0.0)
    r0, r1 = 1 / math.sqrt(12.5), 1 / math.sqrt(2.0)
    torch.testing.assert_close(out, torch.tensor([[3 * r0, 8 * r0], [0.0, 4 * r1]]), atol=1e-6, rtol=0)


@fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_eager_math_on_strided_rows(dtype):
    torch.manual_seed(0)
    x, weight = (torch.randn(70, 300) * 3).to(dtype)[:, 10:138], torch.randn(128).to(dtype)  # rows strided
    with torch.no_grad():
        fast, eager = kernels.FAST.rms_norm(x, weight, 1e-5), kernels.rms_norm(x, weight, 1e-5)
    if dtype == torch.bfloat16:  # the same roundings in the same places
        assert torch.equal(fast, eager)
    else:
        torch.testing.assert_close(fast, eager, atol=1e-6, rtol=1e-6)


@fused
def test_bf16_rounding_matches_torch_on_ties_infinities_and_nan():
    """The kernels round to bf16 in integer arithmetic (`csrc/float_math.h`). RoPE with sin = 0 rounds x · cos once:
    1.25 · (1 + 2⁻⁶) = 1.25 + 2.5 units of 2⁻⁷ is halfway and goes to the even 1.25 + 2 · 2⁻⁷ (not up), its negative
    likewise, 3.38e38 · (1 + 2⁻⁶) overflows to inf, NaN stays NaN: as torch rounds (the eager op)."""
    x = torch.tensor([1.25, -1.25, 3.38e38, float("nan")]).bfloat16()[:, None, None].expand(4, 1, 16).contiguous()
    cos, sin = torch.full((4, 16), 1 + 2**-6).bfloat16(), torch.zeros(4, 16).bfloat16()
    with torch.no_grad():
        ours = torch.ops.rlhfscale.rope(x, cos, sin)
        eager = kernels.apply_rope(x, cos[:, None], sin[:, None])
    assert ours[:2, 0, 0].tolist() == [1.265625, -1.265625] and ours[2].isposinf().all() and ours[3].isnan().all()
    assert torch.equal(ours[:3], eager[:3]) and eager[3].isnan().all()


@fused
def test_rms_norm_is_per_row_and_scale_free():
    """A row's output depends on that row only, and not on its scale."""
    torch.manual_seed(1)
    x, weight = torch.randn(40, 64), torch.randn(64)
    with torch.no_grad():
        out = kernels.FAST.rms_norm(x, weight, 0.0)
        scaled = kernels.FAST.rms_norm(torch.cat((x[:20] * 7.5, torch.randn(5, 64))), weight, 0.0)
    torch.testing.assert_close(scaled[:20], out[:20], atol=1e-5, rtol=1e-5)


@fused
def test_rope_by_hand():
    """One pair (D = 2) rotated by θ: (x1, x2) -> (x1 cos θ - x2 sin θ, x2 cos θ + x1 sin θ)."""
    c, s = math.cos(0.3), math.sin(0.3)
    x = torch.tensor([[[1.0, 2.0]]])
    with torch.no_grad():
        out = kernels.FAST.apply_rope(x, torch.tensor([[[c, c]]]), torch.tensor([[[-s, s]]]))
    torch.testing.assert_close(out, torch.tensor([[[c - 2 * s, 2 * c + s]]]), atol=1e-6, rtol=0)


@fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_equals_the_rotate_half_loop_and_the_eager_op(dtype):
    torch.manual_seed(2)
    qkv = torch.randn(33, 10, 16).to(dtype)
    x = qkv[:, 2:8]  # six heads of a wider row: token rows strided
    cos, sin = angles(33, 16, dtype)
    with torch.no_grad():
        fast, eager = kernels.FAST.apply_rope(x, cos, sin), kernels.apply_rope(x, cos, sin)
    assert torch.equal(fast, eager)  # x cos rounded, then one fma: as the eager ops round, in either dtype
    if dtype == torch.float32:
        torch.testing.assert_close(fast, rope_loop(x, cos, sin), atol=1e-6, rtol=1e-6)


@fused
def test_rope_keeps_each_pairs_length():
    """A rotation: |(x_i, x_{i+D/2})| is unchanged for every pair."""
    torch.manual_seed(3)
    x, (cos, sin) = torch.randn(20, 3, 8), angles(20, 8)
    with torch.no_grad():
        out = kernels.FAST.apply_rope(x, cos, sin)
    pair_norm = lambda t: t[..., :4].square() + t[..., 4:].square()  # noqa: E731
    torch.testing.assert_close(pair_norm(out), pair_norm(x), atol=1e-5, rtol=1e-5)


def test_row_ops_fall_back_to_the_eager_math_under_autograd():
    x, weight = torch.randn(6, 8, requires_grad=True), torch.randn(8)
    cos, sin = angles(6, 8)
    assert not kernels.row_ops_ok(x, weight)  # the C++ ops have no backward
    out = kernels.FAST.rms_norm(x, weight, 1e-5).sum() + kernels.FAST.apply_rope(x.view(6, 2, 4), cos[..., :4],
                                                                               sin[..., :4]).sum()
    out.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@fused
def test_sampler_with_and_without_the_row_ops_gives_the_same_tokens(monkeypatch):
    """The sampler's forwards take the fused ops; without them (the eager math), the same tokens and log-probs."""
    model = build_model("nano", 60, seed=5, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [[1, *torch.randint(3, 60, (n,), generator=g).tolist()] for n in [2, 7, 4] * 6]
    calls = []
    rope = torch.ops.rlhfscale.rope
    monkeypatch.setattr(torch.ops.rlhfscale, "rope", lambda *a: calls.append(1) or rope(*a))
    run = lambda: sample(model, prompts, max_new_tokens=8, eos_id=-1, pad_id=0,  # noqa: E731
                         generator=torch.Generator().manual_seed(0))
    ours = run()
    assert len(calls) >= 2 * 2 * 8  # q and k of both layers, in the prefill and every decode step
    monkeypatch.setattr(kernels, "row_ops_ok", lambda *tensors: False)
    monkeypatch.setattr(kernels, "for_inference", lambda model, rows, kept: kernels.FAST)  # no prepacked kernels
    calls.clear()
    eager = run()
    assert not calls
    assert torch.equal(ours.response_ids, eager.response_ids)
    torch.testing.assert_close(ours.logprobs, eager.logprobs, atol=1e-5, rtol=0)
