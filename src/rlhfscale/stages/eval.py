"""Stage `eval`: held-out pass@1, pass@k and maj@k of a policy checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..rollout.evaluate import evaluate
from .common import max_new_tokens, policy_from, setup
from .rundir import RunDir


def run(cfg: RunConfig, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    task = setup(cfg)
    policy, tok = policy_from(cfg, inputs.get("policy"))
    out = RunDir(out_dir, cfg)
    test = task.examples("test", cfg.eval.n_prompts)
    metrics = evaluate(policy, tok, task, test, max_new_tokens=max_new_tokens(cfg, task), k=cfg.eval.k,
                       temperature=cfg.sampling.temperature or 1.0, seed=cfg.seed)
    out.log(0, **metrics)
    summary = {**metrics, "wall_s": out.wall_s}
    out.write_summary(summary)
    out.close()
    return summary
