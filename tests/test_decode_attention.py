"""A decoding step's attention (`models.decode_attention`): the fused CPU kernel and the eager ops, against a hand
computation and a plain loop over rows and heads; columns it must not read change nothing."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhfscale.models import decode_attention
from rlhfscale.models.ladder import build_model
from rlhfscale.rollout.sampler import sample

fused = pytest.mark.skipif(not decode_attention.fused_available(), reason="the fused kernel could not be built")


def kernel_layout(kt, v, mask):
    """A cache layer (keys as columns kt [B, Hkv, D, C], v [B, Hkv, C, D], mask [B, 1, 1, C]) in the fused kernel's
    layout: C padded to whole tiles with columns it must not read (large, masked), the keys tiled."""
    pad = -kt.shape[-1] % decode_attention.TILE
    kt, v = F.pad(kt, (0, pad), value=1e4), F.pad(v, (0, 0, 0, pad), value=1e4)
    return decode_attention.tiled_keys(kt), v, F.pad(mask, (0, pad), value=float("-inf"))


def fused_attend(q, kt, v, mask, t):
    """The kernel with column t - 1 as the new token: it stores it (the same values) and attends."""
    B, _, D = q.shape
    k_new, v_new = kt[..., t - 1].clone(), v[:, :, t - 1].clone()
    tiles, v, mask = kernel_layout(kt, v, mask)
    return torch.ops.rlhfscale.decode_attention(q, k_new, v_new, tiles, v, mask.view(B, -1), t, D**-0.5)


def eager_attend(q, kt, v, mask, t):
    return decode_attention.eager(q, kt, v, mask)


ATTEND = [pytest.param(fused_attend, marks=fused, id="fused"), pytest.param(eager_attend, id="eager")]


def reference(q, kt, v, mask, t):
    """The same attention as a plain loop, in float64, over the first t columns."""
    B, H, D = q.shape
    Hkv = kt.shape[1]
    out = torch.zeros(B, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // Hkv)
            scores = [float(q[b, h].double() @ kt[b, g, :, c].double()) / math.sqrt(D) + float(mask[b, 0, 0, c])
                      for c in range(t)]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            for c in range(t):
                out[b, h] += weights[c] / sum(weights) * v[b, g, c].double()
    return out.view(B, H * D)


def cache_layer(B, H, Hkv, D, C, t, dtype=torch.float32, seed=0, layers=2):
    """q, and the last layer of a random `KVCache`-shaped cache (kt [B, Hkv, D, C], v [B, Hkv, C, D], strided
    rows), with t columns written, the unwritten ones holding large values, and each row's first column a pad."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=g).to(dtype)
    kt = (torch.randn(layers, B, Hkv, D, C, generator=g) * 3).to(dtype)
    v = torch.randn(layers, B, Hkv, C, D, generator=g).to(dtype)
    kt[..., t:], v[:, :, :, t:] = 1e4, 1e4  # never read: masked (eager) or past t (fused)
    mask = torch.zeros(B, 1, 1, C, dtype=dtype)
    mask[..., t:] = float("-inf")
    mask[1:, ..., 0] = float("-inf")  # a prompt pad in every row but the first
    return q, kt[-1], v[-1], mask


@pytest.mark.parametrize("attend", ATTEND)
def test_one_head_by_hand(attend):
    """q = (1, 0), keys (2, 0) and (0, 0): scores √2 and 0 (scaled by 1/√2), so the weights are
    e^√2 / (e^√2 + 1) and 1 / (e^√2 + 1), and with values (1, 0) and (0, 1) the output is the weights."""
    q = torch.tensor([[[1.0, 0.0]]])
    kt = torch.tensor([[[[2.0, 0.0, 9.0], [0.0, 0.0, 9.0]]]])  # [1, 1, D=2, C=3], column 2 unwritten
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]]])
    mask = torch.tensor([[[[0.0, 0.0, float("-inf")]]]])
    w = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)
    torch.testing.assert_close(attend(q, kt, v, mask, 2), torch.tensor([[w, 1 - w]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("attend", ATTEND)
@pytest.mark.parametrize(("H", "Hkv", "D", "C", "t"), [
    (4, 4, 32, 47, 31),  # the ladder's head size: a loop of known length
    (4, 2, 64, 40, 40),  # grouped query heads, every column written
    (2, 1, 24, 37, 37),  # another head size; a last tile of 16 columns partly written
    (3, 3, 128, 16, 5),
    (2, 2, 32, 12, 9),  # a cache narrower than one tile of 16 columns
    (2, 2, 32, 100, 90),  # six tiles: a group of four summed side by side, then two
    (2, 1, 64, 70, 69),  # five tiles; an odd count of value rows
    (2, 2, 24, 80, 77),  # a head size without an unrolled loop, in groups of tiles
])  # fmt: skip
def test_equals_a_plain_loop(attend, H, Hkv, D, C, t):
    q, kt, v, mask = cache_layer(3, H, Hkv, D, C, t)
    torch.testing.assert_close(attend(q, kt, v, mask, t).double(), reference(q, kt, v, mask, t), atol=2e-5,
                               rtol=1e-5)


@fused
def test_columns_past_t_and_masked_pads_change_nothing():
    q, kt, v, mask = cache_layer(3, 4, 4, 32, 47, 20)
    out = fused_attend(q, kt, v, mask, 20)
    kt2, v2 = kt.clone(), v.clone()
    kt2[..., 20:], v2[:, :, 20:] = -7.0, 123.0  # the unwritten columns
    kt2[1:, ..., 0], v2[1:, :, 0] = 55.0, -55.0  # the pads
    assert torch.equal(fused_attend(q, kt2, v2, mask, 20), out)


@pytest.mark.parametrize("kernel", [pytest.param(True, marks=fused, id="fused"), pytest.param(False, id="eager")])
def test_the_new_token_is_stored_in_column_t_minus_1_and_read(monkeypatch, kernel):
    if not kernel:
        monkeypatch.setattr(decode_attention, "fused_available", lambda: False)
    q, kt, v, mask = cache_layer(3, 4, 2, 32, 48, 20)
    k_new, v_new = torch.randn(3, 2, 32), torch.randn(3, 2, 32)
    expected_kt, expected_v = kt.clone(), v.clone()
    expected_kt[..., 19], expected_v[:, :, 19] = k_new, v_new
    cache = decode_attention.tiled_keys(kt) if kernel else kt
    out = decode_attention.attend(q, k_new, v_new, cache, v, mask, 20)
    kt = decode_attention.key_columns(cache) if kernel else cache
    assert torch.equal(kt, expected_kt) and torch.equal(v, expected_v)  # column 19 written, nothing else
    torch.testing.assert_close(out.double(), reference(q, expected_kt, expected_v, mask, 20), atol=2e-5, rtol=1e-5)


@fused
def test_bf16_rounds_where_the_eager_ops_round():
    """In bf16 the eager ops round the scores, the weights and the output to bf16; the kernel rounds at the same
    points, so the two differ only by float32 summation order, not by bf16 roundings they do not share."""
    q, kt, v, mask = cache_layer(8, 4, 4, 32, 47, 31, dtype=torch.bfloat16)
    fused_out, eager_out = fused_attend(q, kt, v, mask, 31).float(), eager_attend(q, kt, v, mask, 31).float()
    exact = reference(q, kt, v, mask, 31).float()
    ulp = 2.0 ** (torch.floor(torch.log2(eager_out.abs().clamp(min=1e-3))) - 7)
    assert ((fused_out - eager_out).abs() <= ulp).float().mean() > 0.97  # at most one bf16 step apart
    assert (fused_out - exact).abs().mean() < 2 * (eager_out - exact).abs().mean() + 1e-3


@fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sampler_draws_the_same_tokens_with_either(monkeypatch, dtype):
    """float32: the same tokens. bf16: the two differ by at most one bf16 step in a score, which can flip a draw
    that sits on a tie and change the rest of its row, so nearly every row must match."""
    model = build_model("micro", 32, seed=0, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval().to(dtype)
    prompts = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 8]] * 4

    def draw():
        return sample(model, prompts, max_new_tokens=12, eos_id=2, pad_id=0, generator=torch.Generator().manual_seed(3))

    def padded(rollout):  # to the full 12 columns: a flipped draw can change when the last row ends
        return (F.pad(rollout.response_ids, (0, 12 - rollout.response_ids.shape[1])),
                F.pad(rollout.logprobs, (0, 12 - rollout.logprobs.shape[1])))

    (ids, logprobs) = padded(draw())
    monkeypatch.setattr(decode_attention, "uses_fused", lambda device: False)  # the attention only: the same draw
    (eager_ids, eager_logprobs) = padded(draw())
    same = (ids == eager_ids).all(-1)
    assert int(same.sum()) >= (12 if dtype == torch.float32 else 10), same
    torch.testing.assert_close(logprobs[same], eager_logprobs[same], atol=1e-5 if dtype == torch.float32 else 2e-2,
                               rtol=0)


def test_only_a_cpu_step_takes_the_kernel():
    assert decode_attention.uses_fused("cpu") == decode_attention.fused_available()
    assert not decode_attention.uses_fused("cuda")  # a GPU runs the eager ops, whatever the CPU build did


def test_the_switch_takes_0_or_1_and_refuses_anything_else(monkeypatch):
    from rlhfscale.errors import BadInput

    monkeypatch.setattr(decode_attention, "fused_available", decode_attention.fused_available.__wrapped__)
    monkeypatch.setenv(decode_attention.ENV, "0")
    assert decode_attention.fused_available() is False
    monkeypatch.setenv(decode_attention.ENV, "off")
    with pytest.raises(BadInput, match="RLHFSCALE_FUSED_ATTENTION: expected 0 .* or 1 .*, found 'off'"):
        decode_attention.fused_available()


@fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("H", "Hkv", "D"), [(4, 4, 32), (4, 2, 64), (2, 1, 24)])
def test_the_rope_step_equals_rope_then_the_step(H, Hkv, D, dtype):
    """`decode_attention_rope` on a q, k, v product's output (rows strided) equals RoPE of q and k (the row op) then
    `decode_attention`, bit for bit: the output and the key stored; each row at its own position."""
    B, C, t = 5, 32, 19
    g = torch.Generator().manual_seed(4)
    qkv = torch.randn(B, (H + 2 * Hkv) * D + 3, generator=g).to(dtype)[:, 3:]  # rows strided
    cos, sin = (torch.randn(40, D, generator=g).to(dtype) for _ in range(2))
    positions = torch.tensor([0, 7, 18, 39, 25])
    _, kt, v, mask = cache_layer(B, H, Hkv, D, C, t, dtype)
    kt, v, mask = kernel_layout(kt, v, mask)
    q, k, v_new = qkv[:, : H * D].view(B, H, D), qkv[:, H * D : (H + Hkv) * D], qkv[:, (H + Hkv) * D :]
    rope = torch.ops.rlhfscale.rope
    q, k = rope(q, cos[positions], sin[positions]), rope(k.reshape(B, Hkv, D), cos[positions], sin[positions])
    kt_plain, v_plain = kt.clone(), v.clone()
    plain = torch.ops.rlhfscale.decode_attention(q, k, v_new.reshape(B, Hkv, D), kt_plain, v_plain, mask.view(B, -1),
                                                 t, D**-0.5)
    fused_out = torch.ops.rlhfscale.decode_attention_rope(qkv, H, cos, sin, positions, kt, v, mask.view(B, -1), t,
                                                          D**-0.5)
    assert torch.equal(fused_out, plain)
    assert torch.equal(kt, kt_plain) and torch.equal(v, v_plain)
    stored = decode_attention.key_columns(kt)[:, 0, :, t - 1]  # head 0's key of each row, [B, D]
    assert not torch.equal(stored, qkv[:, H * D : (H + 1) * D])  # RoPE moved it
    with pytest.raises(RuntimeError, match="row 1 at position 40, outside the tables' 40"):
        torch.ops.rlhfscale.decode_attention_rope(qkv, H, cos, sin, torch.tensor([0, 40, 1, 2, 3]), kt, v,
                                                  mask.view(B, -1), t, D**-0.5)


def prompt_batch(H, Hkv, D, C, lengths, seed=0):
    """Left-padded prompts of `lengths` tokens in rows of P = max(lengths) columns: their q [N, H, D], k, v
    [N, Hkv, D], row and column of each, and a cache layer (kt [B, Hkv, D, C], v [B, Hkv, C, D]; C a multiple of
    `TILE`, for `decode_attention.tiled_keys`) holding 1e4 everywhere but the pads (zeros), with its mask
    [B, 1, 1, C] (0 on the prompts' tokens)."""
    g = torch.Generator().manual_seed(seed)
    B, P, N = len(lengths), max(lengths), sum(lengths)
    rows = torch.tensor([b for b, n in enumerate(lengths) for _ in range(n)])
    cols = torch.tensor([c for n in lengths for c in range(P - n, P)])
    q, k, v = (torch.randn(N, heads, D, generator=g) for heads in (H, Hkv, Hkv))
    kt_cache, v_cache = torch.full((B, Hkv, D, C), 1e4), torch.full((B, Hkv, C, D), 1e4)
    mask = torch.full((B, 1, 1, C), float("-inf"))
    for b, n in enumerate(lengths):
        kt_cache[b, ..., : P - n], v_cache[b, :, : P - n] = 0, 0
        mask[b, ..., P - n : P] = 0
    return q, k, v, rows, cols, kt_cache, v_cache, mask


def prefill_reference(q, k, v, rows, cols):
    """Each token's attention to the tokens of its row up to its own column, a plain loop in float64."""
    N, H, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros(N, H, D, dtype=torch.float64)
    for i in range(N):
        keys = [j for j in range(N) if rows[j] == rows[i] and cols[j] <= cols[i]]
        for h in range(H):
            scores = torch.tensor([float(q[i, h].double() @ k[j, h // group].double()) / math.sqrt(D) for j in keys])
            weights = scores.softmax(0)
            out[i, h] = sum(w * v[j, h // group].double() for w, j in zip(weights, keys))
    return out.view(N, H * D)


@fused
def test_prefill_attention_by_hand():
    """One prompt of two tokens, one head: the first reads only itself (its value); the second reads both, with
    q = (1, 0), keys (0, 0) and (2, 0): scores 0 and √2, so the weights are 1 / (e^√2 + 1) and e^√2 / (e^√2 + 1)."""
    q = torch.tensor([[[5.0, 5.0]], [[1.0, 0.0]]])
    k, v = torch.tensor([[[0.0, 0.0]], [[2.0, 0.0]]]), torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    tiles, v_cache = torch.zeros(1, 1, 1, 2, 16), torch.zeros(1, 1, 16, 2)  # one tile of 16 columns
    mask = F.pad(torch.zeros(1, 1, 1, 2), (0, 14), value=float("-inf"))
    out = decode_attention.prefill(q, k, v, tiles, v_cache, mask, torch.tensor([0, 0]), torch.tensor([0, 1]))
    w = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [1 - w, w]]), atol=1e-6, rtol=0)
    assert torch.equal(tiles[0, 0, 0, :, :2], k[:, 0].T) and torch.equal(v_cache[0, 0, :2], v[:, 0])


@fused
@pytest.mark.parametrize(("H", "Hkv", "D", "lengths"), [
    (4, 4, 32, [5, 1, 9, 9]),  # the ladder's head size; a prompt of one token; rows without pads
    (4, 2, 64, [3, 17, 20]),  # grouped query heads; prompts longer than a block of 16 columns
    (2, 1, 24, [6, 2]),  # a head size without an unrolled loop
])  # fmt: skip
def test_prefill_attention_equals_a_plain_loop_and_stores_every_token(H, Hkv, D, lengths):
    q, k, v, rows, cols, kt_cache, v_cache, mask = prompt_batch(H, Hkv, D, 48, lengths)
    expected_kt, expected_v = kt_cache.clone(), v_cache.clone()
    expected_kt[rows, :, :, cols], expected_v[rows, :, cols] = k, v
    tiles = decode_attention.tiled_keys(kt_cache)
    out = decode_attention.prefill(q, k, v, tiles, v_cache, mask, rows, cols)
    torch.testing.assert_close(out.double(), prefill_reference(q, k, v, rows, cols), atol=2e-5, rtol=1e-5)
    assert torch.equal(decode_attention.key_columns(tiles), expected_kt)  # their columns, nothing else
    assert torch.equal(v_cache, expected_v)


@fused
def test_prefill_attention_pads_and_later_columns_change_nothing():
    q, k, v, rows, cols, kt_cache, v_cache, mask = prompt_batch(4, 4, 32, 32, [4, 11, 7])
    tiled = decode_attention.tiled_keys
    out = decode_attention.prefill(q, k, v, tiled(kt_cache), v_cache.clone(), mask, rows, cols)
    kt_cache[0, ..., :7], v_cache[0, :, :7] = 55.0, -55.0  # row 0's pads
    kt_cache[..., 11:], v_cache[:, :, 11:] = float("nan"), float("nan")  # past the prompts
    assert torch.equal(decode_attention.prefill(q, k, v, tiled(kt_cache), v_cache, mask, rows, cols), out)


@fused
def test_prefill_attention_refuses_tokens_out_of_order():
    q, k, v, rows, cols, kt_cache, v_cache, mask = prompt_batch(2, 2, 32, 32, [3, 3])
    kt_cache = decode_attention.tiled_keys(kt_cache)
    with pytest.raises(RuntimeError, match="expected tokens sorted by row, then column; token 1 is not"):
        decode_attention.prefill(q, k, v, kt_cache, v_cache, mask, rows, cols.flip(0))
    with pytest.raises(RuntimeError, match="token 5 at row 2, column 2: outside the cache"):
        decode_attention.prefill(q, k, v, kt_cache, v_cache, mask, torch.tensor([0, 0, 0, 1, 1, 2]), cols)


def test_tiled_keys_hold_column_c_in_tile_c_over_16():
    """Column c of keys [..., D, C] sits in tile c // 16 at lane c % 16, and `key_columns` undoes the tiling."""
    kt = torch.arange(2 * 3 * 48, dtype=torch.float32).view(2, 3, 48)  # [B=2, D=3, C=48]
    tiles = decode_attention.tiled_keys(kt)
    assert tiles.shape == (2, 3, 3, 16) and tiles.is_contiguous()  # [B, C / 16, D, 16]
    assert tiles[1, 2, 0, 5] == kt[1, 0, 37] and tiles[0, 0, 2, 15] == kt[0, 2, 15]
    assert torch.equal(decode_attention.key_columns(tiles), kt)


@pytest.mark.parametrize("tiled", [True, False])
def test_store_keys_writes_the_same_columns_in_either_layout(tiled):
    g = torch.Generator().manual_seed(0)
    kt = torch.randn(3, 2, 4, 32, generator=g)  # [B, Hkv, D, C]
    k = torch.randn(4, 2, 4, generator=g)
    rows, cols = torch.tensor([0, 0, 2, 1]), torch.tensor([3, 17, 31, 0])
    expected = kt.clone()
    for i in range(4):
        expected[rows[i], :, :, cols[i]] = k[i]
    cache = decode_attention.tiled_keys(kt) if tiled else kt.clone()
    decode_attention.store_keys(cache, rows, cols, k)
    assert torch.equal(decode_attention.key_columns(cache) if tiled else cache, expected)


@fused
def test_the_kernel_refuses_keys_that_are_not_tiled():
    q, kt, v, mask = cache_layer(2, 4, 4, 32, 32, 20)
    with pytest.raises(RuntimeError, match=r"decode_attention: expected keys \[B, Hkv, C / 16, D, 16\]"):
        torch.ops.rlhfscale.decode_attention(q, q, q, kt, v, mask.view(2, -1), 20, 32**-0.5)


@fused
def test_the_kernel_takes_strided_rows_of_new_keys_and_values_but_not_strided_heads():
    """k and v may be row slices of a wider tensor (the prepared step's q, k, v product): the same output as
    contiguous ones. Heads that are not side by side within a row are refused."""
    q, kt, v, mask = cache_layer(3, 4, 2, 32, 32, 20)
    tiles, B = decode_attention.tiled_keys(kt), 3
    wide = torch.randn(B, 3 * 2 * 32, generator=torch.Generator().manual_seed(1))
    k_new, v_new = wide[:, :64].view(B, 2, 32), wide[:, 64:128].view(B, 2, 32)  # rows strided by 192

    def run(k, v_in):
        return torch.ops.rlhfscale.decode_attention(q, k, v_in, tiles.clone(), v.clone(), mask.view(B, -1), 20,
                                                    32**-0.5)

    assert torch.equal(run(k_new, v_new), run(k_new.contiguous(), v_new.contiguous()))
    heads_apart = k_new.contiguous().transpose(1, 2).contiguous().transpose(1, 2)  # [B, 2, 32], head stride 1
    with pytest.raises(RuntimeError, match="decode_attention: expected contiguous heads"):
        run(heads_apart, v_new)
