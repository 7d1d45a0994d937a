"""Stage `rl`: optimize the SFT policy against a reward, with held-out pass@1 before, during and after.

Inputs: ``sft`` (a run directory whose ``policy/`` is the starting policy) and,
optionally, ``rm`` (a reward-model run directory whose ``rm/`` is the ORM or PRM
the reward sources read when ``rl.orm_path`` / ``rl.prm_path`` are unset). A
NaN or inf in a reward or loss stops the run: ``policy/`` then holds the last
good weights and the error (naming the step and the quantity) is re-raised.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import RunConfig
from ..models.critic import critic_from_policy, critic_from_rm
from ..models.io import save_policy
from ..rewards.sources import build_reward, rm_path
from ..rl.trainer import NonFiniteError, train
from ..rollout.evaluate import evaluate
from .common import max_new_tokens, policy_from, setup
from .rundir import Progress, RunDir


def make_critic(cfg: RunConfig, policy, rm_run: str | None):
    """The PPO critic (None for the critic-free algorithms), from the policy or from the ORM."""
    if cfg.rl.algorithm != "ppo":
        return None
    if cfg.rl.critic_init == "rm":
        return critic_from_rm(rm_path(cfg.rl, "orm", rm_run), cfg.device)
    return critic_from_policy(policy)


def note_batch_baseline(cfg: RunConfig) -> None:
    """Say once that with one response per prompt the group methods use the batch as the group."""
    if cfg.rl.n_samples == 1 and cfg.rl.algorithm in ("grpo", "rloo"):
        print(f"note: rl.n_samples=1 forms no groups; {cfg.rl.algorithm} uses the batch mean as the baseline",
              file=sys.stderr)


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    task = setup(cfg)
    policy, tok = policy_from(cfg, Path(inputs["sft"]) / "policy" if "sft" in inputs else None)
    reward = build_reward(cfg.rl, task, tok, cfg.device, inputs.get("rm"))
    critic = make_critic(cfg, policy, inputs.get("rm"))
    out = RunDir(out_dir, cfg)
    budget = max_new_tokens(cfg, task)
    test = task.examples("test", cfg.eval.n_prompts)
    prompts = task.examples("train", cfg.rl.n_train_prompts)
    note_batch_baseline(cfg)

    def held_out(k: int = 0) -> dict[str, float]:
        return evaluate(policy, tok, task, test, max_new_tokens=budget, k=k, seed=cfg.seed)

    before = held_out(cfg.eval.k)
    out.log(0, **before)
    last: dict = {}
    bar = Progress(cfg.rl.steps, f"rl:{cfg.rl.algorithm}")

    def on_step(step: int, info: dict) -> None:
        nonlocal last
        if cfg.rl.eval_every and step % cfg.rl.eval_every == 0 and step < cfg.rl.steps:
            info.update(held_out())
        last = out.log(step, **info)
        bar.advance(f"reward {info['rl/reward']:.3f} gold {info['rl/gold_reward']:.3f}")

    try:
        train(policy, tok, prompts, reward, cfg, max_new_tokens=budget, critic=critic, reward_params=reward.params,
              on_step=on_step)
    except NonFiniteError as e:
        save_policy(policy, tok, out.path / "policy")  # the update that would have used the bad value never ran
        out.log(last.get("step", 0) + 1, error=str(e))
        out.close()
        raise
    finally:
        bar.close()
    save_policy(policy, tok, out.path / "policy")
    after = held_out(cfg.eval.k)
    out.log(cfg.rl.steps, **after, **{"flops/rl": last.get("flops/rl", 0.0)})
    summary = {
        **{f"{k}_before": v for k, v in before.items()},
        **{f"{k}_after": v for k, v in after.items()},
        **{k: v for k, v in last.items() if k.startswith(("rl/", "flops/"))},
        "wall_s": out.wall_s,
    }
    out.write_summary(summary)
    out.close()
    return summary
