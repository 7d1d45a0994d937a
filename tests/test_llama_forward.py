"""Our Llama forward against the HF one it reads its weights from."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhfscale.errors import BadInput
from rlhfscale.models import decode_attention, kv_cache, llama
from rlhfscale.models.ladder import build_model


def gqa_config(**overrides) -> LlamaConfig:
    """Grouped-query attention, untied lm_head, non-default θ and eps: what the ladder does not cover."""
    args = dict(
        vocab_size=50, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    return LlamaConfig(**(args | overrides))


def padded_batch(vocab: int, seed: int = 0):
    """Rows with left pads, right pads, both, and none: ids, mask [4, 10]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, 7:] = 0
    mask[2, :2] = 0
    mask[2, 8:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def hf_logits(model, ids, mask):
    """HF logits with the positions HF generate uses for padded rows."""
    return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


def ladder_model():
    torch.manual_seed(0)
    return build_model("nano", 60, seed=3).eval()


def gqa_model(**overrides):
    torch.manual_seed(1)
    return LlamaForCausalLM(gqa_config(**overrides)).eval()


@pytest.mark.parametrize("make", [ladder_model, gqa_model], ids=["ladder", "gqa-untied"])
def test_logits_match_hf_on_real_tokens(make):
    model = make()
    ids, mask = padded_batch(model.config.vocab_size)
    ours, ref = llama.causal_lm_logits(model, ids, mask), hf_logits(model, ids, mask)
    real = mask.bool()
    assert ref[real].abs().max() > 0.05  # the comparison is not between near-zero numbers
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)


def test_padding_does_not_change_real_tokens():
    model = gqa_model()
    ids, mask = padded_batch(model.config.vocab_size)
    batch = llama.causal_lm_logits(model, ids, mask)
    for row in range(ids.shape[0]):
        real = mask[row].bool()
        alone = llama.causal_lm_logits(model, ids[row, real][None], mask[row, real][None])[0]
        torch.testing.assert_close(batch[row, real], alone, atol=1e-5, rtol=0)


SCALED_ROPE = {
    "llama3": dict(rope_type="llama3", rope_theta=500.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=4),
    "yarn": dict(rope_type="yarn", rope_theta=500.0, factor=4.0, original_max_position_embeddings=16),
}  # fmt: skip


@pytest.mark.parametrize("rope", SCALED_ROPE.values(), ids=SCALED_ROPE.keys())
def test_scaled_rope_matches_hf(rope):
    model = gqa_model(rope_parameters=rope, max_position_embeddings=64)
    ids, mask = padded_batch(model.config.vocab_size)
    real = mask.bool()
    ours, ref = llama.causal_lm_logits(model, ids, mask)[real], hf_logits(model, ids, mask)[real]
    plain = llama.causal_lm_logits(gqa_model(), ids, mask)[real]
    assert (ref - plain).abs().max() > 1e-3  # the scaling matters
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_dynamic_rope_is_refused():
    model = gqa_model(rope_parameters=dict(rope_type="dynamic", rope_theta=500.0, factor=2.0))
    ids, mask = padded_batch(model.config.vocab_size)
    with pytest.raises(BadInput, match="dynamic"):
        llama.causal_lm_logits(model, ids, mask)


def test_gradients_flow_into_the_hf_parameters():
    model = gqa_model()
    ids, mask = padded_batch(model.config.vocab_size)
    weights = torch.randn(*ids.shape, model.config.vocab_size, generator=torch.Generator().manual_seed(5))
    real = mask.bool()[..., None]
    (llama.causal_lm_logits(model, ids, mask) * weights * real).sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (hf_logits(model, ids, mask) * weights * real).sum().backward()
    for name, p in model.named_parameters():
        assert ours[name].abs().max() > 0, name
        torch.testing.assert_close(ours[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_token_logprobs_and_entropy():
    model = ladder_model()
    ids, mask = padded_batch(model.config.vocab_size)
    logits = hf_logits(model, ids, mask)[:, :-1]
    real = (mask[:, :-1] * mask[:, 1:]).bool()  # a real token predicted from a real one
    for temperature in (1.0, 0.5):
        lp, ent = llama.token_logprobs(model, ids, mask, temperature=temperature, with_entropy=True)
        logp = (logits / temperature).log_softmax(-1)
        assert lp.shape == ent.shape == (4, 9)
        torch.testing.assert_close(lp[real], logp.gather(-1, ids[:, 1:, None])[..., 0][real], atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[real], -(logp.exp() * logp).sum(-1)[real], atol=1e-5, rtol=0)
    assert (ent > 0).all() and (ent < torch.log(torch.tensor(60.0))).all()


def test_backbone_of_a_sequence_classifier():
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(gqa_config(num_labels=1)).eval()
    ids, mask = padded_batch(model.config.vocab_size)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(llama.hidden_states(model.model, ids, mask)[real], ref[real], atol=1e-5, rtol=0)


def test_autocast_runs_in_bfloat16_close_to_float32():
    model = gqa_model()
    ids, mask = padded_batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = llama.causal_lm_logits(model, ids, mask)
    assert low.dtype == torch.bfloat16
    real = mask.bool()
    full = llama.causal_lm_logits(model, ids, mask)
    assert (low.float() - full)[real].abs().max() < 0.05 * full[real].abs().max()


def use_attention(fused: bool, monkeypatch) -> None:
    """Decode with the fused kernel (the test skipped where it could not be built) or with the eager ops."""
    if not fused:
        monkeypatch.setattr(decode_attention, "fused_available", lambda: False)
    elif not decode_attention.fused_available():
        pytest.skip("the fused kernel could not be built")


@pytest.mark.parametrize("make", [ladder_model, gqa_model], ids=["ladder", "gqa-untied"])
@pytest.mark.parametrize("prefill_tokens", [4096, 12], ids=["one-group", "groups-of-2-rows"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused-attention", "eager-attention"])
def test_prefill_then_decode_equals_full_forward(make, prefill_tokens, fused, monkeypatch):
    """Either attention (the fused kernel, which also leaves the unwritten cache columns unfilled, or the eager ops
    over a zero-filled cache), prompts prefilled in one group or several."""
    monkeypatch.setattr(kv_cache, "PREFILL_TOKENS", prefill_tokens)
    use_attention(fused, monkeypatch)
    model = make()
    ids, mask = padded_batch(model.config.vocab_size)
    prompt, rest = ids[[0, 2, 3], :6], ids[[0, 2, 3], 6:]  # left-padded prompts, 4 more tokens each
    prompt_mask = mask[[0, 2, 3], :6]
    with torch.inference_mode():
        logits, cache = kv_cache.prefill(model, prompt, prompt_mask, capacity=6)  # full: the first step doubles it
        steps = [logits]
        for t in range(rest.shape[1] - 1):
            steps.append(kv_cache.decode_step(model, cache, rest[:, t]))
        full = llama.causal_lm_logits(model, ids[[0, 2, 3]], torch.cat((prompt_mask, torch.ones_like(rest)), 1))
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:9], atol=1e-5, rtol=0)
    assert cache.length == 9 and cache.positions.tolist() == [5, 7, 9]
    assert cache.capacity == (16 if fused else 12)  # the fused kernel's keys: whole tiles of 16 columns


@pytest.mark.parametrize("fused", [True, False], ids=["fused-attention", "eager-attention"])
def test_a_full_cache_doubles_and_keeps_what_it_holds(fused, monkeypatch):
    """Prompts of 6 columns and 14 more tokens in a cache of capacity 6: rounded up to one tile of 16 columns
    (fused kernel), which doubles once, or doubling from 6 to 24 (eager ops); either way the full forward's
    logits."""
    use_attention(fused, monkeypatch)
    model = ladder_model()
    ids, mask = padded_batch(model.config.vocab_size)
    rest = torch.randint(3, model.config.vocab_size, (4, 14), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        logits, cache = kv_cache.prefill(model, ids[:, :6], mask[:, :6], capacity=6)
        assert cache.capacity == (16 if fused else 6)
        steps = [logits] + [kv_cache.decode_step(model, cache, rest[:, t]) for t in range(13)]
        full = llama.causal_lm_logits(model, torch.cat((ids[:, :6], rest), 1),
                                      torch.cat((mask[:, :6], torch.ones_like(rest)), 1))
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:19], atol=1e-5, rtol=0)
    assert cache.length == 19 and cache.capacity == (32 if fused else 24)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-attention", "eager-attention"])
def test_prefill_of_prompts_ending_anywhere_equals_full_forward(fused, monkeypatch):
    """Rows with right pads: not every prompt ends in the last column, so the last layer runs every token (with
    left padding it computes the last tokens' states only); the logits at each last real token are the same."""
    use_attention(fused, monkeypatch)
    model = gqa_model()
    ids, mask = padded_batch(model.config.vocab_size)
    with torch.inference_mode():
        logits, _ = kv_cache.prefill(model, ids, mask, capacity=10)
        full = llama.causal_lm_logits(model, ids, mask)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # each row's last real column: 9, 6, 7, 9
    assert last.tolist() == [9, 6, 7, 9]
    torch.testing.assert_close(logits, full[torch.arange(4), last], atol=1e-5, rtol=0)


def test_decode_step_builds_the_rope_table_of_a_cache_made_without_one():
    model = gqa_model()
    ids, mask = padded_batch(model.config.vocab_size)
    prompt, prompt_mask, nxt = ids[[0, 3], :6], mask[[0, 3], :6], ids[[0, 3], 6]
    with torch.inference_mode():
        _, cache = kv_cache.prefill(model, prompt, prompt_mask, capacity=8)
        bare = kv_cache.KVCache(cache.k.clone(), cache.v.clone(), cache.mask.clone(), cache.positions.clone(),
                                cache.length)
        torch.testing.assert_close(kv_cache.decode_step(model, bare, nxt), kv_cache.decode_step(model, cache, nxt))
