"""What every claim check shares: the ``Claim`` record, smallest effects of interest, titles, the
reasons a check cannot run, and the per-``check_all`` cache of final points and shared tables.

The checks live in ``claims_rm`` (reward-model data, PRM vs ORM, RM size), ``claims_samples`` (samples per
prompt, at a fixed prompts per step and at a fixed samples per step), ``claims_rl`` (policy size, PPO vs GRPO,
shaping, returns to compute), ``claims_gao`` (over-optimization, Gao et al. 2022) and ``claims_prm`` (a PRM as
the RL reward); ``claims`` holds the registry.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlhfscale.analysis.stats import ALPHA, Estimate, directional
from rlhfscale.analysis.table import (
    AXES, POLICY_PARAMS, POLICY_SIZE, RM_KIND, RM_PARAMS, RM_SIZE, TASK, final_points, has, levels,
)

_SHARED: list[tuple[weakref.ref, pd.DataFrame | None, dict]] = []  # check_all's table, its final points, a cache
VERDICTS = ("supported", "not supported", "inconclusive", "not tested")
SESOI = {  # smallest effect of interest, in each effect's units
    "rm_data_volume": 0.01,  # RM accuracy per doubling of labelled volume
    "prompt_diversity": 0.02,  # RM accuracy, most prompts minus fewest at equal volume
    "prm_vs_orm": 0.02,  # PRM- minus ORM-rewarded policy's pass@1, targeted task (and ORM minus PRM, shifted)
    "samples_plateau": 0.01,  # gain per doubling of n, early rise and early-minus-late drop
    "samples_fixed_compute": 0.01,  # gain per doubling of n at a fixed number of samples per RL step
    "rm_size_modest": 0.05,  # pass@1 gain of the largest RM over the smallest: "modest" within +-0.05
    "policy_size": 0.02,  # smallest minus largest policy's pass@1 gain (the paper: 4.4 vs 1.9 points)
    "ppo_vs_grpo": 0.05,  # PPO minus GRPO final pass@1: "similar" within +-0.05
    "shaping_stability": 0.02,  # the headline indicator's (STABILITY lists each indicator's own)
    "diminishing_returns": 0.01,  # pass@1 per doubling of SFT compute minus per doubling of RL compute
    "overoptimization_peak": 0.01,  # gold change over half the sqrt(KL) range: the rise, then the fall
    "rl_kl_cost": 0.01,  # Best-of-N minus RL gold gain at equal KL
    "prm_reward": 0.02,  # PRM- minus ORM-rewarded pass@1 (and that gap, largest minus smallest policy)
    "prm_reward_samples": 0.01,  # gain per doubling of n from the middle to the largest n, PRM minus ORM reward
    "prm_reward_training": 0.01,  # pass@1 per doubling of RL steps in the later half of training, PRM minus ORM
}
PART_SESOI = {  # of the parts that are not a claim's headline effect
    "prm_vs_orm_shifted": 0.02,  # ORM- minus PRM-rewarded policy's pass@1 on a shifted task
    "prm_vs_orm_slope": 0.01,  # PRM minus ORM Best-of-16 slope per doubling of labelled volume
    "policy_size_rel": 0.05,  # smallest minus largest policy's gain relative to its start (gain / before)
}
EQUIVALENCE = ("rm_size_modest", "ppo_vs_grpo")  # claims of a small difference, tested by TOST
RM_CONTEXT = (RM_KIND, RM_SIZE, RM_PARAMS, TASK)
ORDER = "_order"
REWARD = "_reward"  # orm | prm_aggregate | prm_dense: the one learned RM an RL run was rewarded by
SIDE = "_reward_side"  # orm | prm

@dataclass(frozen=True)
class Claim:
    """One finding checked on the grid; ``plot`` names its PNG once drawn.

    ``ci_low`` / ``ci_high`` bound the interval the verdict reads (95 %, or Bonferroni-widened where
    the detail says so), always inside ``range_low`` / ``range_high``, the values the effect can take
    given the metric's range; ``min_detectable`` is the smallest effect (for a similarity claim,
    margin) the grid would establish 80 % of the time; ``se`` and ``df`` are the interval's t
    ingredients and ``basis`` what they rest on.
    """

    id: str
    title: str
    verdict: str
    effect: float
    ci_low: float
    ci_high: float
    n_seeds: int
    detail: str
    smallest_effect_of_interest: float = np.nan
    min_detectable: float = np.nan
    se: float = np.nan
    df: float = np.nan
    basis: str = ""
    range_low: float = np.nan
    range_high: float = np.nan
    plot: str | None = None
    fits: dict | None = None  # fitted curves with their intervals, where the check fits any


def untested_reason(
    table: pd.DataFrame, factors: list[str], metrics: list[str], needs: dict[str, set[str]] | None = None
) -> str | None:
    """Why a check cannot run: a factor absent or constant, a metric not recorded,
    or a factor lacking the levels ``needs`` names."""
    for factor in factors:
        if not has(table, factor):
            return f"the grid has no '{factor}' axis"
        if levels(table, factor) < 2:
            return f"the grid holds '{factor}' at one value"
    missing = [m for m in metrics if not has(table, m)]
    if missing:
        return f"metric '{missing[0]}' was not recorded"
    for factor, wanted in (needs or {}).items():
        if not wanted <= (found := set(table[factor].dropna())):
            return f"'{factor}' needs {sorted(wanted)}, found {sorted(found)}"
    return None


def pick(table: pd.DataFrame, *candidates: str) -> str:
    """The first candidate metric the table records (else the first named)."""
    return next((c for c in candidates if has(table, c)), candidates[0])


def held_fixed(table: pd.DataFrame, varied: tuple[str, ...]) -> list[str]:
    """Every recorded axis except the varied ones: what a cell holds fixed."""
    return [a for a in AXES if a not in varied and has(table, a)]


def make_claim(claim_id: str, est: Estimate, outcome: str, detail: str, *, alpha: float = ALPHA,
           sesoi: float | None = None, fits: dict | None = None) -> Claim:
    if est.n_seeds == 0:
        return not_tested(claim_id, f"{est.basis}; {detail}")
    sesoi = SESOI[claim_id] if sesoi is None else sesoi
    low, high = est.interval(alpha)
    mde = est.min_detectable(equivalence=claim_id in EQUIVALENCE, alpha=alpha)
    detail += (f"; smallest effect of interest {sesoi:.3g}, smallest the grid detects (80% power) {mde:.3g}"
               if np.isfinite(mde) else f"; smallest effect of interest {sesoi:.3g}")
    return Claim(claim_id, TITLES[claim_id], outcome, est.value, low, high, est.n_seeds, detail,
                 sesoi, mde, est.se, est.df, est.basis, est.lower, est.upper, fits=fits)


def not_tested(claim_id: str, reason: str) -> Claim:
    return Claim(claim_id, TITLES[claim_id], "not tested", np.nan, np.nan, np.nan, 0, reason,
                 SESOI[claim_id])


def with_size_order(table: pd.DataFrame, size: str, params: str) -> pd.DataFrame:
    """The final points with a numeric ``_order`` column ranking model sizes."""
    final = shared_final_points(table)
    order = final[params] if has(final, params) else pd.to_numeric(final[size], errors="coerce")
    return final.assign(**{ORDER: order})


def size_reason(table: pd.DataFrame, size: str, params: str, metrics: list[str]) -> str | None:
    axis = params if has(table, params) else size
    if reason := untested_reason(table, [axis], metrics):
        return reason
    if not has(table, params) and pd.to_numeric(table[size], errors="coerce").isna().any():
        return f"'{size}' names cannot be ordered by scale; record '{params}'"
    return None


def policy_axis(table: pd.DataFrame) -> str:
    """The column that orders policy sizes: ``policy.params`` where recorded, else ``policy.size``."""
    return POLICY_PARAMS if has(table, POLICY_PARAMS) else POLICY_SIZE


def both_hold(*verdicts: str) -> str:
    """Supported when every part is, not supported when any part is not (an intersection-union test)."""
    found = set(verdicts)
    return ("not supported" if "not supported" in found else
            "supported" if found == {"supported"} else "inconclusive")


def all_parts(parts: list[tuple[Estimate, float]], alpha: float = ALPHA) -> str:
    """The verdict of a claim made of several directional parts (each ``(estimate, sesoi)``).

    Supported when every part's (1 - alpha) interval lies above 0 (an intersection-union test: the
    claim's false "supported" rate is at most any one part's); not supported when some part's
    interval at (1 - alpha / k) lies below its SESOI (Bonferroni over the k parts, so a true effect at
    every SESOI is called negligible at most alpha / 2 of the time); else inconclusive.
    """
    k = len(parts)
    if any(directional(est, sesoi, alpha / k) == "not supported" for est, sesoi in parts):
        return "not supported"
    return "supported" if all(directional(est, sesoi, alpha) == "supported" for est, sesoi in parts) else \
        "inconclusive"

def cached(table: pd.DataFrame, key: str, compute: Callable[[], object]):
    """``compute()``, once per ``check_all`` call on ``table``."""
    if not (_SHARED and _SHARED[0][0]() is table):
        return compute()
    cache = _SHARED[0][2]
    if key not in cache:
        cache[key] = compute()
    return cache[key]


TITLES = {
    "rm_data_volume": "More labelled data (prompts x responses) improves the reward model",
    "prompt_diversity": "At equal budget, more prompts beat more responses per prompt",
    "prm_vs_orm": "Process supervision is stronger on the targeted task (and scales better with data) but "
                  "generalizes worse than outcome supervision",
    "samples_plateau": "More samples per prompt in RL help at first, then plateau (prompts per step fixed, as the "
                       "paper swept them)",
    "samples_fixed_compute": "More samples per prompt in RL help at a fixed compute per step (samples per step "
                             "fixed: fewer prompts for more samples)",
    "rm_size_modest": "A larger reward model gives modest policy gains",
    "policy_size": "A larger policy gains less from RLHF with one reward model shared by every size",
    "ppo_vs_grpo": "PPO and GRPO reach similar final accuracy",
    "shaping_stability": "Reward normalization and asymmetric shrinking help stability",
    "diminishing_returns": "RLHF gains less per doubling of compute than SFT on the same model",
    "overoptimization_peak": "Gold reward peaks, then falls as the proxy reward model is optimized (Gao et al. 2022)",
    "rl_kl_cost": "RL spends more KL than Best-of-N for the same gold gain (Gao et al. 2022)",
    "prm_reward": "As the RL reward, a PRM beats an ORM, more so for larger policies",
    "prm_reward_samples": "With a PRM reward more samples per prompt keep helping, where they plateau with an ORM",
    "prm_reward_training": "Along training a PRM-rewarded policy keeps improving while an ORM-rewarded one plateaus",
}


def shared_final_points(table: pd.DataFrame) -> pd.DataFrame:
    """``final_points(table)``, shared by the checks of one ``check_all`` call (never modified in place)."""
    if _SHARED and _SHARED[0][0]() is table:
        if _SHARED[0][1] is None:
            _SHARED[0] = (_SHARED[0][0], final_points(table), _SHARED[0][2])
        return _SHARED[0][1]
    return final_points(table)
