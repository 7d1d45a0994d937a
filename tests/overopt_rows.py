"""Rows shaped as `rlhfscale study run configs/overoptimization.yaml` hands them to the report, with
simulated metrics (the shape read from a real run of that config; not imported from the pipeline).

Per trial and seed (``study.runner.collect_metrics`` / ``study.commands.analysis_rows``): the id
``'<overrides>,seed=<s>'``, the seed, the axes the trials override (``data.prompts``, ``rm.size``) at
their resolved values, every stage's metrics (sft, rm_base, sample, label, rm, bon with
``bon/orm@N`` / ``bon/orm_proxy@N`` / ``bon/oracle@N`` for N = 1 ... 64, rl's summary: its last
step's ``rl/*`` values, ``rl/reward_orm`` among them), and one row per point of the RL curve
(``rl.eval_every: 1``) with ``curve: 'rl'``: step 0 (pass@1 before, ``flops/rl`` 0; it carries the
summary's ``rl/kl``, gold and proxy), steps 1 ... S-1 (KL, gold and proxy reward of that step's
batch; step 1 samples the initial policy: KL 0), and step S (pass@1 after; the summary's values).

The world (``Gold``): a gold gain g(d) at d = sqrt(KL) for each method, the same for every proxy RM
up to a random tilt per curve (that RM's quality), a seed's SFT start shared by its trials (and its
Best-of-N pool: noise along N is a random walk, as a pool's picks are nested), RL batches' noise
independent across steps, KL growing as step^1.5 at a random rate per curve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from quickstart_rows import trial_id

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "overoptimization.yaml"
PARAMS = {"nano": 106880.0, "micro": 525056.0}


def flat(d: np.ndarray) -> np.ndarray:
    return np.zeros_like(np.asarray(d, dtype=float))


@dataclass(frozen=True)
class Gold:
    """True gold gains against d = sqrt(KL) and the noise."""

    bon: Callable[[np.ndarray], np.ndarray] = flat
    rl: Callable[[np.ndarray], np.ndarray] = flat
    tilt_sd: float = 0.01  # per curve: gold per unit d (one proxy RM and seed differs from the next)
    bon_step_sd: float = 0.002  # random-walk increments of a pool's curve along N
    rl_point_sd: float = 0.015  # one RL batch's mean gold (128 responses)
    seed_sd: float = 0.03  # the SFT start, shared by a seed's trials
    kl_rate: float = 0.12  # KL at step s: rate * (s - 1)^1.5, the rate log-normal per curve


def peaked_bon(d):
    return d * (0.10 - 0.05 * d)  # Gao's Best-of-N form: peak 0.05 at d = 1


def peaked_rl(d):
    d = np.asarray(d, dtype=float)  # Gao's RL form: peak 0.012 at d = exp(-1/2) = 0.61, far below Best-of-N's
    return 0.01 * d - 0.02 * np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


KNEE = float(np.sqrt(np.log(4) - 3 / 4))  # d of Best-of-4: a Best-of-N point, so interpolation is exact


def plateau(d):
    return 0.05 * np.minimum(np.asarray(d, dtype=float), KNEE)  # rises, then flat: never falls


@functools.cache
def _spec() -> dict:
    return yaml.safe_load(CONFIG.read_text())


NS = tuple(2**i for i in range(_spec()["base"]["bon"]["n_max"].bit_length()))  # 1, 2, 4, ..., n_max
RL_STEPS = _spec()["base"]["rl"]["steps"]


def _resolved(base: dict, overrides: dict, key: str):
    if key in overrides:
        return overrides[key]
    node = base
    for part in key.split("."):
        node = node[part]
    return node


def overopt_rows(gold: Gold = Gold(), seeds: int | list[int] | None = None, draw: int = 0,
                 trials: list[dict] | None = None) -> list[dict]:
    """Rows of one simulated study of configs/overoptimization.yaml (its seeds, or ``seeds``)."""
    spec = _spec()
    base, trials = spec["base"], [dict(t) for t in (spec["trials"] if trials is None else trials)]
    seeds = spec["seeds"] if seeds is None else list(range(seeds)) if isinstance(seeds, int) else seeds
    axes = list(dict.fromkeys(k for t in trials for k in t))
    rng = np.random.default_rng(draw)
    d_bon = np.sqrt(np.log(NS) - (np.array(NS) - 1) / np.array(NS))
    rows = []
    for seed in seeds:
        start = 0.40 + rng.normal(0, gold.seed_sd)  # the SFT policy's mean gold (sampled)
        pool_walk = np.cumsum(np.r_[0.0, rng.normal(0, gold.bon_step_sd, len(NS) - 1)])  # shared by the seed's RMs
        for overrides in trials:
            get = functools.partial(_resolved, base, overrides)
            prompts, size = get("data.prompts"), get("rm.size")
            row = {"trial": trial_id(overrides, seed), "seed": seed, **{k: get(k) for k in axes}}
            before = round(start * 288) / 288  # greedy pass@1 of the chat task: gold over 32 prompts x 9 slots
            row |= {"sft/loss": 0.9, "eval/pass@1": before, "policy/params": 106880, "flops/sft": 2.0e12,
                    "wall_s": 100.0, "policy.params": 106880}
            row |= {"rm.params": PARAMS[size], "rm_base/pass@1": before, "sample/responses": prompts * 4,
                    "flops/sample": 0.0, "label/pairs": prompts * 5, "label/outcomes": prompts * 4,
                    "rm/loss": 0.4, "rm/pair_acc": float(np.float32(0.6 + 0.05 * np.log2(prompts / 32) / 4)),
                    "rm/pairs": prompts * 5, "rm/outcomes": 0, "rm/step_responses": 0, "rm/params": PARAMS[size],
                    "rm/init_from_policy": 1.0, "flops/rm": 3.0e12}
            tilt = rng.normal(0, gold.tilt_sd)
            walk = pool_walk + np.cumsum(np.r_[0.0, rng.normal(0, gold.bon_step_sd, len(NS) - 1)])
            bon = start + gold.bon(d_bon) + tilt * d_bon + walk
            proxy_start = rng.normal(0.0, 0.3)
            bon_proxy = proxy_start + 1.2 * d_bon + rng.normal(0, 0.01, len(NS))
            oracle = start + 0.25 * d_bon / d_bon[-1]
            row |= {f"bon/oracle@{n}": float(v) for n, v in zip(NS, oracle)}
            row |= {f"bon/orm@{n}": float(v) for n, v in zip(NS, bon)}
            row |= {f"bon/orm_proxy@{n}": float(v) for n, v in zip(NS, bon_proxy)}
            row |= {"orm/pair_acc": 0.6, "bon/pool_score": float(bon[0]), "flops/bon": 1.0e11,
                    "bon/rm@16": float(bon[NS.index(16)]), "eval/pass@1_sft": before}
            rate = gold.kl_rate * np.exp(rng.normal(0, 0.3))
            points = []
            for step in range(1, RL_STEPS + 1):
                kl = rate * (step - 1) ** 1.5
                d = np.sqrt(kl)
                points.append({
                    "step": step, "eval/pass@1": round((start + 0.5 * gold.rl(d) + rng.normal(0, 0.01)) * 288) / 288,
                    "flops/rl": 1.9e10 * step, "rl/kl": float(kl + abs(rng.normal(0, 1e-12))),
                    "rl/gold_reward": float(start + gold.rl(d) + tilt * d + rng.normal(0, gold.rl_point_sd)),
                    "rl/proxy_reward": float(proxy_start + 0.8 * d + rng.normal(0, 0.1)),
                    "rl/reward_std": 0.9})
            for point in points:
                point["rl/reward"] = point["rl/proxy_reward"]
            last = points[-1]
            after = last["eval/pass@1"]
            summary = {"eval/pass@1_before": before, "eval/pass@1_after": after, "eval/pass@1": after,
                       "rl/reward_orm": last["rl/proxy_reward"], "rl/kl_coef": 0.0, "rl/entropy": 1.0,
                       "rl/response_len": 20.0, "rl/diverged": 0.0, "wall_s": 45.0,
                       **{k: v for k, v in last.items() if k.startswith(("rl/", "flops/"))}}
            row |= summary
            curve = [{"step": 0, "eval/pass@1": before, "flops/rl": 0.0}]
            curve += [p for p in points[:-1]] + [{"step": RL_STEPS, "eval/pass@1": after, "flops/rl": last["flops/rl"]}]
            for point in curve:
                merged = {**row, "curve": "rl", **point}
                parts = [merged[k] for k in ("flops/sft", "flops/sample", "flops/label", "flops/rm", "flops/rl")
                         if k in merged]
                rows.append({**merged, "flops/total": sum(parts)})
    return rows
