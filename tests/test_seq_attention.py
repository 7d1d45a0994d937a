"""The attention of whole sequences through the C++ kernel, forward and backward (`models.seq_attention`): against a
hand computation and a plain float64 loop (gradients included), keys it must not read change nothing, and the
forwards that use it equal the ones through torch's SDPA up to bf16 rounding."""

import math

import pytest
import torch

from rlhfscale.models import decode_attention, llama, seq_attention, shared_prefix
from rlhfscale.models.ladder import build_model
from rlhfscale.models.train import mixed_precision

pytestmark = pytest.mark.skipif(not decode_attention.fused_available(), reason="the C++ extension could not be built")
BF16 = torch.bfloat16


def reference(q, k1, v1, idx, k2, v2, mask):
    """The same attention as a plain loop in float64: row b's keys are k1[idx[b]] then k2[b]; a query with no open
    key reads nothing (0)."""
    B, R, H, D = q.shape
    Hkv = k1.shape[2]
    out = torch.zeros(B, R, H, D, dtype=torch.float64)
    for b in range(B):
        keys, values = torch.cat((k1[idx[b]], k2[b])).double(), torch.cat((v1[idx[b]], v2[b])).double()  # [S, Hkv, D]
        for h in range(H):
            g = h // (H // Hkv)
            for r in range(R):
                open_ = mask[b, 0, r]
                if not open_.any():
                    continue
                scores = keys[:, g] @ q[b, r, h].double() / math.sqrt(D)
                weights = torch.softmax(scores.masked_fill(~open_, -math.inf), 0)
                out[b, r, h] = weights @ values[:, g]
    return out


def inputs(seed=0, U=3, B=5, R=19, S1=6, S2=19, H=4, Hkv=2, D=32):
    """bf16 inputs with a shared prefix read by rows out of order, more than 16 queries, GQA, and a query with no
    open key (row 1, query 3)."""
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(BF16).requires_grad_()  # noqa: E731
    q, k1, v1 = make(B, R, H, D), make(U, S1, Hkv, D), make(U, S1, Hkv, D)
    k2, v2 = make(B, S2, Hkv, D), make(B, S2, Hkv, D)
    idx = torch.tensor([0, 2, 0, 1, 2])[:B]
    mask = torch.rand(B, 1, R, S1 + S2, generator=g) > 0.4
    mask[..., 0] = True
    mask[1, 0, 3] = False
    return q, k1, v1, idx, k2, v2, mask


def test_a_hand_computed_example():
    """One query over two keys (head size 16): scores 1/4·(2·2·1) = 1 and 0, weights e/(e+1) and 1/(e+1)."""
    q = torch.zeros(1, 1, 1, 16, dtype=BF16)
    q[..., 0] = 2.0
    k = torch.zeros(1, 2, 1, 16, dtype=BF16)
    k[0, 0, 0, 0] = 2.0
    v = torch.zeros(1, 2, 1, 16, dtype=BF16)
    v[0, 0, 0, 1], v[0, 1, 0, 1] = 1.0, -1.0  # out[1] = (e - 1) / (e + 1)
    out = seq_attention.attention(q, k, v, torch.tensor([0]), None, None, torch.ones(1, 1, 1, 2, dtype=torch.bool))
    assert out[0, 0, 0, 1].item() == pytest.approx((math.e - 1) / (math.e + 1), abs=2e-3)
    assert out[0, 0, 0, [0, *range(2, 16)]].abs().max() == 0


def test_forward_and_gradients_equal_a_float64_loop():
    q, k1, v1, idx, k2, v2, mask = inputs()
    out = seq_attention.attention(q, k1, v1, idx, k2, v2, mask)
    want = reference(q, k1, v1, idx, k2, v2, mask)
    assert out.dtype == BF16 and out[1, 3].abs().max() == 0  # no open key: nothing read
    torch.testing.assert_close(out.double(), want, atol=0, rtol=2**-8)  # rounded once from float
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(BF16)
    got = torch.autograd.grad(out, (q, k1, v1, k2, v2), grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k1, v1, k2, v2)]
    want = torch.autograd.grad(reference(leaves[0], leaves[1], leaves[2], idx, leaves[3], leaves[4], mask), leaves,
                               grad.double())
    for name, a, b in zip(("q", "k1", "v1", "k2", "v2"), got, want, strict=True):
        assert b.abs().max() > 0.1, name
        torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=2**-7, msg=name)


def test_keys_a_query_may_not_read_change_nothing():
    """Closed to every query: the prefix's key 2 and the rows' own keys 5-7. Huge keys and values there change neither
    the output nor any gradient, and they get none."""
    q, k1, v1, idx, k2, v2, mask = inputs(seed=2)
    S1 = k1.shape[1]
    mask[..., 2] = mask[..., S1 + 5:S1 + 8] = False
    out = seq_attention.attention(q, k1, v1, idx, k2, v2, mask)
    loss = lambda o: o.float().square().sum()  # noqa: E731
    grads = torch.autograd.grad(loss(out), (q, k1, v1, k2, v2))
    hidden = [t.detach().clone() for t in (k1, v1, k2, v2)]
    hidden[0][:, 2], hidden[1][:, 2], hidden[2][:, 5:8], hidden[3][:, 5:8] = 1e4, -1e4, 1e4, -1e4
    hidden = [t.requires_grad_() for t in hidden]
    again = seq_attention.attention(q, hidden[0], hidden[1], idx, hidden[2], hidden[3], mask)
    assert torch.equal(again, out)
    grads_again = torch.autograd.grad(loss(again), (q, *hidden))
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_again, strict=True))
    assert grads[1][:, 2].abs().max() == grads[3][:, 5:8].abs().max() == 0


def test_where_it_applies(monkeypatch):
    q = torch.zeros(2, 3, 4, 32)
    assert not seq_attention.applies(q)  # float32 stays on SDPA
    assert seq_attention.applies(q.to(BF16))
    with torch.autocast("cpu", dtype=BF16):
        assert seq_attention.applies(q)  # cast to bf16, as autocast casts SDPA's inputs
    assert not seq_attention.applies(torch.zeros(2, 3, 4, 24, dtype=BF16))  # head size not a multiple of 16
    monkeypatch.setattr(decode_attention, "fused_available", lambda: False)
    assert not seq_attention.applies(q.to(BF16))


def sdpa_only(monkeypatch):
    monkeypatch.setattr(seq_attention, "applies", lambda q: False)


@pytest.mark.parametrize("forward", ["shared_prefix", "padded"])
def test_the_forwards_through_it_equal_sdpa_under_autocast(forward, monkeypatch):
    """A bf16-autocast forward and backward of a ladder model: the kernel against torch's math kernel, within bf16
    rounding (log-probs, and every weight's gradient)."""
    model = build_model("nano", 60, seed=3).train()
    assert model.config.head_dim % 16 == 0
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, 60, (3, 6), generator=g).repeat_interleave(2, 0)
    responses = torch.randint(3, 60, (6, 20), generator=g)
    pm, rm = torch.ones_like(prompts), torch.ones_like(responses)
    pm[0:2, :2], rm[1, 12:], rm[4, 3:] = 0, 0, 0

    def run():
        model.zero_grad()
        with mixed_precision(torch.device("cpu"), True):
            if forward == "shared_prefix":
                lp = shared_prefix.response_logprobs(model, prompts, pm, responses, rm)
            else:
                lp = llama.token_logprobs(model, torch.cat((prompts, responses), 1), torch.cat((pm, rm), 1))[:, 5:]
        (lp * torch.cat((pm, rm), 1)[:, -lp.shape[1]:]).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    used = []
    kernel = seq_attention.attention
    monkeypatch.setattr(seq_attention, "attention", lambda *a: used.append(1) or kernel(*a))
    lp, grads = run()
    assert used
    sdpa_only(monkeypatch)
    lp_sdpa, grads_sdpa = run()
    real = torch.cat((pm, rm), 1)[:, -lp.shape[1]:].bool()
    torch.testing.assert_close(lp[real], lp_sdpa[real], atol=0.02, rtol=0)
    for name, want in grads_sdpa.items():
        assert want.abs().max() > 0, name
        assert (grads[name] - want).norm() <= 0.02 * want.norm(), name
