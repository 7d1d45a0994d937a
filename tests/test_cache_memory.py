"""The KV caches' memory kept between rollouts (`models.cache_memory`): lent to one rollout at a time, taken once
per lend, and invisible in what the sampler draws."""

import pytest
import torch

from rlhfscale.models import decode_attention, kernels
from rlhfscale.models.cache_memory import CacheMemory
from rlhfscale.models.ladder import build_model
from rlhfscale.rollout import sampler


def test_one_block_lent_to_one_body_at_a_time_and_taken_once():
    memory = CacheMemory()
    with memory.lend() as lent:
        block = lent.take(1000)
        assert block.numel() == 1000 and memory.nbytes == 1000
        again = lent.take(10)  # a second cache in the same body: fresh memory, not the block
        assert again.data_ptr() != block.data_ptr()
        with memory.lend() as nested:
            assert nested is None  # the block is out
    with memory.lend() as lent:
        assert lent.take(400).data_ptr() == block.data_ptr()  # the same block again, large enough
    with memory.lend() as lent:
        assert lent.take(4000).numel() == 4000 and memory.nbytes == 4000  # grown
    memory.release()
    assert memory.nbytes == 0


def test_a_take_outside_a_lend_gets_fresh_memory():
    memory = CacheMemory()
    assert memory.take(64).numel() == 64 and memory.nbytes == 0


@pytest.mark.skipif(not decode_attention.fused_available(), reason="the fused kernel could not be built")
@pytest.mark.parametrize("n", [1, 3], ids=["distinct-prompts", "3-samples-a-prompt"])
def test_the_sampler_decodes_in_the_kept_memory_and_draws_the_same(n, monkeypatch):
    """A rollout in memory that an earlier one left full of NaN (every byte 0xFF) draws what it draws in fresh
    memory (the prompts' pads are zeroed, the columns past them never read); its cache lies in the kept block."""
    model = build_model("nano", 60, seed=7, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    g = torch.Generator().manual_seed(0)
    first = [[1, *torch.randint(3, 60, (k,), generator=g).tolist()] for k in (9, 3, 7, 5)]
    second = [p for p in [[1, 4, 5], [1, 6], [1, 7, 8, 9, 10]] for _ in range(n)]  # shorter: stale columns behind

    def draw(prompts, memory):
        monkeypatch.setattr(sampler, "CACHE_MEMORY", memory)
        return sampler.sample(model, prompts, max_new_tokens=8, eos_id=-1, pad_id=0,
                              generator=torch.Generator().manual_seed(3))

    kept = CacheMemory()
    draw(first, kept)
    with torch.inference_mode():  # (the sampler's, where the block was allocated)
        kept._block.fill_(255)
    block = kept.take(1)  # outside a lend: fresh, so `kept` is unchanged
    addresses, decode_step = [], sampler.decode_step
    monkeypatch.setattr(sampler, "decode_step", lambda m, cache, t: addresses.append(cache.k.data_ptr()) or
                        decode_step(m, cache, t))
    reused = draw(second, kept)
    start = kept._block.data_ptr()
    assert block.data_ptr() != start and all(start <= a < start + kept.nbytes for a in addresses)
    fresh = draw(second, CacheMemory())
    assert torch.equal(reused.response_ids, fresh.response_ids) and torch.equal(reused.logprobs, fresh.logprobs)


@pytest.mark.skipif(not decode_attention.fused_available(), reason="the fused kernel could not be built")
def test_a_rollout_after_an_update_packs_the_new_weights_into_the_kept_buffers(monkeypatch):
    """The packed weights kept from the last rollout are filled again from the model: after a change of the
    weights in place (an optimizer step), the rollout draws what it draws with nothing kept."""
    monkeypatch.setattr(kernels, "MIN_MACS", 0)  # every product through the packed weights
    model = build_model("nano", 60, seed=7, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    prompts = [p for p in [[1, 4, 5], [1, 6], [1, 7, 8, 9, 10]] for _ in range(4)]

    def draw(memory):
        monkeypatch.setattr(sampler, "CACHE_MEMORY", memory)
        return sampler.sample(model, prompts, max_new_tokens=8, eos_id=-1, pad_id=0,
                              generator=torch.Generator().manual_seed(3))

    kept = CacheMemory()
    draw(kept)
    buffers = {id(entry[1]) for entry in kept.packs.values()}
    assert len(buffers) == len(kept.packs) > 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.5)
    after = draw(kept)
    assert {id(entry[1]) for entry in kept.packs.values()} == buffers  # the same buffers, filled again
    fresh = draw(CacheMemory())
    assert torch.equal(after.response_ids, fresh.response_ids) and torch.equal(after.logprobs, fresh.logprobs)
    kept.release()
    assert not kept.packs
