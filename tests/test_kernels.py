"""The inference kernels (oneDNN on a CPU) against the modules' own forwards, and the sampler through them."""

import pytest
import torch
from torch import nn

from rlhfscale.models import kernels, kv_cache, llama
from rlhfscale.models.ladder import build_model
from rlhfscale.rollout.sampler import sample

PAD, BOS, EOS = 0, 1, 2
needs_onednn = pytest.mark.skipif(kernels._ONEDNN is None, reason="this torch has no oneDNN linear")


def products(ops, module, x, other):
    return (ops.linear(module, x), ops.linear_silu(module, x), ops.linear_mul(module, x, other),
            ops.linear_add(module, x, other))


@needs_onednn
@pytest.mark.parametrize("rows", [kernels.MIN_MACS // (48 * 80) + 1, 600])
def test_fast_products_equal_the_modules_own(rows):
    torch.manual_seed(0)
    module, x, other = nn.Linear(48, 80, bias=False), torch.randn(rows, 48), torch.randn(rows, 80)
    with torch.inference_mode():
        assert kernels.onednn_ok(x, module)
        for fast, plain in zip(products(kernels.FAST, module, x, other), products(kernels.PLAIN, module, x, other)):
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_fast_falls_back_to_the_module_where_onednn_does_not_apply():
    torch.manual_seed(0)
    module, x = nn.Linear(48, 80, bias=False), torch.randn(600, 48)
    with_bias = nn.Linear(48, 80)
    assert not kernels.onednn_ok(x, module)  # autograd on: the op has no backward
    assert kernels.FAST.linear(module, x).requires_grad
    with torch.inference_mode():
        assert kernels.onednn_ok(x, module)
        assert not kernels.onednn_ok(x[: kernels.MIN_MACS // (48 * 80)], module)  # too small a product
        assert not kernels.onednn_ok(x.double(), module.double())
        assert not kernels.onednn_ok(x, with_bias)
        torch.testing.assert_close(kernels.FAST.linear(with_bias, x), with_bias(x), atol=0, rtol=0)


class Counting:
    """A stand-in for the oneDNN op that counts its calls."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)

    def binary(self, *args):
        self.calls += 1
        return self.op.binary(*args)


@needs_onednn
def test_sampling_many_rows_greedy_equals_hf_generate(monkeypatch):
    """The oneDNN kernels in every decode step (whatever their size); greedy tokens are HF's."""
    monkeypatch.setattr(kernels, "_ONEDNN", counting := Counting(kernels._ONEDNN))
    monkeypatch.setattr(kernels, "MIN_MACS", 0)
    model = build_model("nano", 60, seed=7, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [[BOS, *torch.randint(3, 60, (n,), generator=g).tolist()] for n in [1, 5, 9, 3] * 10]
    ours = sample(model, prompts, max_new_tokens=10, temperature=0, eos_id=-1, pad_id=PAD)
    hf = model.generate(ours.prompt_ids, attention_mask=ours.prompt_mask, do_sample=False, max_new_tokens=10,
                        min_new_tokens=10, pad_token_id=PAD, eos_token_id=EOS)[:, ours.prompt_ids.shape[1]:]
    assert torch.equal(ours.response_ids, hf)
    # the 9 decode steps' products: per layer q, k and v (one, stacked: `models.decode_plan`), o, gate, up, down;
    # and the head
    assert counting.calls >= 9 * (2 * 5 + 1)


@needs_onednn
def test_linear_add_is_the_residual_sum():
    """By hand: a 1 × 2 input through a 2 × 2 weight, plus the residual."""
    module = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    x, residual = torch.tensor([[1.0, -1.0]]).expand(kernels.MIN_MACS, 2), torch.tensor([[10.0, 20.0]])
    with torch.inference_mode():
        assert kernels.onednn_ok(x, module)
        out = kernels.FAST.linear_add(module, x, residual.expand_as(x).contiguous())
    assert torch.equal(out, torch.tensor([[9.0, 19.0]]).expand_as(x))


def test_prefill_then_decode_through_onednn_equals_full_forward(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # every projection through oneDNN where it runs
    model = build_model("nano", 60, seed=3).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (40, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, :4] = 0  # some rows left-padded
    ids = ids.masked_fill(mask == 0, 0)
    with torch.inference_mode():
        logits, cache = kv_cache.prefill(model, ids[:, :6], mask[:, :6], capacity=8)
        steps = [logits] + [kv_cache.decode_step(model, cache, ids[:, t]) for t in (6, 7)]
        full = llama.causal_lm_logits(model, ids, mask)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:8], atol=1e-5, rtol=0)
