"""The shared-prompt forward against the full forward of the concatenated rows."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfscale.models import llama, shared_prefix
from rlhfscale.models.critic import critic_from_policy, response_values, token_values
from rlhfscale.models.ladder import build_model

P, R = 6, 5


def gqa_model():
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=40, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def ladder_model():
    return build_model("nano", 40, seed=1).eval()


def rl_batch(seed: int = 0):
    """7 rows: 3 distinct left-padded prompts, repeated out of order, and right-padded responses."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 40, (3, P), generator=g)
    pm = torch.ones(3, P, dtype=torch.long)
    pm[0, :2], pm[2, :1] = 0, 0
    rows = torch.tensor([0, 0, 1, 2, 2, 1, 0])
    prompt_ids, prompt_mask = prompts[rows].masked_fill(pm[rows] == 0, 0), pm[rows]
    prompt_ids[1, 0] = 7  # a pad's id must not matter: rows 0 and 1 are still the same prompt
    response_ids = torch.randint(3, 40, (7, R), generator=g)
    response_mask = torch.ones(7, R, dtype=torch.long)
    response_mask[1, 3:], response_mask[4, 1:] = 0, 0
    return prompt_ids, prompt_mask, response_ids.masked_fill(response_mask == 0, 0), response_mask


def full(prompt_ids, prompt_mask, response_ids, response_mask):
    return torch.cat((prompt_ids, response_ids), 1), torch.cat((prompt_mask, response_mask), 1)


def test_distinct_prompts_map_every_row_to_its_prompt():
    prompt_ids, prompt_mask, _, _ = rl_batch()
    ids_u, mask_u, inverse = shared_prefix.distinct_prompts(prompt_ids, prompt_mask)
    assert len(ids_u) == 3
    real = prompt_mask.bool()
    assert torch.equal(mask_u[inverse], prompt_mask)
    assert torch.equal(ids_u[inverse][real], prompt_ids[real])
    assert inverse.tolist() == [0, 0, 1, 2, 2, 1, 0]  # in the order the prompts first appear


@pytest.mark.parametrize("make", [ladder_model, gqa_model], ids=["ladder", "gqa-untied"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_equal_the_full_forward(make, temperature):
    model, batch = make(), rl_batch()
    ids, attn = full(*batch)
    want_lp, want_ent = llama.token_logprobs(model, ids, attn, temperature=temperature, with_entropy=True)
    lp, ent = shared_prefix.response_logprobs(model, *batch, temperature=temperature, with_entropy=True)
    real = batch[3].bool()
    assert lp.shape == ent.shape == (7, R) and lp[real].min() < -1.0
    torch.testing.assert_close(lp[real], want_lp[:, P - 1:][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[real], want_ent[:, P - 1:][real], atol=1e-5, rtol=0)


def test_gradients_equal_the_full_forward():
    model, batch = gqa_model(), rl_batch(seed=3)
    ids, attn = full(*batch)
    weights = torch.randn(7, R, generator=torch.Generator().manual_seed(4)) * batch[3]
    (llama.token_logprobs(model, ids, attn)[:, P - 1:] * weights).sum().backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (shared_prefix.response_logprobs(model, *batch) * weights).sum().backward()
    for name, p in model.named_parameters():
        assert want[name].abs().max() > 0, name
        torch.testing.assert_close(p.grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_response_states_are_the_critic_values_of_the_full_forward():
    critic, batch = critic_from_policy(ladder_model()), rl_batch(seed=5)
    torch.nn.init.normal_(critic.score.weight)
    ids, attn = full(*batch)
    want = token_values(critic, ids, attn)[:, P - 1:-1]
    got = response_values(critic, ids, attn, prompt_len=P)
    real = batch[3].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)


def test_distinct_prompts_without_repeats_is_the_identity():
    prompt_ids, prompt_mask, _, _ = rl_batch()
    ids_u, mask_u, inverse = shared_prefix.distinct_prompts(prompt_ids[[0, 2, 3]], prompt_mask[[0, 2, 3]])
    assert torch.equal(ids_u, prompt_ids[[0, 2, 3]]) and torch.equal(mask_u, prompt_mask[[0, 2, 3]])
    assert torch.equal(inverse, torch.arange(3))
