"""Rows shaped as `rlhfscale study run configs/prm-reward.yaml` hands them to the report, with simulated
metrics (the shape of ``study.runner.collect_metrics`` / ``study.commands.analysis_rows``, as in
quickstart_rows: the id ``'<overrides>,seed=<s>'``, the seed, every overridden key at its resolved
value -- ``rl.reward`` a dict, ``rl.prm_mode`` -- the stages' metrics, and one row per RL eval point
with ``curve: 'rl'``; the step-0 point has ``flops/rl`` 0 and the run's final ``rl/*`` values).

The world (``PrmTruth``): a run's final gain over its SFT start is the ORM's gain at its n, plus the
PRM's edge (per policy size) and, for the PRM, its own gain at n; along training the gain is
piecewise linear in log2(step), rising ``early`` per doubling up to the middle eval point and
``late`` after it. pass@1 is Binomial(N, p) / N over ``eval.n_prompts``; a seed's SFT start is
shared by its trials of one policy size.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from quickstart_rows import resolved, trial_id

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prm-reward.yaml"
PARAMS = {"nano": 1.07e5, "micro": 5.25e5}
START = {"nano": 0.30, "micro": 0.40}


@dataclass(frozen=True)
class PrmTruth:
    """True effects (0: none) and the noise."""

    prm_edge: dict = field(default_factory=lambda: {"nano": 0.0, "micro": 0.0})  # PRM minus ORM final gain
    orm_n_gain: dict = field(default_factory=lambda: {2: 0.10, 4: 0.12, 8: 0.12})
    prm_n_gain: dict = field(default_factory=lambda: {2: 0.10, 4: 0.12, 8: 0.12})
    orm_late: float = 0.0  # gain per doubling of steps after the middle eval point
    prm_late: float = 0.0
    early: float = 0.04  # gain per doubling of steps before it
    eval_prompts: int = 100
    seed_sd: float = 0.02
    train_sd: float = 0.02
    point_sd: float = 0.01


DEFAULTS = {"rl.prm_mode": "aggregate", "rm.labels": "mc_hard"}  # resolved values the config leaves out


@functools.cache
def _spec() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _binomial(rng, p: float, n: int) -> float:
    return rng.binomial(n, float(np.clip(p, 0.0, 1.0))) / n


def prm_rows(truth: PrmTruth = PrmTruth(), seeds: int | list[int] | None = None, draw: int = 0) -> list[dict]:
    """Rows of one simulated study of configs/prm-reward.yaml."""
    spec = _spec()
    base, trials = spec["base"], [dict(t) for t in spec["trials"]]
    seeds = spec["seeds"] if seeds is None else list(range(seeds)) if isinstance(seeds, int) else seeds
    axes = list(dict.fromkeys(k for t in trials for k in t))
    steps, every = base["rl"]["steps"], base["rl"]["eval_every"]
    points = list(range(every, steps + 1, every))
    x = np.log2(np.array(points, dtype=float))
    mid = x[min(len(x) // 2, len(x) - 2)]
    rng = np.random.default_rng(draw)
    rows = []
    for seed in seeds:
        starts = {size: START[size] + rng.normal(0, truth.seed_sd) for size in START}
        measured = {size: _binomial(rng, p, truth.eval_prompts) for size, p in starts.items()}
        for overrides in trials:
            get = functools.partial(resolved, base, overrides, defaults=DEFAULTS)
            size, n, reward = get("policy.size"), get("rl.n_samples"), get("rl.reward")
            prm = "prm" in reward
            row = {"trial": trial_id(overrides, seed), "seed": seed, **{k: get(k) for k in axes}}
            row |= {"sft/loss": 0.5, "eval/pass@1": measured[size], "policy/params": PARAMS[size],
                    "flops/sft": 1e13, "policy.params": PARAMS[size], "rm.params": PARAMS["nano"] + 64 * prm,
                    "rm_base/pass@1": 0.3, "sample/responses": 512, "rm/loss": 0.5, "rm/pair_acc": 0.7,
                    "flops/rm": 1e12, "bon/oracle@16": 0.7, "bon/rm@16": 0.5, "flops/bon": 1e11,
                    "eval/pass@1_sft": measured[size]}
            if prm:
                row |= {"rm/step_f1": 0.8, "prm/step_acc": 0.85}
            final = truth.orm_n_gain[n] + (truth.prm_edge[size] + truth.prm_n_gain[n] - truth.orm_n_gain[n]) * prm
            late = truth.prm_late if prm else truth.orm_late
            drift = rng.normal(0, truth.train_sd)
            gain = final + np.where(x >= mid, late * (x - x[-1]), late * (mid - x[-1]) + truth.early * (x - mid))
            curve = [{"step": 0, "eval/pass@1": measured[size], "flops/rl": 0.0}]
            for step, g in zip(points, gain):
                p = starts[size] + g + drift + rng.normal(0, truth.point_sd)
                curve.append({"step": step, "eval/pass@1": _binomial(rng, p, truth.eval_prompts),
                              "flops/rl": 2e11 * n * step, "rl/kl": 0.02 * step, "rl/gold_reward": p,
                              "rl/proxy_reward": 0.1 * step, "rl/reward_std": 0.5})
            last = curve[-1]
            source = "prm" if prm else "orm"
            row |= {"eval/pass@1_before": measured[size], "eval/pass@1_after": last["eval/pass@1"],
                    "eval/pass@1": last["eval/pass@1"], f"rl/reward_{source}": last["rl/proxy_reward"],
                    "rl/diverged": 0.0, **{k: v for k, v in last.items() if k.startswith(("rl/", "flops/"))}}
            for point in curve:
                merged = {**row, "curve": "rl", **point}
                total = sum(merged[k] for k in ("flops/sft", "flops/rm", "flops/rl") if k in merged)
                rows.append({**merged, "flops/total": total})
    return rows


def as_json_rewards(rows: list[dict]) -> list[dict]:
    """The rows with ``rl.reward`` as JSON text (as a CSV round trip would leave it)."""
    return [{**r, "rl.reward": json.dumps(r["rl.reward"])} for r in rows]
