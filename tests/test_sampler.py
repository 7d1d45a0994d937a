"""The batched KV-cache sampler against HF `generate` and our own full forward."""

import pytest
import torch

from rlhfscale.models import decode_attention
from rlhfscale.models.ladder import build_model
from rlhfscale.models.llama import causal_lm_logits, token_logprobs
from rlhfscale.models.train import left_pad
from rlhfscale.rollout import sampler
from rlhfscale.rollout.sampler import sample, truncate

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def model():
    return build_model("nano", 60, seed=7, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS).eval()


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    return [[BOS, *torch.randint(3, 60, (n,), generator=g).tolist()] for n in (3, 9, 5, 1, 7, 4, 2, 6)]


def greedy(model, prompts, eos_id=EOS, max_new_tokens=12):
    return sample(model, prompts, max_new_tokens=max_new_tokens, temperature=0, eos_id=eos_id, pad_id=PAD)


def an_eos_that_stops_some_rows(model, prompts) -> int:
    """A token greedy decoding emits early in some rows but not in all of them."""
    ids = greedy(model, prompts, eos_id=-1).response_ids
    for token in ids[:, :4].flatten().tolist():
        rows = (ids == token).any(1)
        if 0 < rows.sum() < len(prompts):
            return token
    raise AssertionError("no suitable token in this model's greedy outputs")


def a_batch_to_compact(model, prompts) -> tuple[list[list[int]], int]:
    """Prompts and an EOS id with which half of the rows end at the first token and the others never.

    The sampler then drops the finished half from its batch after one step.
    """
    ids = greedy(model, prompts, eos_id=-1).response_ids
    for row, token in enumerate(ids[:, 0].tolist()):
        others = [prompts[i] for i in range(len(prompts)) if not (ids[i] == token).any()]
        if len(others) >= 2:
            return [prompts[row]] * len(others) + others, token
    raise AssertionError("no suitable token in this model's greedy outputs")


def test_greedy_equals_hf_generate(model, prompts):
    prompts, eos = a_batch_to_compact(model, prompts)
    ours = greedy(model, prompts, eos_id=eos)
    hf = model.generate(
        ours.prompt_ids, attention_mask=ours.prompt_mask, do_sample=False, max_new_tokens=12,
        pad_token_id=PAD, eos_token_id=eos,
    )[:, ours.prompt_ids.shape[1] :]  # fmt: skip
    assert ours.response_ids.shape == hf.shape
    assert torch.equal(ours.response_ids, hf)
    assert ours.response_mask.min() == 0  # EOS did stop some rows


def test_eos_ends_a_row_and_masks_the_rest(model, prompts):
    eos = an_eos_that_stops_some_rows(model, prompts)
    free, stopped = greedy(model, prompts, eos_id=-1), greedy(model, prompts, eos_id=eos)
    for row in range(len(prompts)):
        hits = (free.response_ids[row] == eos).nonzero()
        length = int(hits[0]) + 1 if len(hits) else free.response_ids.shape[1]
        assert stopped.response_lengths[row] == length
        assert torch.equal(stopped.response_ids[row, :length], free.response_ids[row, :length])
        assert (stopped.response_ids[row, length:] == PAD).all() and (stopped.logprobs[row, length:] == 0).all()
        assert stopped.response_mask[row].tolist() == [1] * length + [0] * (stopped.response_ids.shape[1] - length)


def test_loop_stops_when_every_row_has_ended(model, prompts):
    forced = build_model("nano", 60, seed=7)
    with torch.no_grad():  # one hidden unit carries a large constant, and EOS is the token most aligned with it
        forced.model.embed_tokens.weight[:, 0] += 10.0
        forced.model.embed_tokens.weight[EOS, 0] += 10.0
        forced.model.norm.weight[1:] = 0.0
    rollout = sample(forced, prompts, max_new_tokens=12, eos_id=EOS, pad_id=PAD, generator=torch.Generator())
    assert rollout.response_ids.tolist() == [[EOS]] * len(prompts)
    assert rollout.response_mask.tolist() == [[1]] * len(prompts)


def test_batched_rows_equal_rows_sampled_alone(model, prompts):
    prompts, eos = a_batch_to_compact(model, prompts)
    batch = greedy(model, prompts, eos_id=eos)
    for row, prompt in enumerate(prompts):
        alone = greedy(model, [prompt], eos_id=eos)
        n = int(alone.response_lengths[0])
        assert torch.equal(batch.response_ids[row, :n], alone.response_ids[0, :n])
        torch.testing.assert_close(batch.logprobs[row, :n], alone.logprobs[0, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_logprobs_equal_a_full_forward(model, prompts, temperature, top_k, top_p):
    eos = an_eos_that_stops_some_rows(model, prompts)
    rollout = sample(
        model, prompts, max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_id=eos, pad_id=PAD, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    P = rollout.prompt_ids.shape[1]
    full = token_logprobs(model, rollout.sequences, rollout.attention_mask, temperature=temperature or 1.0)
    expected = full[:, P - 1 :] * rollout.response_mask
    assert rollout.logprobs.min() < -1.0
    torch.testing.assert_close(rollout.logprobs, expected, atol=1e-4, rtol=0)


def test_top_k_1_and_tiny_top_p_are_greedy(model, prompts):
    reference = greedy(model, prompts).response_ids
    g = torch.Generator().manual_seed(3)
    for top_k, top_p in [(1, 1.0), (0, 1e-6)]:
        kw = dict(max_new_tokens=12, temperature=1.3, top_k=top_k, top_p=top_p, eos_id=EOS, pad_id=PAD)
        assert torch.equal(sample(model, prompts, generator=g, **kw).response_ids, reference)


def test_same_seed_same_tokens(model, prompts):
    def draw(seed):
        kw = dict(max_new_tokens=12, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(seed))
        return sample(model, prompts, **kw).response_ids

    assert torch.equal(draw(4), draw(4))
    assert not torch.equal(draw(4), draw(5))


def test_top_k_keeps_only_the_k_most_likely(model, prompts):
    g = torch.Generator().manual_seed(2)
    rollout = sample(model, prompts, max_new_tokens=12, top_k=3, eos_id=EOS, pad_id=PAD, generator=g)
    P = rollout.prompt_ids.shape[1]
    logits = causal_lm_logits(model, rollout.sequences, rollout.attention_mask)[:, P - 1 : -1]
    rank = (logits > logits.gather(-1, rollout.response_ids[..., None])).sum(-1)  # 0 = the most likely
    assert rank[rollout.response_mask.bool()].max() == 2


def test_rollout_layout(model, prompts):
    rollout = sample(model, prompts, max_new_tokens=5, eos_id=EOS, pad_id=PAD, generator=torch.Generator())
    lengths = torch.tensor([len(p) for p in prompts])
    assert rollout.prompt_mask.sum(1).tolist() == lengths.tolist()
    assert (rollout.prompt_ids[rollout.prompt_mask == 0] == PAD).all()
    assert rollout.prompt_mask[:, -1].all()  # left padding: every prompt ends in the last column
    width = rollout.prompt_ids.shape[1] + 5
    assert rollout.sequences.shape == rollout.attention_mask.shape == (len(prompts), width)
    (torch.ones(1, requires_grad=True) * rollout.logprobs * rollout.response_mask).sum().backward()  # autograd-ready


def test_left_pad_by_hand():
    """Each row's tokens end in the last column, pads before them; an empty row is all pads."""
    ids, mask = left_pad([[5, 6, 7], [], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]


def test_nucleus_is_the_smallest_set_reaching_top_p():
    logp = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()

    def kept(top_k, top_p):
        return torch.isfinite(truncate(logp, top_k, top_p))[0].tolist()

    assert kept(0, 0.75) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.75
    assert kept(0, 0.85) == [False, True, True, True]
    assert kept(2, 0.85) == [False, True, False, True]  # top-k first, then the nucleus of what is left
    assert kept(3, 0.52) == [False, True, False, False]  # after top-k, 0.5 renormalises to 0.5 / 0.95 > 0.52


def test_the_cache_is_allocated_once_with_room_for_every_fed_token(model, prompts, monkeypatch):
    capacities, decode_step = [], sampler.decode_step

    def spy(model, cache, tokens):
        logits = decode_step(model, cache, tokens)
        capacities.append((cache.capacity, cache.length))
        return logits

    monkeypatch.setattr(sampler, "decode_step", spy)
    greedy(model, prompts, eos_id=-1, max_new_tokens=12)
    P, tile = max(len(p) for p in prompts), decode_attention.TILE if decode_attention.uses_fused("cpu") else 1
    room = -(-(P + 11) // tile) * tile  # the fused kernel's keys: whole tiles of 16 columns
    assert capacities == [(room, P + n) for n in range(1, 12)]  # the 12th token is sampled, never fed


def test_each_distinct_prompt_is_prefilled_once(model, prompts, monkeypatch):
    sizes, real_prefill = [], sampler.prefill

    def counting(m, ids, mask, capacity, *memory, **packs):
        sizes.append(ids.shape[0])
        return real_prefill(m, ids, mask, capacity, *memory, **packs)

    monkeypatch.setattr(sampler, "prefill", counting)
    repeated = [p for p in prompts[:3] for _ in range(4)] + prompts[:1]  # 13 rows, 3 distinct prompts
    rollout = sample(model, repeated, max_new_tokens=6, eos_id=-1, pad_id=PAD, generator=torch.Generator().manual_seed(2))
    assert sizes == [3]
    P = rollout.prompt_ids.shape[1]
    full = token_logprobs(model, rollout.sequences, rollout.attention_mask)[:, P - 1:]
    torch.testing.assert_close(rollout.logprobs, full, atol=1e-4, rtol=0)
    assert len({tuple(r) for r in rollout.response_ids[:4].tolist()}) > 1  # the copies draw independently
