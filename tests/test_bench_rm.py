"""The reference figure of `bench rm`: a causal LM's log-likelihood of a response given its prompt."""

import json

import pytest
import torch

from rlhfscale.bench.rm import loglik_pair_accuracy, response_loglik
from rlhfscale.models.io import new_policy, save_policy


def test_response_loglik_matches_one_unpadded_forward_per_example():
    policy, tok = new_policy("nano", 0, 64)
    prompts, responses = ["1+2=?\n", "what is 12-3?\n", "q\n"], ["1+2=3\nanswer: 3", "answer: 9", "x"]
    ours = response_loglik(policy, tok, prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_ids = tok(p, add_special_tokens=False).input_ids
        ids = torch.tensor([p_ids + tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]])
        with torch.no_grad():
            logp = policy(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert ours[i].item() == pytest.approx(logp[len(p_ids) - 1:].sum().item(), abs=1e-4)


def test_loglik_pair_accuracy_counts_the_pairs_whose_chosen_is_likelier(tmp_path):
    policy, tok = new_policy("nano", 0, 64)
    save_policy(policy, tok, tmp_path / "lm")
    prompts, a, b = ["1+2=?\n"] * 3, ["3", "answer: 3", "12"], ["4", "answer: 33", "1"]
    la, lb = response_loglik(policy, tok, prompts, a), response_loglik(policy, tok, prompts, b)
    pairs = [{"prompt": p, "chosen": x, "rejected": y} for p, x, y in zip(prompts, a, b)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in pairs))
    assert loglik_pair_accuracy(tmp_path / "lm", path) == pytest.approx((la > lb).float().mean().item())
