"""RL against a trained preference reward model, in the chat world and on the prefs task (prompts from preference
files, no verifier): the hidden gold rater's score rises though the policy only ever sees the RM's.

One set-up for every test (module fixture): a nano policy SFT'd on chat to a weak start (150 steps), its samples to
256 training prompts (8 each) labelled by gold preferences, and a nano ORM trained on those pairs from the policy's
backbone (200 steps). The label stage writes its pairs as ``{"prompt", "chosen", "rejected"}`` lines, the TRL /
UltraFeedback string shape, so the same files are the prefs task's train and test files. "Held-out gold" is the
hidden rater's mean score of 4 sampled responses to each of 64 test prompts, measured here, outside the run.

Measured with seeds 0 / 1 for the whole set-up (1 thread; RM held-out pair accuracy 0.83 / 0.79), KL coefficient 0.3,
64 prompts x 4 a step:
- chat, GRPO, 20 steps: RM score (rl/proxy_reward) 0.78 -> 1.90 / 1.80 -> 2.81 (first 2 steps -> last 5);
  rl/gold_reward 0.274 -> 0.325 / 0.336 -> 0.348; held-out gold 0.273 -> 0.328 / 0.319 -> 0.367;
- prefs, 12 steps, held-out gold: GRPO 0.273 -> 0.302 / 0.319 -> 0.362; PPO 0.273 -> 0.330 / 0.319 -> 0.346.
With KL coefficient 0.1 the seed-1 run over-optimizes the RM (Gao et al. 2022): the RM score climbs to 3.1 while
held-out gold falls 0.319 -> 0.308 (seed 0: 0.273 -> 0.337). Greedy gold (eval/pass@1 for chat) is a poor yardstick
here: greedy responses of these policies degenerate, and it moves by +-0.1 whatever happens to the sampled gold.
"""

import json

import pytest

from rlhfscale.config import RunConfig, merge
from rlhfscale.models.io import load_policy
from rlhfscale.rollout.evaluate import generate
from rlhfscale.stages import label, rl, rm, sample, sft
from rlhfscale.tasks.chat import ChatTask

BASE = {
    "task": {"name": "chat"}, "policy": {"size": "nano", "max_len": 128}, "sampling": {"max_new_tokens": 40},
    "sft": {"steps": 150, "batch_size": 32, "lr": 3e-3, "n_examples": 2000},
    "data": {"source": "policy", "prompts": 256, "responses_per_prompt": 8, "heldout_prompts": 64, "mc_rollouts": 0,
             "rater_temperature": 0.0},
    "rm": {"size": "nano", "steps": 200, "lr": 1e-3},
    "eval": {"n_prompts": 64, "k": 1},
    "rl": {"reward": {"rule": 0, "orm": 1}, "kl_coef": 0.3, "bf16": True, "steps": 20, "prompts_per_step": 64,
           "eval_every": 0},
}


def config(**sections) -> RunConfig:
    return RunConfig.model_validate(merge(BASE, sections))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """SFT (weak start) -> its samples -> gold-labelled pairs -> an ORM from the SFT backbone."""
    root = tmp_path_factory.mktemp("prefs")
    cfg = config()
    sft.run(cfg, {}, root / "sft")
    sample.run(cfg, {"sft": str(root / "sft")}, root / "sample")
    label.run(cfg, {"sample": str(root / "sample")}, root / "label")
    summary = rm.run(cfg, {"label": str(root / "label"), "rm_base": str(root / "sft")}, root / "rm")
    assert summary["rm/pair_acc"] > 0.7, summary  # held-out pairs of the same policy's samples
    return root


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def sampled_gold(policy_dir, n_prompts=64, n=4) -> float:
    """The hidden chat rater's mean score of sampled responses to held-out chat prompts."""
    task = ChatTask()
    examples = task.examples("test", n_prompts)
    model, tok = load_policy(policy_dir, "cpu")
    responses = generate(model, tok, [e.prompt for e in examples], n=n, max_new_tokens=40, seed=123)
    return mean(task.score(e, r) for e, rs in zip(examples, responses) for r in rs)


def test_chat_grpo_against_a_trained_rm_raises_the_gold_raters_score(world, tmp_path):
    summary = rl.run(config(), {"sft": str(world / "sft"), "rm": str(world / "rm")}, tmp_path)
    steps = [r for r in rows(tmp_path) if "rl/gold_reward" in r]
    early, late = mean(r["rl/gold_reward"] for r in steps[:2]), mean(r["rl/gold_reward"] for r in steps[-5:])
    proxy_early = mean(r["rl/proxy_reward"] for r in steps[:2])
    proxy_late = mean(r["rl/proxy_reward"] for r in steps[-5:])
    assert proxy_late > proxy_early + 0.5, (proxy_early, proxy_late)  # the RM's score, which RL climbs
    assert late > early, (early, late)  # the gold rater, logged beside it, does not fall behind
    before, after = sampled_gold(world / "sft" / "policy"), sampled_gold(tmp_path / "policy")
    assert after > before + 0.025, (before, after)  # and rises on held-out prompts
    assert summary["rl/reward_orm"] == pytest.approx(steps[-1]["rl/reward_orm"])


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_prefs_task_rl_against_a_trained_rm_logs_no_gold_and_raises_the_hidden_raters_score(world, tmp_path,
                                                                                             algorithm):
    files = {"train_path": str(world / "label" / "pairs.jsonl"),
             "test_path": str(world / "label" / "heldout_pairs.jsonl")}
    cfg = config(task={"name": "prefs", **files}, rl={"algorithm": algorithm, "steps": 12},
                 eval={"tasks": {"chat": {"name": "chat"}}})
    summary = rl.run(cfg, {"sft": str(world / "sft"), "rm": str(world / "rm")}, tmp_path / "rl")
    logged = rows(tmp_path / "rl")
    assert not any(k.startswith("rl/gold") or (k.startswith("eval/") and "_chat" not in k)
                   for row in logged + [summary] for k in row)  # no verifier: no gold score, no pass@1 of its own
    assert {"eval/pass@1_chat_before", "eval/pass@1_chat_after"} <= set(summary)  # the chat world's rater
    steps = [r for r in logged if "rl/proxy_reward" in r]
    assert mean(r["rl/proxy_reward"] for r in steps[-3:]) > mean(r["rl/proxy_reward"] for r in steps[:2]) + 0.3
    before, after = sampled_gold(world / "sft" / "policy"), sampled_gold(tmp_path / "rl" / "policy")
    assert after > before + 0.02, (before, after)
