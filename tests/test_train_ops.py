"""`train_ops.TRAIN`'s fused RMSNorm, RoPE and SwiGLU gate, forward and backward, against the eager math and its
autograd."""

import math

import pytest
import torch

from rlhfscale.models import decode_attention, kernels, train_ops
from rlhfscale.models.ladder import build_model
from rlhfscale.models.llama import causal_lm_logits

from test_row_ops import angles, rope_loop

fused = pytest.mark.skipif(not decode_attention.fused_available(), reason="the C++ extension could not be built")
DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]


def grads(f, inputs, grad):
    """f(*inputs) and the gradients of <f(*inputs), grad> in each input."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = f(*inputs)
    return out, torch.autograd.grad(out, inputs, grad)


def fused_rms_norm(x, w, eps):
    """The fused op itself, whatever the dtype (`train_ops.rms_norm` keeps float32 outside autocast eager)."""
    return train_ops.FusedRMSNorm.apply(x, w, eps)


def rms_norm_backward_loop(g, x, w, eps):
    """dx, dw of out = w · x / sqrt(mean(x²) + eps), one row and feature at a time, in float64."""
    g, x, w = g.double(), x.double(), w.double()
    dx, dw = torch.zeros_like(x), torch.zeros_like(w)
    N, D = x.shape
    for n in range(N):
        r = 1 / math.sqrt(sum(float(v) ** 2 for v in x[n]) / D + eps)
        for j in range(D):  # d out_i / d x_j = w_i (r δ_ij - x_i x_j r³ / D)
            dx[n, j] = sum(float(g[n, i] * w[i]) * (r * (i == j) - float(x[n, i] * x[n, j]) * r**3 / D)
                           for i in range(D))
            dw[j] += g[n, j] * x[n, j] * r
    return dx, dw


@fused
def test_rope_backward_by_hand():
    """One pair rotated by θ: out = (x1 c - x2 s, x2 c + x1 s), so dx = Rᵀ g = (g1 c + g2 s, g2 c - g1 s)."""
    c, s = math.cos(0.3), math.sin(0.3)
    _, (dx,) = grads(lambda x: train_ops.apply_rope(x, torch.tensor([[[c, c]]]), torch.tensor([[[-s, s]]])),
                     [torch.tensor([[[1.0, 2.0]]])], torch.tensor([[[3.0, -1.0]]]))
    torch.testing.assert_close(dx, torch.tensor([[[3 * c - s, -c - 3 * s]]]), atol=1e-6, rtol=0)


@fused
@pytest.mark.parametrize(("x_dtype", "angle_dtype"), DTYPES)
def test_rope_forward_and_backward_are_the_eager_bits(x_dtype, angle_dtype):
    """The same bits as the eager op and its autograd in each dtype pair, autocast's (bf16 x, float32 angles)
    included, and the same output dtype; the gradient also equals the rotation by -θ written as a loop."""
    torch.manual_seed(0)
    x, (cos, sin) = torch.randn(70, 6, 32).to(x_dtype), angles(70, 32, angle_dtype)
    g = torch.randn(70, 6, 32).to(torch.promote_types(x_dtype, angle_dtype))
    ours, (dx,) = grads(lambda t: train_ops.apply_rope(t, cos, sin), [x], g)
    eager, (dx_eager,) = grads(lambda t: kernels.apply_rope(t, cos, sin), [x], g)
    assert ours.dtype == eager.dtype and torch.equal(ours, eager) and torch.equal(dx, dx_eager)
    if x_dtype == angle_dtype == torch.float32:
        torch.testing.assert_close(dx, rope_loop(g, cos, -sin), atol=1e-6, rtol=1e-6)


@fused
def test_rope_gradient_of_a_token_depends_on_its_row_only():
    """Rows are independent: changing the other rows' gradients changes no bit of this row's."""
    torch.manual_seed(1)
    x, (cos, sin) = torch.randn(40, 2, 16).bfloat16(), angles(40, 16)
    g = torch.randn(40, 2, 16)
    _, (dx,) = grads(lambda t: train_ops.apply_rope(t, cos, sin), [x], g)
    _, (dx_other,) = grads(lambda t: train_ops.apply_rope(t, cos, sin), [x], torch.cat((g[:10], g[10:] * 5)))
    assert torch.equal(dx[:10], dx_other[:10]) and not torch.equal(dx[10:], dx_other[10:])


@fused
def test_rms_norm_backward_by_hand():
    """x = (3, 4), w = (1, 2), g = (1, 0), eps 0: r = 1/√12.5, dw = g x r = (3r, 0), and
    dx = r (g w - x r² mean(g w x)) = r (1 - 9 r² / 2, -12 r² / 2) = r (0.64, -0.48)."""
    x, w, g = torch.tensor([[3.0, 4.0]]), torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 0.0]])
    _, (dx, dw) = grads(lambda x, w: fused_rms_norm(x, w, 0.0), [x, w], g)
    r = 1 / math.sqrt(12.5)
    torch.testing.assert_close(dx, torch.tensor([[0.64 * r, -0.48 * r]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(dw, torch.tensor([3 * r, 0.0]), atol=1e-6, rtol=0)


@fused
def test_rms_norm_backward_equals_a_loop_and_the_eager_autograd():
    torch.manual_seed(2)
    x, w, g = torch.randn(37, 24) * 3, torch.randn(24), torch.randn(37, 24)
    out, (dx, dw) = grads(lambda x, w: fused_rms_norm(x, w, 1e-5), [x, w], g)
    eager, (dx_eager, dw_eager) = grads(lambda x, w: kernels.rms_norm(x, w, 1e-5), [x, w], g)
    dx_loop, dw_loop = rms_norm_backward_loop(g, x, w, 1e-5)
    torch.testing.assert_close(out, eager, atol=1e-6, rtol=1e-6)
    for ours, reference in ((dx, dx_loop), (dw, dw_loop), (dx, dx_eager), (dw, dw_eager)):
        torch.testing.assert_close(ours.double(), reference.double(), atol=1e-5, rtol=1e-5)


@fused
def test_rms_norm_backward_in_bf16_is_within_a_rounding_of_float():
    torch.manual_seed(3)
    x, w, g = torch.randn(300, 192) * 2, torch.randn(192), torch.randn(300, 192)
    _, (dx, dw) = grads(lambda x, w: fused_rms_norm(x, w, 1e-6), [x.bfloat16(), w.bfloat16()], g.bfloat16())
    dx_loop, dw_loop = rms_norm_backward_loop(g.bfloat16().float(), x.bfloat16().float(), w.bfloat16().float(), 1e-6)
    torch.testing.assert_close(dx.double(), dx_loop, atol=2e-2, rtol=2e-2)  # a few bf16 ulps
    torch.testing.assert_close(dw.double(), dw_loop, atol=0.5, rtol=2e-2)  # sums of 300 rows in bf16 inputs


@fused
def test_rms_norm_rows_with_zero_gradient_add_nothing_and_threads_change_no_bit():
    """A row whose output gradient is 0 gets dx = 0 and adds nothing to dw; dw is the same bits on 1 or 2
    threads (its blocks of rows are summed in a fixed order)."""
    torch.manual_seed(4)
    x, w, g = torch.randn(100, 64), torch.randn(64), torch.randn(100, 64)
    g[50:] = 0
    _, (dx, dw) = grads(lambda x, w: fused_rms_norm(x, w, 1e-6), [x, w], g)
    _, (_, dw_half) = grads(lambda x, w: fused_rms_norm(x, w, 1e-6), [x[:50], w], g[:50])
    assert torch.equal(dx[50:], torch.zeros(50, 64))
    torch.testing.assert_close(dw, dw_half, atol=1e-6, rtol=1e-6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, (dx1, dw1) = grads(lambda x, w: fused_rms_norm(x, w, 1e-6), [x, w], g)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(dx1, dx) and torch.equal(dw1, dw)


@fused
def test_swiglu_by_hand():
    """silu(a) = a σ(a): at a = 0, out 0, da = g b σ(0) = g b / 2, db = 0; at a = 2, σ = 1 / (1 + e⁻²),
    da = g b σ (1 + 2 (1 - σ)), db = g · 2σ."""
    _, (da, db) = grads(train_ops.FusedSwiGLU.apply, [torch.tensor([[0.0, 2.0]]), torch.tensor([[3.0, -1.0]])],
                        torch.tensor([[1.0, 0.5]]))
    sig = 1 / (1 + math.exp(-2.0))
    torch.testing.assert_close(da, torch.tensor([[1.5, -0.5 * sig * (1 + 2 * (1 - sig))]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(db, torch.tensor([[0.0, 0.5 * 2 * sig]]), atol=1e-6, rtol=0)


@fused
def test_swiglu_equals_a_loop_and_the_eager_autograd_over_the_whole_range():
    """Float32 against a float64 loop of the formula and the eager ops, including |a| past exp's float range
    (σ 0 or 1, no overflow); bf16 against the eager ops: within one rounding, nearly always the same bits."""
    torch.manual_seed(5)
    a, b, g = torch.randn(50, 70) * 4, torch.randn(50, 70), torch.randn(50, 70)
    a[0, :4] = torch.tensor([-200.0, -90.0, 90.0, 200.0])
    out, (da, db) = grads(train_ops.FusedSwiGLU.apply, [a, b], g)
    sig = torch.sigmoid(a.double())
    loop = []
    for x, y, h, s in zip(*(t.flatten().tolist() for t in (a, b, g, sig))):  # out, da, db of one element
        loop.append((x * s * y, h * y * s * (1 + x * (1 - s)), h * x * s))
    for ours, column in zip((out, da, db), zip(*loop)):
        torch.testing.assert_close(ours.double().flatten(), torch.tensor(column, dtype=torch.float64), atol=1e-5,
                                   rtol=1e-5)
    eager, (da_eager, db_eager) = grads(lambda a, b: b * torch.nn.functional.silu(a), [a, b], g)
    for ours, theirs in ((out, eager), (da, da_eager), (db, db_eager)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    out, (da, db) = grads(train_ops.swiglu, [a.bfloat16(), b.bfloat16()], g.bfloat16())
    eager, (da_eager, db_eager) = grads(lambda a, b: b * torch.nn.functional.silu(a), [a.bfloat16(), b.bfloat16()],
                                        g.bfloat16())
    for ours, theirs in ((out, eager), (da, da_eager), (db, db_eager)):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=2**-7)  # one bf16 rounding apart at most
        assert (ours != theirs).float().mean() < 0.01


@fused
def test_rms_norm_and_swiglu_fuse_only_where_results_round_to_bf16(monkeypatch):
    """Their float sums and exp differ from the eager ops' by a float rounding, so in float32 outside autocast they
    stay the eager ops (the same bits); in bf16, or under autocast (a float32 residual normed), they are fused."""
    calls = []
    for op in ("rms_norm_backward", "swiglu_backward"):
        kernel = getattr(torch.ops.rlhfscale, op)
        monkeypatch.setattr(torch.ops.rlhfscale, op, lambda *a, kernel=kernel, op=op: calls.append(op) or kernel(*a))
    x, w, a = torch.randn(8, 16), torch.randn(16), torch.randn(8, 16)
    for dtype, autocast, fused_ops in ((torch.float32, False, []), (torch.float32, True, ["rms_norm_backward"]),
                                       (torch.bfloat16, False, ["rms_norm_backward", "swiglu_backward"])):
        calls.clear()
        inputs = [t.to(dtype).requires_grad_() for t in (x, w, a)]
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = train_ops.rms_norm(inputs[0], inputs[1], 1e-6).float().sum()
            out = out + train_ops.swiglu(inputs[2], inputs[0]).float().sum()
        out.backward()
        assert sorted(calls) == fused_ops, (dtype, autocast)
    x32, w32 = x.clone().requires_grad_(), w.clone().requires_grad_()
    ours, eager = train_ops.rms_norm(x32, w32, 1e-6), kernels.rms_norm(x, w, 1e-6)
    assert torch.equal(ours, eager) and torch.equal(train_ops.swiglu(a, x), x * torch.nn.functional.silu(a))


@fused
@pytest.mark.parametrize("autocast", [False, True])
def test_a_training_step_through_train_equals_plain(monkeypatch, autocast):
    """A nano model's loss and parameter gradients through `TRAIN` (the forwards that train) and through `PLAIN`
    (the eager ops): the same bits in float32 (RoPE fused, the eager bits), within bf16's rounding under autocast
    (all three fused: RMSNorm's backward counted)."""
    model = build_model("nano", 60, seed=5, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    ids = torch.randint(3, 60, (4, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            logits = causal_lm_logits(model, ids, mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    calls = []
    for op in ("rope_backward", "rms_norm_backward"):
        kernel = getattr(torch.ops.rlhfscale, op)
        monkeypatch.setattr(torch.ops.rlhfscale, op, lambda *a, kernel=kernel, op=op: calls.append(op) or kernel(*a))
    loss, grad = loss_and_grads()
    assert calls.count("rope_backward") == 2 * 2  # q and k of two layers
    assert calls.count("rms_norm_backward") == (2 * 2 + 1 if autocast else 0)  # two norms a layer, the final norm
    for name in ("rms_norm", "apply_rope"):
        monkeypatch.setattr(train_ops.TRAIN, name, staticmethod(getattr(kernels, name)))
    monkeypatch.setattr(train_ops.TRAIN, "swiglu", kernels.PLAIN.swiglu)
    loss_plain, grad_plain = loss_and_grads()
    if not autocast:
        assert torch.equal(loss, loss_plain) and all(torch.equal(a, b) for a, b in zip(grad, grad_plain))
        return
    torch.testing.assert_close(loss, loss_plain, atol=2e-2, rtol=2e-2)
    for ours, plain in zip(grad, grad_plain):
        torch.testing.assert_close(ours, plain, atol=2e-2 * plain.abs().max().item(), rtol=2e-2)
