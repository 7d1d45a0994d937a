"""Claim checks on policy optimization: policy size, PPO vs GRPO, reward shaping, and RL's returns to compute
(findings 6, 7, 8 and the shaping switches of Hou et al. 2024; samples per prompt, finding 4: ``claims_samples``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from rlhfscale.analysis.claim_base import (
    ORDER, PART_SESOI, SESOI, Claim, held_fixed, make_claim, not_tested, policy_axis,
    shared_final_points, size_reason, untested_reason,
)
from rlhfscale.analysis.claims_prm import learned_rm_final
from rlhfscale.analysis.effects import (
    ByLevel, concavity, difference, estimate, first_minus_last, largest, last_minus_first,
    others_minus, slope,
)
from rlhfscale.analysis.stats import ALPHA, Estimate, combine_codes, directional, equivalent
from rlhfscale.analysis.table import (
    DATA_PROMPTS, DATA_RPP, DIVERGED, FLOPS_RL, FLOPS_SFT, GAIN, GAIN_REL, PASS, PASS_BEFORE, POLICY_PARAMS,
    POLICY_SIZE, REWARD_STD, RL_ALGORITHM, RL_LR, RL_REWARD_KIND, RL_SHAPING, RM_KIND, RM_PAIR_ACC, RM_PARAMS,
    RM_SIZE, SEED, STEP, TASK, TRIAL, has, levels,
)

DATA_SOURCE = "data.source"  # policy | corrupt | rm_base: what sampled the RM's training data

LOG_STD = "_log_reward_std"
STABILITY = (  # (column, sign that makes "shaping helps" positive, smallest effect of interest, label)
    (PASS, 1.0, 0.02, f"final {PASS}, shaped minus none"),
    (DIVERGED, -1.0, 0.10, "divergence rate, none minus shaped"),
    (LOG_STD, -1.0, float(np.log(1.25)), f"log {REWARD_STD}, none minus shaped"),
)


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


SHARE_TRIALS = ("{rm.enabled: true, data.source: rm_base, rl.reward: {orm: 1.0}} at each policy.size: the RM's data "
                "sampled by its own SFT start (rm_base), so one RM is trained once and shared by every policy size")
RM_IDENTITY = (RM_KIND, RM_SIZE, RM_PARAMS, DATA_PROMPTS, DATA_RPP, TASK)


def shared_rm_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Final points of RL runs rewarded by a learned RM shared by every policy size, or why there are none.

    Shared: the RM's data sampled by ``rm_base`` (``data.source``), where the grid records that setting; else
    one RM per seed and RM setting, as its ``rm/pair_acc`` (equal for one artifact) shows."""
    rows = learned_rm_final(table)
    if has(rows, DATA_SOURCE):
        rows = rows[rows[DATA_SOURCE] == "rm_base"]
    elif has(rows, RM_PAIR_ACC):
        by = [SEED, *(a for a in RM_IDENTITY if has(rows, a))]
        if (rows.groupby(by, dropna=False)[RM_PAIR_ACC].nunique() > 1).any():
            rows = rows.iloc[:0]
    axis = policy_axis(rows)
    if not has(rows, axis) or levels(rows, axis) < 2:
        return rows, f"needs RL runs of two or more policy sizes against one RM trained once: {SHARE_TRIALS}"
    return rows, size_reason(rows, POLICY_SIZE, POLICY_PARAMS, [GAIN])


def policy_size(table: pd.DataFrame) -> Claim:
    """Finding 6 as the paper ran it: RL runs of several policy sizes against one RM, trained once and shared
    (``shared_rm_rows``). Effect: the smallest minus the largest policy's absolute gain over its own SFT start
    (the noise of both starts counted), directional; beside it the same gap relative to the start (gain / before),
    since bigger policies start stronger: where that lies below its SESOI (at 97.5 %) the claim is not supported
    whatever the absolute gap. (Where the larger policy starts stronger, a smaller absolute gain is a smaller
    relative one too, so the relative gap cannot be asked to confirm what the absolute one shows.) Where RL
    lowered the largest policy's accuracy (its gain below 0 at 97.5 %) a smaller gain is a collapse against the
    RM, not a smaller benefit, and evidence neither way: a "supported" becomes inconclusive."""
    rows, reason = shared_rm_rows(table)
    if reason:
        return not_tested("policy_size", reason)
    order = rows[POLICY_PARAMS] if policy_axis(rows) == POLICY_PARAMS else pd.to_numeric(rows[POLICY_SIZE], errors="coerce")
    final = rows.assign(**{ORDER: order})
    fixed = held_fixed(final, (POLICY_SIZE, POLICY_PARAMS, RL_LR))  # lr is often tuned per size
    gap = _across_starts(final, fixed, estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN))
    outcome = directional(gap, SESOI["policy_size"])
    detail = f"one RM shared by every policy size; smallest minus largest policy, absolute {GAIN} (effect): {gap}"
    if has(final, GAIN_REL):
        rel = estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN_REL)
        sesoi = PART_SESOI["policy_size_rel"]
        if rel.n_seeds and directional(rel, sesoi, ALPHA / 2) == "not supported":
            outcome = "not supported"
        detail += (f"; relative to the starting accuracy ({GAIN_REL}): {rel} (below {sesoi:g} at "
                   f"{100 * (1 - ALPHA / 2):g}%: not supported whatever the absolute gap)")
    top = estimate(final, fixed, ByLevel(ORDER, largest), GAIN)
    if top.n_seeds and top.interval(ALPHA / 2)[1] < 0:
        outcome = "inconclusive" if outcome == "supported" else outcome
    detail += (f"; the largest policy's own {GAIN}: {top} (below 0 at {100 * (1 - ALPHA / 2):g}%: RL lowered its "
               "accuracy, a collapse against the RM rather than a smaller benefit: not supported by it)")
    if has(final, PASS_BEFORE):
        start = estimate(final, fixed, ByLevel(ORDER, last_minus_first), PASS_BEFORE)
        detail += f"; largest minus smallest starting accuracy: {start}"
    return make_claim("policy_size", gap, outcome, detail)


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


SFT_TRIALS = ("trials varying sft.steps on the same policy, e.g. {sft.steps: S/4} and {sft.steps: S/2} beside the "
              "base's S (rl.enabled false is enough)")


def _minus(a: Estimate, b: Estimate, basis: str) -> Estimate:
    """``a - b`` of two estimates on disjoint rows (independent noise, Welch-Satterthwaite df)."""
    both = a.with_noise_of(b)
    se = both.se if np.isfinite(a.se) and np.isfinite(b.se) else np.nan
    return replace(both, value=a.value - b.value, se=se, n_seeds=min(a.n_seeds, b.n_seeds), basis=basis,
                   lower=a.lower - b.upper, upper=a.upper - b.lower)


def _sft_slope(table: pd.DataFrame) -> tuple[Estimate, pd.DataFrame, list[str]]:
    """pass@1 of the SFT policy per doubling of SFT FLOPs, within cells (every axis fixed, the policy's included),
    with the final points (SFT pass@1 in ``eval/pass@1_before``, from ``eval/pass@1`` where no RL ran) and keys."""
    final = shared_final_points(table)
    no_rl = final[FLOPS_RL].isna() if FLOPS_RL in final else pd.Series(True, index=final.index)
    before = final[PASS_BEFORE] if PASS_BEFORE in final else pd.Series(np.nan, index=final.index)
    final = final.assign(**{PASS_BEFORE: before.fillna(final[PASS].where(no_rl))})
    keys = held_fixed(final, (RL_REWARD_KIND,))  # SFT-only rows (none) beside RL ones
    return estimate(final, keys, ByLevel(FLOPS_SFT, slope), PASS_BEFORE), final, keys


def _with_sft_curve(points: pd.DataFrame, final: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The RL points of the cells (settings, any seed) in which SFT compute varies: RL on the same model."""
    both = pd.concat([final[keys], points[keys]], ignore_index=True)
    cell = combine_codes(*(both[k].to_numpy(object) for k in keys)) if keys else np.zeros(len(both), int)
    budgets = pd.Series(final[FLOPS_SFT].to_numpy()).groupby(cell[:len(final)]).nunique()
    return points[np.isin(cell[len(final):], budgets.index[budgets >= 2])]


def diminishing_returns(table: pd.DataFrame) -> Claim:
    """Finding 8 relative to pretraining: on the same model, SFT's pass@1 gain per doubling of SFT FLOPs (trials
    varying sft.steps) minus RL's per doubling of RL FLOPs (along each RL curve after its start, least squares in
    log2 compute); > 0: RL scales less efficiently. The RL curves' own concavity (slope early minus late) is
    reported beside it."""
    if reason := untested_reason(table, [], [FLOPS_RL, PASS, FLOPS_SFT]):
        return not_tested("diminishing_returns", reason)
    points = table[(table[FLOPS_RL] > 0) & (table[STEP] > 0)]  # each curve after its start (no RL compute yet)
    if levels(points, FLOPS_RL) < 2:
        return not_tested("diminishing_returns", "RL curves need two or more eval points after the start")
    concave = estimate(points, [TRIAL], ByLevel(FLOPS_RL, concavity), PASS, curves=True, points=True)
    along = f"along each RL curve, {PASS} slope per doubling of {FLOPS_RL} early minus late: {concave}"
    sft, final, keys = _sft_slope(table)
    if not sft.n_seeds:
        return not_tested("diminishing_returns", f"no SFT curve on the RL policies' model: needs {SFT_TRIALS}; {along}")
    rl = estimate(_with_sft_curve(points, final, keys), [TRIAL], ByLevel(FLOPS_RL, slope), PASS, curves=True,
                  points=True)
    if not rl.n_seeds:
        return not_tested("diminishing_returns", f"no RL curve shares its model and settings with the SFT curve "
                          f"({SFT_TRIALS}); {along}")
    est = _minus(sft, rl, f"SFT {sft.basis}; RL {rl.basis}")
    detail = (f"SFT minus RL {PASS} gain per doubling of the stage's own FLOPs (effect; > 0: RL scales less "
              f"efficiently): {est}; SFT per doubling of {FLOPS_SFT}: {sft}; RL per doubling of {FLOPS_RL}: {rl}; "
              f"{along}")
    return make_claim("diminishing_returns", est, directional(est, SESOI["diminishing_returns"]), detail)
