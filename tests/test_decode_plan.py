"""The prepared decoding step (`models.decode_plan`) and the prepacked products under it (`kernels.Prepacked`):
bit for bit what the per-call path computes, only where it applies, and never on weights changed since packing."""

import pytest
import torch
from torch import nn

from rlhfscale.models import decode_attention, kernels, kv_cache, llama
from rlhfscale.models.decode_plan import DecodePlan
from rlhfscale.models.ladder import build_model
from test_llama_forward import gqa_model, padded_batch

needs_fast = pytest.mark.skipif(kernels._ONEDNN is None or not decode_attention.fused_available(),
                                reason="no oneDNN linear in this torch, or the C++ extension could not be built")


def prefilled(model, rows=6):
    """A cache of `rows` left-padded prompts of the model, prefilled, and the tokens to feed next."""
    ids, mask = padded_batch(model.config.vocab_size)
    pick = [0, 2, 3, 0, 2, 3][:rows]
    _, cache = kv_cache.prefill(model, ids[pick, :6], mask[pick, :6], capacity=12)
    return cache, ids[pick, 6:]


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda: build_model("nano", 60, seed=3).eval(), gqa_model], ids=["ladder", "gqa"])
def test_plan_steps_equal_the_layer_steps_bit_for_bit(make, dtype, monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # every product through oneDNN, as the plan runs them
    model = make().to(dtype)
    with torch.inference_mode():
        cache, feed = prefilled(model)
        assert cache.plan is not None and cache.plan.min_rows == 0
        bare = cache.select(torch.arange(len(feed)))
        bare.plan = None  # the same packed kernels, through `llama._layer`
        for t in range(feed.shape[1]):
            step = kv_cache.decode_step
            assert torch.equal(step(model, cache, feed[:, t]), step(model, bare, feed[:, t]))
    written = cache.length  # the columns past it were never filled
    keys = decode_attention.key_columns
    assert torch.equal(keys(cache.k)[..., :written], keys(bare.k)[..., :written])
    assert torch.equal(cache.v[..., :written, :], bare.v[..., :written, :])


@needs_fast
def test_a_step_of_fewer_rows_than_the_products_need_takes_the_layer_path(monkeypatch):
    model = build_model("nano", 60, seed=3).eval()
    with torch.inference_mode():
        cache, feed = prefilled(model, rows=6)
        smallest = min(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        monkeypatch.setattr(kernels, "MIN_MACS", 6 * smallest)  # 6 rows: every product takes oneDNN; 5: not
        assert DecodePlan.of(model, cache.ops).min_rows == 6
        cache.plan = DecodePlan.of(model, cache.ops)
        layers = []
        monkeypatch.setattr(llama, "_layer", lambda *a: layers.append(1) or _layer(*a))
        kv_cache.decode_step(model, cache, feed[:, 0])
        assert not layers
        kv_cache.decode_step(model, cache.select(torch.arange(5)), feed[:5, 1])
        assert len(layers) == model.config.num_hidden_layers


_layer = llama._layer


@needs_fast
def test_no_plan_where_a_step_would_leave_the_fast_kernels(monkeypatch):
    model = build_model("nano", 60, seed=3).eval()
    with torch.inference_mode():
        assert DecodePlan.of(model, kernels.Prepacked(model, rows=8)) is not None
        assert DecodePlan.of(model, kernels.FAST) is None  # nothing packed
        with torch.autocast("cpu", dtype=torch.bfloat16):  # its products run in bf16
            assert not kernels.Prepacked(model, rows=8).packed
            assert DecodePlan.of(model, kernels.Prepacked(model, rows=8)) is None
        packed = kernels.Prepacked(model, rows=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # packed before, asked for under autocast
            assert DecodePlan.of(model, packed) is None
        assert DecodePlan.of(model.to(torch.bfloat16), kernels.for_inference(model, rows=8)) is not None
        assert DecodePlan.of(model.half(), kernels.for_inference(model, rows=8)) is None  # float16: not packed
        model.float()
        monkeypatch.setattr(decode_attention, "uses_fused", lambda device: False)
        assert DecodePlan.of(model, kernels.Prepacked(model, rows=8)) is None  # the eager attention
    assert DecodePlan.of(model, kernels.Prepacked(model, rows=8)) is None  # autograd on: nothing packed


@needs_fast
def test_weights_changed_after_packing_are_refused(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_MACS", 0)
    model = build_model("nano", 60, seed=3).eval()
    with torch.inference_mode():
        cache, feed = prefilled(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(2)  # an optimizer step would
    with torch.inference_mode(), pytest.raises(RuntimeError, match="a weight changed in place after it was packed"):
        kv_cache.decode_step(model, cache, feed[:, 0])
    cache.plan = None
    with torch.inference_mode(), pytest.raises(RuntimeError, match="a weight changed in place after it was packed"):
        kv_cache.decode_step(model, cache, feed[:, 0])  # `kernels.Prepacked` itself


@needs_fast
@pytest.mark.parametrize("rows", [1, 300])
def test_prepacked_products_equal_fast_bit_for_bit(rows, monkeypatch):
    """Above `MIN_MACS` the packed weight; below it (one row) the module's own product, as `FAST` does."""
    torch.manual_seed(0)
    module, x, other = nn.Linear(48, 80, bias=False), torch.randn(rows, 48), torch.randn(rows, 80)
    with torch.inference_mode():
        packed = kernels.Prepacked(module, rows=64)
        assert module in packed.packed
        ours, fast = (products(ops, module, x, other) for ops in (packed, kernels.FAST))
    assert all(torch.equal(a, b) for a, b in zip(ours, fast, strict=True))


def products(ops, module, x, other):
    return (ops.linear(module, x), ops.linear_silu(module, x), ops.linear_mul(module, x, other),
            ops.linear_add(module, x, other))


@needs_fast
def test_bf16_packed_products_round_once_from_the_float_accumulator():
    """A bf16 weight packed: oneDNN's product on the plain weight bit for bit, each result the float product (and its
    activation, product or sum) rounded to bf16 once, within half a unit in the last place (8 significant bits)."""
    torch.manual_seed(0)
    module = nn.Linear(48, 80, bias=False).bfloat16()
    x, other = torch.randn(300, 48).bfloat16(), torch.randn(300, 80).bfloat16()
    with torch.inference_mode():
        packed = kernels.Prepacked(module, rows=64)
        assert packed.packed[module][0].dtype == torch.bfloat16
        ours = products(packed, module, x, other)
        w, onednn = module.weight, kernels._ONEDNN
        plain = (onednn(x, w, None, "none", [], ""), onednn(x, w, None, "swish", [], ""),
                 onednn.binary(x, other, w, None, "mul"), onednn.binary(x, other, w, None, "add"))
    assert all(torch.equal(a, b) for a, b in zip(ours, plain, strict=True))
    y = x.float() @ w.float().T
    for got, want in zip(ours, (y, torch.nn.functional.silu(y), y * other.float(), y + other.float()), strict=True):
        assert got.dtype == torch.bfloat16
        half_ulp = torch.exp2(torch.floor(torch.log2(want.abs().clamp(min=1e-30))) - 8)
        assert ((got.float() - want).abs() <= half_ulp + 1e-6).all()


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_kept_pack_takes_the_new_weights_with_a_fresh_packings_bits(dtype):
    """`kernels.pack` into a kept buffer: the buffer of the last call, holding the weights given now (not the old
    ones), with the bits of a fresh packing; another shape or row count gets a buffer of its own."""
    torch.manual_seed(0)
    kept, x = {}, torch.randn(40, 48, dtype=dtype)
    with torch.inference_mode():
        first = kernels.pack(torch.randn(80, 48, dtype=dtype), 64, kept, "w")
        w = torch.randn(80, 48, dtype=dtype)
        again = kernels.pack(w, 64, kept, "w")
        assert again is first and kept["w"][1] is first
        fresh = torch.ops.mkldnn._reorder_linear_weight(w, 64)
        assert torch.equal(kernels._ONEDNN(x, again, None, "none", [], ""),
                           kernels._ONEDNN(x, fresh, None, "none", [], ""))
        torch.testing.assert_close(kernels._ONEDNN(x, again, None, "none", [], "").float(), (x @ w.T).float(),
                                   atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)
        other = kernels.pack(torch.randn(80, 40, dtype=dtype), 64, kept, "w")  # another shape
        assert other is not first
        assert kernels.pack(torch.randn(80, 40, dtype=dtype), 8, kept, "w") is not other  # another row count
        assert kept["w"][0] == (8, (80, 40), dtype)


@needs_fast
def test_prepacked_fills_the_kept_buffers_of_the_last_instance(monkeypatch):
    """A second `Prepacked` on the model (a later rollout) copies the model's weights now into the buffers the first
    one packed, the stacked q, k and v of the prepared step among them; its products are a fresh instance's."""
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # every product through the packed weights
    model = build_model("nano", 60, seed=3).eval()
    kept, x = {}, torch.randn(64, 192)  # (rows enough for oneDNN; columns sliced to each product's input)
    with torch.inference_mode():
        first = kernels.Prepacked(model, rows=64, kept=kept)
        plan = DecodePlan.of(model, first)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)  # an optimizer step would
        second = kernels.Prepacked(model, rows=64, kept=kept)
        assert all(second.packed[m][0] is first.packed[m][0] for m in first.packed)
        assert DecodePlan.of(model, second).layers[0].qkv is plan.layers[0].qkv
        fresh = kernels.Prepacked(model, rows=64)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                assert torch.equal(second.linear(m, x[:, : m.in_features]), fresh.linear(m, x[:, : m.in_features]))
        layers = model.config.num_hidden_layers
        assert len(first.packed) == 7 * layers + 1  # each layer's products, the head
        assert len(kept) == len(first.packed) + layers  # and each layer's stacked q, k, v

