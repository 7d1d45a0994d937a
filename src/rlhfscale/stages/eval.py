"""Stage `eval`: held-out pass@1, pass@k and maj@k of a policy (input ``rl``: a run directory or a policy
folder; `rlhfscale eval --policy` pins it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ..contract import view
from ..pipeline import STAGES
from ..rollout.evaluate import evaluate
from ..tasks import make_task
from .common import input_policy, max_new_tokens, setup
from .rundir import RunDir


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path) -> dict[str, float]:
    cfg = view(STAGES["eval"], cfg)
    task = setup(cfg)
    policy, tok = input_policy(cfg, inputs["rl"])
    out = RunDir(out_dir, cfg)
    test = task.examples("test", cfg.eval.n_prompts)
    metrics = evaluate(policy, tok, task, test, max_new_tokens=max_new_tokens(cfg, task), k=cfg.eval.k,
                       temperature=cfg.sampling.temperature, seed=cfg.seed)
    for label, task_config in cfg.eval.tasks.items():
        other = make_task(task_config)
        metrics[f"eval/pass@1_{label}"] = evaluate(policy, tok, other, other.examples("test", cfg.eval.n_prompts),
                                                   max_new_tokens=max_new_tokens(cfg, other))["eval/pass@1"]
    out.log(0, **metrics)
    summary = {**metrics, "wall_s": out.wall_s}
    out.write_summary(summary)
    out.close()
    return summary
