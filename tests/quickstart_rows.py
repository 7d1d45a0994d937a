"""Rows shaped as `rlhfscale study run configs/quickstart.yaml` hands them to the report, with simulated metrics.

The shape mirrors the pipeline (read, not imported, so this helper does not move with it):
``study.runner.collect_metrics`` gives one row per trial and seed -- the id ``'<overrides>,seed=<s>'``,
the seed, every dotted key any trial overrides at the trial's resolved value, the stages' metrics
in pipeline order -- and, for curves, one row per RL eval point over that row, with ``curve: 'rl'``;
``study.commands.analysis_rows`` keeps the curve rows of RL trials and the final rows of the
others and adds ``flops/total``; ``stages.entry`` names the metrics. The step-0 point of a curve
logs no ``flops/rl`` of its own, so it carries the run's final ``flops/rl``, as the pipeline's do.

Metrics are drawn from a ``Truth``: accuracies are Binomial(N, p) / N (pair accuracy a float32, as
torch returns it), p = a configuration's true value + a shared SFT start per seed and policy size
+ Gaussian training noise per run (and per eval point along a curve).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

# The grid the simulated studies run: the quickstart of two seeds and 100 eval prompts as it stood when these
# calibration scenarios were set (configs/quickstart.yaml has since gained the faithful checks' trials, a
# third seed and 400 eval prompts); kept apart so the scenarios' thresholds do not move with the demo's budget.
QUICKSTART = Path(__file__).resolve().parent / "data" / "quickstart_sim.yaml"
CLAIMS = ("rm_data_volume", "prompt_diversity", "samples_plateau", "rm_size_modest", "ppo_vs_grpo",
          "shaping_stability")  # what the quickstart grid tests (no gold rater's over-optimization curves, no
# RL against each RM kind, no RM shared by policy sizes, no SFT curve: those checks run on ``FAITHFUL``)
FAITHFUL_CLAIMS = ("prm_vs_orm", "policy_size", "diminishing_returns")
SHIFT = {"ood": {"name": "arithmetic", "n_ops": 4}}
EXTRA_TRIALS = {  # what each faithful check needs beyond the quickstart's trials
    "prm_vs_orm": [{"rm.enabled": True, "rm.kind": "orm", "rl.reward": {"orm": 1.0}, "eval.tasks": SHIFT},
                   {"rm.enabled": True, "rm.kind": "prm", "rl.reward": {"prm": 1.0}, "eval.tasks": SHIFT}],
    "policy_size": [{"rm.enabled": True, "data.source": "rm_base", "rl.reward": {"orm": 1.0}},
                    {"rm.enabled": True, "data.source": "rm_base", "rl.reward": {"orm": 1.0}, "policy.size": "nano"}],
    "diminishing_returns": [{"sft.steps": 75, "rl.enabled": False}, {"sft.steps": 150, "rl.enabled": False}],
}  # and for samples_fixed_compute, the n sweep at the base's samples per step (``fixed_samples_trials``)
DEFAULTS = {"rl.shaping": "none", "rl.reward": {"rule": 1.0}, "data.source": "policy", "eval.tasks": {},
            "rl.prompts_per_step": 128, "rl.n_samples": 4}
# resolved values of keys the base leaves out
PARAMS = {"nano": 1.1e5, "micro": 5.2e5}
STEPS = (0, 8, 16, 24)
SFT_STEPS = 300  # the quickstart's sft.steps
RL_SPAN = float(np.log2(STEPS[-1] / STEPS[1]))  # doublings of RL compute from the first eval point to the last


@dataclass(frozen=True)
class Truth:
    """The simulated world: every claim's true effect (0: none) and the noise."""

    volume_slope: float = 0.0  # ORM and PRM pair accuracy per doubling of labelled volume
    diversity: float = 0.0  # pair accuracy: most prompts minus fewest at equal volume
    prm_extra_slope: float = 0.0  # PRM minus ORM Best-of-16 slope per doubling
    n_gain: dict = field(default_factory=lambda: {2: 0.10, 4: 0.10, 8: 0.10})  # gain by rl.n_samples
    rm_size_gain: float = 0.0  # micro RM minus nano RM, policy gain
    policy_gap: float = 0.0  # nano policy's gain minus micro's
    ppo_minus_grpo: float = 0.0
    shaping_gain: float = 0.0  # pass@1, shaped minus none
    shaping_log_std: float = 0.0  # log reward std, none minus shaped
    concavity: float = 0.0  # curve slope per doubling of RL compute at its start minus at its end
    prm_rl_edge: float = 0.0  # PRM- minus ORM-rewarded policy's pass@1 on the targeted task
    prm_ood_loss: float = 0.0  # ORM- minus PRM-rewarded policy's pass@1 on the shifted task
    sft_minus_rl: float = 0.0  # SFT pass@1 per doubling of SFT steps minus the base RL curve's per doubling
    budget_n_gain: dict | None = None  # gain by rl.n_samples of trials that change rl.prompts_per_step with it
    # (at the base's samples per step; the base's n keeps n_gain's value); None: n_gain's
    eval_prompts: int = 100
    heldout_pairs: int = 96
    bon_prompts: int = 32
    seed_sd: float = 0.02  # SFT start, shared by a seed's trials of one policy size
    train_sd: float = 0.02  # per run
    point_sd: float = 0.01  # per eval point along a curve


@functools.cache
def _spec() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def _base(key: str):
    """The quickstart base's resolved value of ``key``."""
    return resolved(_spec()["base"], {}, key)


def fixed_samples_trials() -> list[dict]:
    """n halved and doubled at the base's samples per step (prompts per step doubled and halved): the n sweep of
    the reviewers, beside the quickstart's at a fixed prompts per step."""
    n, prompts = _base("rl.n_samples"), _base("rl.prompts_per_step")
    return [{"rl.n_samples": n // 2, "rl.prompts_per_step": prompts * 2},
            {"rl.n_samples": n * 2, "rl.prompts_per_step": prompts // 2}]


def quickstart_trials() -> tuple[dict, list[int], list[dict]]:
    """(base, seeds, per-trial overrides) of configs/quickstart.yaml."""
    spec = copy.deepcopy(_spec())
    return spec["base"], spec["seeds"], [dict(t) for t in spec["trials"]]


def resolved(base: dict, overrides: dict, key: str, defaults: dict = DEFAULTS):
    """A trial's value of dotted ``key``: its override, else the base's, else ``defaults``' (None if absent)."""
    if key in overrides:
        return overrides[key]
    node = base
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return defaults.get(key)
        node = node[part]
    return node


def trial_id(overrides: dict, seed: int) -> str:
    text = [f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(',', ':'))}"
            for k, v in overrides.items()]
    return ",".join(text + [f"seed={seed}"])


def _binomial(rng, p: float, n: int) -> float:
    return rng.binomial(n, float(np.clip(p, 0.0, 1.0))) / n


class _Sim:
    """One draw of every trial's metrics under a Truth."""

    def __init__(self, truth: Truth, rng: np.random.Generator) -> None:
        self.t, self.rng = truth, rng
        self.starts: dict[tuple, tuple[float, float]] = {}
        self.shared_rms: dict[tuple, dict] = {}

    def start(self, seed: int, size: str, steps: int = SFT_STEPS, label: str = "") -> tuple[float, float]:
        """(true, measured) SFT accuracy of a seed, policy size and SFT length (on the task ``label`` names, '' the
        targeted one): one SFT run, shared by its trials; SFT gains the base RL curve's slope per doubling of its
        steps, plus ``sft_minus_rl``."""
        if (seed, size, steps, label) not in self.starts:
            if steps != SFT_STEPS:
                true = self.start(seed, size, SFT_STEPS, label)[0]
                true += (self.t.n_gain[4] / RL_SPAN + self.t.sft_minus_rl) * np.log2(steps / SFT_STEPS)
            else:
                true = {"micro": 0.30, "nano": 0.20}[size] - 0.15 * bool(label) + self.rng.normal(0, self.t.seed_sd)
            self.starts[seed, size, steps, label] = (true, _binomial(self.rng, true, self.t.eval_prompts))
        return self.starts[seed, size, steps, label]

    def rm_metrics(self, seed: int, get) -> dict:
        """An RM's metrics; one RM per seed and RM setting where its data come from rm_base (shared by policies)."""
        if get("data.source") != "rm_base":
            return self._rm_metrics(get)
        key = (seed, *(json.dumps(get(k)) for k in ("rm.kind", "rm.size", "data.prompts", "data.responses_per_prompt")))
        if key not in self.shared_rms:
            self.shared_rms[key] = self._rm_metrics(get)
        return self.shared_rms[key]

    def _rm_metrics(self, get) -> dict:
        t, kind = self.t, get("rm.kind")
        prompts, rpp = get("data.prompts"), get("data.responses_per_prompt")
        doublings = np.log2(prompts * rpp / 256)
        diversity = t.diversity * (np.log2(prompts / 32) / 2 - 0.5)  # +-d/2 at 128 x 4 and 32 x 16
        acc = 0.65 + t.volume_slope * doublings + diversity + self.rng.normal(0, t.train_sd)
        bon = 0.35 + (t.volume_slope + t.prm_extra_slope * (kind == "prm")) * doublings
        size = 0.0 if get("rm.size") == "nano" else 0.05
        n_pairs = t.heldout_pairs
        pair = float(np.float32(self.rng.binomial(n_pairs, np.clip(acc + size, 0, 1)) / n_pairs))
        return {"rm.params": PARAMS[get("rm.size")], "rm_base/pass@1": 0.3, "sample/responses": prompts * rpp,
                "rm/loss": 0.6, "rm/pair_acc": pair, "rm/heldout_pairs": float(n_pairs), "rm/pairs": prompts * rpp,
                "flops/rm": 1e12 * prompts * rpp,
                "bon/oracle@16": 0.6, "bon/rm@16": _binomial(self.rng, bon + size + self.rng.normal(0, t.train_sd),
                                                              t.bon_prompts), "flops/bon": 1e12}

    def gain(self, get) -> float:
        t = self.t
        moved = get("rl.prompts_per_step") != _base("rl.prompts_per_step")
        gain = (t.budget_n_gain if moved and t.budget_n_gain is not None else t.n_gain)[get("rl.n_samples")]
        gain += t.ppo_minus_grpo * (get("rl.algorithm") == "ppo")
        gain += t.shaping_gain * (get("rl.shaping") != "none")
        gain += t.policy_gap * (get("policy.size") == "nano")
        if "orm" in get("rl.reward"):
            gain += t.rm_size_gain * (get("rm.size") == "micro")
        return gain + t.prm_rl_edge * ("prm" in get("rl.reward"))

    def curve(self, start: float, gain: float, n: int, prompts: float = 1.0) -> list[dict]:
        """Eval points at STEPS: the gain rises linearly in log2 RL compute, bent by the concavity; the compute of
        a step grows with the samples it draws (n x ``prompts``, the prompts per step relative to the base's)."""
        t, flops_per_step = self.t, 2e11 * n * prompts
        x = np.log2(np.array(STEPS[1:], float) / STEPS[-1])  # doublings before the end: -1.58, -0.58, 0
        span = x.max() - x.min()
        bend = -t.concavity / (2 * span) * (x - x.min()) * (x - x.max())  # 0 at both ends; early minus late slope = c
        frac = 1 + x / span
        drift = self.rng.normal(0, t.train_sd)
        points = [{"step": 0}]
        for step, f, b in zip(STEPS[1:], frac, bend):
            p = start + (gain + drift) * f + b + self.rng.normal(0, t.point_sd)
            points.append({"step": step, "eval/pass@1": _binomial(self.rng, p, t.eval_prompts),
                           "flops/rl": step * flops_per_step, "rl/kl": 0.01 * step})
        return points

    def rl_metrics(self, seed: int, get) -> tuple[dict, list[dict]]:
        t = self.t
        true_start, before = self.start(seed, get("policy.size"))
        prompts = get("rl.prompts_per_step") / _base("rl.prompts_per_step")
        points = self.curve(true_start, self.gain(get), get("rl.n_samples"), prompts)
        points[0]["eval/pass@1"] = before
        log_std = np.log(0.2) - t.shaping_log_std * (get("rl.shaping") != "none") + self.rng.normal(0, 0.1)
        after = points[-1]["eval/pass@1"]
        summary = {"eval/pass@1_before": before, "eval/pass@1_after": after, "rl/reward_std": float(np.exp(log_std)),
                   "rl/kl": points[-1]["rl/kl"], "flops/rl": points[-1]["flops/rl"], "eval/pass@1": after}
        for label in get("eval.tasks") or {}:  # as stages.rl logs eval.tasks: at the start and the end of the curve
            true, measured = self.start(seed, get("policy.size"), label=label)
            moved = 0.05 - t.prm_ood_loss * ("prm" in get("rl.reward")) + self.rng.normal(0, t.train_sd)
            shifted = _binomial(self.rng, true + moved, t.eval_prompts)
            points[0][f"eval/pass@1_{label}"], points[-1][f"eval/pass@1_{label}"] = measured, shifted
            summary |= {f"eval/pass@1_{label}_before": measured, f"eval/pass@1_{label}_after": shifted,
                        f"eval/pass@1_{label}": shifted}
        return summary, points


def faithful_trials(*checks: str) -> list[dict]:
    """The quickstart's trials plus those ``EXTRA_TRIALS`` names for ``checks`` (the three faithful ones by default)."""
    extra = {**EXTRA_TRIALS, "samples_fixed_compute": fixed_samples_trials()}
    return quickstart_trials()[2] + [t for c in (checks or FAITHFUL_CLAIMS) for t in extra[c]]


def quickstart_rows(truth: Truth = Truth(), seeds: int | list[int] | None = None, draw: int = 0,
                    trials: list[dict] | None = None) -> list[dict]:
    """Rows of one simulated quickstart study (its seeds, or ``seeds`` seeds; ``trials`` override the grid)."""
    base, spec_seeds, spec_trials = quickstart_trials()
    trials = spec_trials if trials is None else trials
    seeds = spec_seeds if seeds is None else list(range(seeds)) if isinstance(seeds, int) else seeds
    axes = list(dict.fromkeys(k for o in trials for k in o))
    sim = _Sim(truth, np.random.default_rng(draw))
    rows = []
    for overrides in trials:
        for seed in seeds:
            get = lambda key, o=overrides: resolved(base, o, key)  # noqa: E731
            size, sft_steps = get("policy.size"), get("sft.steps")
            row = {"trial": trial_id(overrides, seed), "seed": seed, **{k: get(k) for k in axes}}
            row |= {"sft/loss": 0.5, "eval/pass@1": sim.start(seed, size, sft_steps)[1], "policy/params": PARAMS[size],
                    "flops/sft": 1e13 * PARAMS[size] / 1e5 * sft_steps / SFT_STEPS, "policy.params": PARAMS[size]}
            if get("rm.enabled"):
                row |= sim.rm_metrics(seed, get) | {"eval/pass@1_sft": row["eval/pass@1"]}
            if not get("rl.enabled"):
                rows.append(_with_total(row))
                continue
            summary, points = sim.rl_metrics(seed, get)
            row |= summary
            rows.extend(_with_total({**row, "curve": "rl", **point}) for point in points)
    return rows


def _with_total(row: dict) -> dict:
    parts = [row[k] for k in ("flops/sft", "flops/sample", "flops/label", "flops/rm", "flops/rl") if k in row]
    return {**row, "flops/total": sum(parts)}
