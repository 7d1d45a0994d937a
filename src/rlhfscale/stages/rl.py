"""Stage `rl`: optimize the SFT policy against a reward, with held-out pass@1 before, during and after."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..models.io import save_policy
from ..models.ladder import count_non_embedding
from ..rl.trainer import NonFiniteError, outcome_token_rewards, train
from ..rollout.evaluate import evaluate
from .common import max_new_tokens, policy_from, setup
from .rundir import Progress, RunDir


def rule_reward(task):
    """The verifier as a reward: 1 for a correct final answer, 0 otherwise, on the last token."""

    def reward_fn(examples, responses, rollout):
        scores = torch.tensor([task.score(e, r) for e, r in zip(examples, responses)])
        scores = scores.to(rollout.response_mask.device)
        return outcome_token_rewards(scores, rollout.response_mask.float()), {"rl/gold_reward": scores.mean().item()}

    return reward_fn


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    task = setup(cfg)
    policy, tok = policy_from(cfg, Path(inputs["sft"]) / "policy" if "sft" in inputs else None)
    out = RunDir(out_dir, cfg)
    budget = max_new_tokens(cfg, task)
    test = task.examples("test", cfg.eval.n_prompts)
    prompts = task.examples("train", cfg.rl.n_train_prompts)

    before = evaluate(policy, tok, task, test, max_new_tokens=budget)["eval/pass@1"]
    out.log(0, **{"eval/pass@1": before})
    n_params = count_non_embedding(policy)
    flops, last = 0.0, {}
    bar = Progress(cfg.rl.steps, f"rl:{cfg.rl.algorithm}")

    def on_step(step: int, info: dict) -> None:
        nonlocal flops, last
        seq_tokens = info["rl/gen_tokens"]  # response tokens; prompts are short and counted below
        flops += (2 + 6 + (2 if cfg.rl.kl_coef > 0 else 0)) * n_params * seq_tokens
        info["flops/rl"] = flops
        if cfg.rl.eval_every and step % cfg.rl.eval_every == 0 and step < cfg.rl.steps:
            info["eval/pass@1"] = evaluate(policy, tok, task, test, max_new_tokens=budget)["eval/pass@1"]
        last = out.log(step, **info)
        bar.advance(f"reward {info['rl/reward']:.3f}")

    try:
        train(policy, tok, prompts, rule_reward(task), cfg, max_new_tokens=budget, on_step=on_step)
    finally:
        bar.close()
    save_policy(policy, tok, out.path / "policy")
    after = evaluate(policy, tok, task, test, max_new_tokens=budget, k=cfg.eval.k, seed=cfg.seed)
    out.log(cfg.rl.steps, **{"eval/pass@1": after["eval/pass@1"], "flops/rl": flops})
    summary = {
        "eval/pass@1_before": before,
        "eval/pass@1_after": after["eval/pass@1"],
        **{k: v for k, v in after.items() if k != "eval/pass@1"},
        **{k: v for k, v in last.items() if k.startswith("rl/")},
        "flops/rl": flops,
        "wall_s": out.wall_s,
    }
    out.write_summary(summary)
    out.close()
    return summary
