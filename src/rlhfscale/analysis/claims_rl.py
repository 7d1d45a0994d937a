"""Claim checks on policy optimization: samples per prompt, policy size, PPO vs GRPO, reward shaping,
and RL's returns to compute (findings 4, 6, 7, 8 and the shaping switches of Hou et al. 2024)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from rlhfscale.analysis.claim_base import (
    ORDER, SESOI, Claim, held_fixed, make_claim, not_tested, pick, shared_final_points, size_reason,
    untested_reason, with_size_order,
)
from rlhfscale.analysis.effects import (
    ByLevel, concavity, difference, early, early_minus_late, estimate, first_minus_last, last_minus_first,
    others_minus,
)
from rlhfscale.analysis.fits import fit_log_linear
from rlhfscale.analysis.stats import ALPHA, Estimate, directional, equivalent
from rlhfscale.analysis.table import (
    DIVERGED, FLOPS_RL, FLOPS_SFT, GAIN, GAIN_REL, PASS, PASS_BEFORE, POLICY_PARAMS, POLICY_SIZE, REWARD_STD,
    RL_ALGORITHM, RL_LR, RL_N_SAMPLES, RL_SHAPING, STEP, TRIAL, has, levels,
)

LOG_STD = "_log_reward_std"
STABILITY = (  # (column, sign that makes "shaping helps" positive, smallest effect of interest, label)
    (PASS, 1.0, 0.02, f"final {PASS}, shaped minus none"),
    (DIVERGED, -1.0, 0.10, "divergence rate, none minus shaped"),
    (LOG_STD, -1.0, float(np.log(1.25)), f"log {REWARD_STD}, none minus shaped"),
)


def samples_plateau(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [RL_N_SAMPLES], [metric]):
        return not_tested("samples_plateau", reason)
    if levels(table, RL_N_SAMPLES) < 3:
        return not_tested("samples_plateau", f"a plateau needs three values of '{RL_N_SAMPLES}'")
    final = shared_final_points(table)
    fixed = held_fixed(final, (RL_N_SAMPLES, RL_LR))
    rise = estimate(final, fixed, ByLevel(RL_N_SAMPLES, early), metric)
    drop = estimate(final, fixed, ByLevel(RL_N_SAMPLES, early_minus_late), metric)
    sesoi = SESOI["samples_plateau"]
    verdicts = {directional(rise, sesoi), directional(drop, sesoi)}
    plateau = ("not supported" if "not supported" in verdicts else
               "supported" if verdicts == {"supported"} else "inconclusive")
    lr = f"pooled over {RL_LR} {sorted(final[RL_LR].dropna().unique())}" if has(final, RL_LR) else "no lr axis"
    detail = (f"{metric} per doubling of n, smallest to middle n: {rise}; "
              f"how much less it rises from middle to largest n (effect): {drop}; both must exceed 0, "
              f"either below the smallest effect of interest is not supported; {lr}")
    return make_claim("samples_plateau", drop, plateau, detail)


def _across_starts(final: pd.DataFrame, fixed: list[str], gap: Estimate) -> Estimate:
    """The gain gap with the noise of pass@1 and of the starting accuracy, each from its own model:
    policy sizes start from different SFT runs, whose accuracies do not cancel as they do in a seed."""
    if not (has(final, PASS) and has(final, PASS_BEFORE)):
        return gap
    after = estimate(final, fixed, ByLevel(ORDER, first_minus_last), PASS)
    start = estimate(final, fixed, ByLevel(ORDER, first_minus_last), PASS_BEFORE)
    if not (np.isfinite(after.se) and np.isfinite(start.se)):
        return gap
    return replace(after.with_noise_of(start), value=gap.value, lower=gap.lower, upper=gap.upper,
                   basis=f"{after.basis}; plus the starting accuracy's noise")


def policy_size(table: pd.DataFrame) -> Claim:
    if reason := size_reason(table, POLICY_SIZE, POLICY_PARAMS, [GAIN]):
        return not_tested("policy_size", reason)
    final = with_size_order(table, POLICY_SIZE, POLICY_PARAMS)
    fixed = held_fixed(final, (POLICY_SIZE, POLICY_PARAMS, RL_LR))  # lr is often tuned per size
    gap = _across_starts(final, fixed, estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN))
    detail = f"smallest minus largest policy, absolute {GAIN}: {gap}"
    if has(final, GAIN_REL):
        rel = estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN_REL)
        detail += f"; relative to the starting accuracy ({GAIN_REL}): {rel}"
    if has(final, PASS_BEFORE):
        start = estimate(final, fixed, ByLevel(ORDER, last_minus_first), PASS_BEFORE)
        detail += f"; largest minus smallest starting accuracy: {start}"
    return make_claim("policy_size", gap, directional(gap, SESOI["policy_size"]), detail)


def ppo_vs_grpo(table: pd.DataFrame) -> Claim:
    if reason := untested_reason(table, [RL_ALGORITHM], [PASS], {RL_ALGORITHM: {"ppo", "grpo"}}):
        return not_tested("ppo_vs_grpo", reason)
    final = shared_final_points(table)
    est = estimate(final, held_fixed(final, (RL_ALGORITHM, RL_LR)), ByLevel(RL_ALGORITHM, difference("ppo", "grpo")),
                   PASS)
    margin = SESOI["ppo_vs_grpo"]
    detail = f"PPO minus GRPO final {PASS}: {est}; similar = interval within +-{margin:g}"
    return make_claim("ppo_vs_grpo", est, equivalent(est, margin), detail)


def _stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Final points with log reward std; divergence dropped when no run diverged (it tells nothing apart)."""
    final = shared_final_points(table)
    if has(final, REWARD_STD):
        final = final.assign(**{LOG_STD: np.log(final[REWARD_STD].where(final[REWARD_STD] > 0))})
    if has(final, DIVERGED) and not final[DIVERGED].any():
        final = final.drop(columns=DIVERGED)
    return final


def shaping_stability(table: pd.DataFrame) -> Claim:
    """Supported when an indicator improves (Bonferroni over indicators) and none worsens; not supported
    when every indicator's improvement is below its smallest effect of interest, or one worsens and none improves."""
    final = _stability_table(table)
    indicators = [row for row in STABILITY if has(final, row[0])]
    if reason := untested_reason(table, [RL_SHAPING], [] if indicators else [PASS], {RL_SHAPING: {"none"}}):
        return not_tested("shaping_stability", reason)
    fixed = held_fixed(final, (RL_SHAPING,))
    ests = [(label, sesoi, estimate(final, fixed, ByLevel(RL_SHAPING, others_minus("none"), sign), m))
            for m, sign, sesoi, label in indicators]
    alpha = ALPHA / len(ests)
    negligible = [directional(e, sesoi) == "not supported" for _, sesoi, e in ests]
    better = [i for i, (_, _, e) in enumerate(ests) if e.interval(alpha)[0] > 0 and not negligible[i]]
    worse = [i for i, (_, _, e) in enumerate(ests) if e.interval(alpha)[1] < 0]
    outcome = ("supported" if better and not worse else
               "not supported" if all(negligible) or (worse and not better) else "inconclusive")
    label, sesoi, headline = ests[(better or worse or [0])[0]]
    variants = sorted(set(final[RL_SHAPING].dropna()) - {"none"})
    detail = (f"shaping {variants} vs none, positive = shaping helps; effect: {label} (interval at "
              f"{100 * (1 - alpha):.4g}%, Bonferroni over {len(ests)} indicators); "
              + "; ".join(f"{name}: {e} (smallest effect of interest {s:.3g})" for name, s, e in ests))
    return make_claim("shaping_stability", headline, outcome, detail, alpha=alpha, sesoi=sesoi)


def _per_doubling(flops: pd.Series, accuracy: pd.Series) -> str:
    """Log-linear slope of accuracy per doubling of compute, with its CI."""
    means = accuracy.groupby(flops).mean().dropna()
    means = means[means.index > 0]
    if len(means) < 3:
        return "fewer than three compute levels"
    fit = fit_log_linear(means.index.to_numpy(float), means.to_numpy())
    low, high = (np.log(2) * v for v in fit.ci["b"])
    return f"{np.log(2) * fit.params['b']:+.4g} [{low:+.4g}, {high:+.4g}] per doubling"


def diminishing_returns(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [], [FLOPS_RL, metric]):
        return not_tested("diminishing_returns", reason)
    if levels(table, STEP) < 3:
        return not_tested("diminishing_returns", "RL curves need at least three eval points")
    points = table[(table[FLOPS_RL] > 0) & (table[STEP] > 0)]  # each curve after its start (no RL compute yet)
    est = estimate(points, [TRIAL], ByLevel(FLOPS_RL, concavity), metric, curves=True, points=True)
    detail = (f"{metric} slope per doubling of {FLOPS_RL}, early minus late along each RL curve "
              f"(RL compute at step 0 taken as 0): {est}; "
              f"RL {metric} overall: {_per_doubling(table[FLOPS_RL], table[metric])}")
    if has(table, FLOPS_SFT) and has(table, PASS_BEFORE):
        final = shared_final_points(table)
        detail += f"; SFT {PASS_BEFORE} vs {FLOPS_SFT}: {_per_doubling(final[FLOPS_SFT], final[PASS_BEFORE])}"
    return make_claim("diminishing_returns", est, directional(est, SESOI["diminishing_returns"]), detail)


