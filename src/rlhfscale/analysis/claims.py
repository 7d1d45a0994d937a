"""Claim checks: each finding of Hou et al. 2024 tested on the user's grid.

Every check reads the tidy table (``table.to_table``) and returns a ``Claim``. Its effect is a
contrast computed in *cells* (the rows that share a seed and every other setting the check holds
fixed), so comparisons are paired by seed; ``effects.estimate`` averages cells, then seeds, and
``stats`` gives the interval: a binomial-aware noise model pooled over the whole grid, binomial
noise a soft floor for accuracies, clipped to the effect's range (see that module).

Each claim has a smallest effect of interest (``SESOI``, in its effect's units). A directional
claim is "not supported" when its 95 % interval lies below the SESOI (negligible or reversed),
"supported" when it lies above 0, else "inconclusive"; a "similar" / "modest" claim is supported
when the interval lies within +-SESOI and not supported when it lies wholly outside. Every tested
claim reports ``min_detectable``: the effect the grid finds 4 times in 5 at its standard error.
Verdicts never lean toward the paper.

Beyond Hou et al.'s eight findings: reward over-optimization as Gao et al. (2022) measured it
(``overoptimization_peak``, ``rl_kl_cost``: per-curve effects, ``analysis.overopt``), and the three
results about a PRM as the RL reward (``prm_reward``, ``prm_reward_samples``, ``prm_reward_training``:
RL trials rewarded by an ORM and by a PRM, dense or aggregated, compared within cells).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from rlhfscale.analysis import overopt
from rlhfscale.analysis.effects import (
    Both, ByLevel, concavity, difference, early, early_minus_late, estimate, first_minus_last,
    last_minus_first, others_minus, slope,
)
from rlhfscale.analysis.fits import fit_log_linear
from rlhfscale.analysis.stats import ALPHA, Estimate, directional, equivalent
from rlhfscale.analysis.table import (
    AXES, BON_RM, DATA_PROMPTS, DATA_RPP, DATA_VOLUME, DIVERGED, FLOPS_RL, FLOPS_SFT, GAIN, GAIN_REL,
    PASS, PASS_BEFORE, PASS_OOD, POLICY_PARAMS, POLICY_SIZE, REWARD_STD, RL_ALGORITHM, RL_LR,
    RL_N_SAMPLES, RL_PRM_MODE, RL_SHAPING, RM_KIND, RM_PAIR_ACC, RM_PARAMS, RM_SIZE, SEED, STEP, TASK,
    TRIAL, final_points, has, levels, reward_kind,
)

_SHARED: list[tuple[weakref.ref, pd.DataFrame | None, dict]] = []  # check_all's table, its final points, a cache
VERDICTS = ("supported", "not supported", "inconclusive", "not tested")
SESOI = {  # smallest effect of interest, in each effect's units
    "rm_data_volume": 0.01,  # RM accuracy per doubling of labelled volume
    "prompt_diversity": 0.02,  # RM accuracy, most prompts minus fewest at equal volume
    "prm_vs_orm": 0.01,  # PRM minus ORM accuracy slope per doubling of volume
    "samples_plateau": 0.01,  # gain per doubling of n, early rise and early-minus-late drop
    "rm_size_modest": 0.05,  # pass@1 gain of the largest RM over the smallest: "modest" within +-0.05
    "policy_size": 0.02,  # smallest minus largest policy's pass@1 gain (the paper: 4.4 vs 1.9 points)
    "ppo_vs_grpo": 0.05,  # PPO minus GRPO final pass@1: "similar" within +-0.05
    "shaping_stability": 0.02,  # the headline indicator's (STABILITY lists each indicator's own)
    "diminishing_returns": 0.01,  # pass@1 slope per doubling of RL compute, early minus late
    "overoptimization_peak": 0.01,  # gold change over half the sqrt(KL) range: the rise, then the fall
    "rl_kl_cost": 0.01,  # Best-of-N minus RL gold gain at equal KL
    "prm_reward": 0.02,  # PRM- minus ORM-rewarded pass@1 (and that gap, largest minus smallest policy)
    "prm_reward_samples": 0.01,  # gain per doubling of n from the middle to the largest n, PRM minus ORM reward
    "prm_reward_training": 0.01,  # pass@1 per doubling of RL steps in the later half of training, PRM minus ORM
}
EQUIVALENCE = ("rm_size_modest", "ppo_vs_grpo")  # claims of a small difference, tested by TOST
RM_CONTEXT = (RM_KIND, RM_SIZE, RM_PARAMS, TASK)
ORDER = "_order"
REWARD = "_reward"  # orm | prm_aggregate | prm_dense: the one learned RM an RL run was rewarded by
SIDE = "_reward_side"  # orm | prm
LOG_STD = "_log_reward_std"
SHORTFALL = "_bon_minus_rl_gain"
STABILITY = (  # (column, sign that makes "shaping helps" positive, smallest effect of interest, label)
    (PASS, 1.0, 0.02, f"final {PASS}, shaped minus none"),
    (DIVERGED, -1.0, 0.10, "divergence rate, none minus shaped"),
    (LOG_STD, -1.0, float(np.log(1.25)), f"log {REWARD_STD}, none minus shaped"),
)


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


def _claim(claim_id: str, est: Estimate, outcome: str, detail: str, *, alpha: float = ALPHA,
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


def _rm_keys(table: pd.DataFrame, *extra: str) -> list[str]:
    """What an RM-quality cell holds fixed: the RM's kind, size and task (plus ``extra``)."""
    return [a for a in (*RM_CONTEXT, *extra) if has(table, a)]


def rm_data_volume(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_VOLUME], [metric]):
        return not_tested("rm_data_volume", reason)
    final = _final_points(table)
    est = estimate(final, _rm_keys(final), ByLevel(DATA_VOLUME, slope), metric, points=True)
    detail = f"slope of {metric} per doubling of labelled volume (prompts x responses): {est}"
    return _claim("rm_data_volume", est, directional(est, SESOI["rm_data_volume"]), detail)


def prompt_diversity(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_PROMPTS, DATA_RPP], [metric]):
        return not_tested("prompt_diversity", reason)
    final = _final_points(table)
    est = estimate(final, _rm_keys(final, DATA_VOLUME), ByLevel(DATA_PROMPTS, last_minus_first), metric)
    detail = (f"{metric} with the most prompts minus with the fewest (more responses each), "
              f"at equal labelled volume: {est}")
    return _claim("prompt_diversity", est, directional(est, SESOI["prompt_diversity"]), detail)


def prm_vs_orm(table: pd.DataFrame) -> Claim:
    metric = pick(table, BON_RM, RM_PAIR_ACC)
    if reason := untested_reason(table, [DATA_VOLUME, RM_KIND], [metric], {RM_KIND: {"prm", "orm"}}):
        return not_tested("prm_vs_orm", reason)
    final = _final_points(table)
    slope_gap = Both(ByLevel(DATA_VOLUME, slope, where=(RM_KIND, "prm")),
                     ByLevel(DATA_VOLUME, slope, -1.0, where=(RM_KIND, "orm")))
    est = estimate(final, [k for k in _rm_keys(final) if k != RM_KIND], slope_gap, metric)
    detail = f"PRM minus ORM slope of {metric} per doubling of labelled volume: {est}"
    fixed = held_fixed(final, (RM_KIND,))
    for label, column in (("targeted pass@1", PASS), ("other-task pass@1", PASS_OOD)):
        if has(final, column):
            side = estimate(final, fixed, ByLevel(RM_KIND, difference("prm", "orm")), column)
            detail += f"; PRM minus ORM {label}: {side}"
    return _claim("prm_vs_orm", est, directional(est, SESOI["prm_vs_orm"]), detail)


def samples_plateau(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [RL_N_SAMPLES], [metric]):
        return not_tested("samples_plateau", reason)
    if levels(table, RL_N_SAMPLES) < 3:
        return not_tested("samples_plateau", f"a plateau needs three values of '{RL_N_SAMPLES}'")
    final = _final_points(table)
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
    return _claim("samples_plateau", drop, plateau, detail)


def _with_size_order(table: pd.DataFrame, size: str, params: str) -> pd.DataFrame:
    """The final points with a numeric ``_order`` column ranking model sizes."""
    final = _final_points(table)
    order = final[params] if has(final, params) else pd.to_numeric(final[size], errors="coerce")
    return final.assign(**{ORDER: order})


def _size_reason(table: pd.DataFrame, size: str, params: str, metrics: list[str]) -> str | None:
    axis = params if has(table, params) else size
    if reason := untested_reason(table, [axis], metrics):
        return reason
    if not has(table, params) and pd.to_numeric(table[size], errors="coerce").isna().any():
        return f"'{size}' names cannot be ordered by scale; record '{params}'"
    return None


def rm_size_modest(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := _size_reason(table, RM_SIZE, RM_PARAMS, [metric]):
        return not_tested("rm_size_modest", reason)
    final = _with_size_order(table, RM_SIZE, RM_PARAMS)
    fixed = held_fixed(final, (RM_SIZE, RM_PARAMS))
    rl = estimate(final, fixed, ByLevel(ORDER, last_minus_first), metric)
    margin = SESOI["rm_size_modest"]
    detail = f"RL: largest minus smallest RM, policy {metric}: {rl} (modest: within +-{margin:g})"
    if has(final, BON_RM):
        bon = estimate(final, fixed, ByLevel(ORDER, last_minus_first), BON_RM)
        final = final.assign(**{SHORTFALL: final[BON_RM] - final[metric]})
        shortfall = estimate(final, fixed, ByLevel(ORDER, last_minus_first), SHORTFALL,
                             bounds=(-1.0, 2.0 if metric == GAIN else 1.0))
        detail += f"; Best-of-16: largest minus smallest RM, {BON_RM}: {bon}; BoN gain minus RL gain: {shortfall}"
    return _claim("rm_size_modest", rl, equivalent(rl, margin), detail)


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
    if reason := _size_reason(table, POLICY_SIZE, POLICY_PARAMS, [GAIN]):
        return not_tested("policy_size", reason)
    final = _with_size_order(table, POLICY_SIZE, POLICY_PARAMS)
    fixed = held_fixed(final, (POLICY_SIZE, POLICY_PARAMS, RL_LR))  # lr is often tuned per size
    gap = _across_starts(final, fixed, estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN))
    detail = f"smallest minus largest policy, absolute {GAIN}: {gap}"
    if has(final, GAIN_REL):
        rel = estimate(final, fixed, ByLevel(ORDER, first_minus_last), GAIN_REL)
        detail += f"; relative to the starting accuracy ({GAIN_REL}): {rel}"
    if has(final, PASS_BEFORE):
        start = estimate(final, fixed, ByLevel(ORDER, last_minus_first), PASS_BEFORE)
        detail += f"; largest minus smallest starting accuracy: {start}"
    return _claim("policy_size", gap, directional(gap, SESOI["policy_size"]), detail)


def ppo_vs_grpo(table: pd.DataFrame) -> Claim:
    if reason := untested_reason(table, [RL_ALGORITHM], [PASS], {RL_ALGORITHM: {"ppo", "grpo"}}):
        return not_tested("ppo_vs_grpo", reason)
    final = _final_points(table)
    est = estimate(final, held_fixed(final, (RL_ALGORITHM, RL_LR)), ByLevel(RL_ALGORITHM, difference("ppo", "grpo")),
                   PASS)
    margin = SESOI["ppo_vs_grpo"]
    detail = f"PPO minus GRPO final {PASS}: {est}; similar = interval within +-{margin:g}"
    return _claim("ppo_vs_grpo", est, equivalent(est, margin), detail)


def _stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Final points with log reward std; divergence dropped when no run diverged (it tells nothing apart)."""
    final = _final_points(table)
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
    return _claim("shaping_stability", headline, outcome, detail, alpha=alpha, sesoi=sesoi)


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
        final = _final_points(table)
        detail += f"; SFT {PASS_BEFORE} vs {FLOPS_SFT}: {_per_doubling(final[FLOPS_SFT], final[PASS_BEFORE])}"
    return _claim("diminishing_returns", est, directional(est, SESOI["diminishing_returns"]), detail)


def both_hold(*verdicts: str) -> str:
    """Supported when every part is, not supported when any part is not (an intersection-union test)."""
    found = set(verdicts)
    return ("not supported" if "not supported" in found else
            "supported" if found == {"supported"} else "inconclusive")


# ---- reward over-optimization (Gao et al. 2022) -------------------------------------------------------

def _cached(table: pd.DataFrame, key: str, compute: Callable[[], object]):
    """``compute()``, once per ``check_all`` call on ``table``."""
    if not (_SHARED and _SHARED[0][0]() is table):
        return compute()
    cache = _SHARED[0][2]
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _g1(table: pd.DataFrame) -> tuple[overopt.Curves, dict]:
    """Best-of-N and RL over-optimization curves and their gold fits."""
    def compute():
        found = overopt.curves(table)
        return found, overopt.fits(found)
    return _cached(table, "g1", compute)


def _fit_detail(fits: dict) -> tuple[str, dict]:
    """The gold fits in words (per method: over all curves, then per configuration) and as records."""
    words, records = [], {}
    for method, found in fits.items():
        form = "d (alpha - beta d)" if method == "bon" else "d (alpha - beta log d)"
        ordered = sorted(found.items(), key=lambda kv: (kv[0] is not None, str(kv[0])))
        bases = list(dict.fromkeys(fit.basis for _, fit in ordered))
        text = "; ".join(f"{'all proxy RMs' if key is None else key or 'base'}: {overopt.describe_fit(fit)}"
                         + (f" ({fit.basis})" if len(bases) > 1 else "") for key, fit in ordered)
        basis = f" ({bases[0]})" if len(bases) == 1 else ""
        words.append(f"{overopt.METHODS[method]} gold gain fitted as {form}, d = sqrt(KL){basis}: {text}")
        records[method] = {("all" if key is None else key or "base"): overopt.fit_record(fit)
                           for key, fit in ordered}
    return "; ".join(words), records


NO_CURVES = ("no Best-of-N curve of a reward model (bon/<rm>@N, N = 1, 2, ...) and no RL curve against a learned "
             "reward (rl.reward orm or prm, with rl/kl and rl/gold_reward)")


def overoptimization_peak(table: pd.DataFrame) -> Claim:
    """Per method (Best-of-N, RL), the gold rise over the lower half of the curves' sqrt(KL) range and its fall
    over the upper half; supported when both are positive for one method (Bonferroni over methods), not
    supported when every method's rise or fall is below the smallest effect of interest."""
    c, fits = _g1(table)
    sesoi = SESOI["overoptimization_peak"]
    parts = {}
    for method in c.methods:
        units = overopt.per_curve(c.of(method))
        rise, fall = (overopt.estimate_of(units, column, "curves") for column in ("rise", "fall"))
        if fall.n_seeds:
            parts[method] = (rise, fall, len(units))
    if not parts:
        return not_tested("overoptimization_peak", NO_CURVES if not c.methods else
                          "no curve has two distinct values of sqrt(KL) in each half of its range")
    alpha = ALPHA / len(parts)
    verdicts = {m: both_hold(directional(rise, sesoi, alpha), directional(fall, sesoi, alpha))
                for m, (rise, fall, _) in parts.items()}
    outcome = ("supported" if "supported" in verdicts.values() else
               "not supported" if set(verdicts.values()) == {"not supported"} else "inconclusive")
    headline = next((m for m, v in verdicts.items() if v == outcome), next(iter(parts)))
    words, records = _fit_detail(fits)
    detail = (f"effect: {overopt.METHODS[headline]}'s gold fall; intervals at {100 * (1 - alpha):.4g}% "
              f"(Bonferroni over {len(parts)} method(s)); supported when gold both rises over the lower half of "
              f"a method's sqrt(KL) range and falls over its upper half; "
              + "; ".join(f"{overopt.METHODS[m]} ({n} curves, {verdicts[m]}): gold rise over the lower half "
                          f"{r.text(alpha)}, fall over the upper half {f.text(alpha)}"
                          for m, (r, f, n) in parts.items())
              + (f"; {words}" if words else ""))
    return _claim("overoptimization_peak", parts[headline][1], outcome, detail, alpha=alpha, fits=records or None)


def _kl_for_gain(fit, gain: float, d_max: float) -> float:
    """KL at which a fitted gold curve first reaches ``gain`` (NaN: not within d <= d_max)."""
    grid = np.linspace(0.0, d_max, 2001)
    reached = np.flatnonzero(fit.predict(grid) >= gain)
    return float(grid[reached[0]] ** 2) if reached.size else np.nan


def rl_kl_cost(table: pd.DataFrame) -> Claim:
    c, fits = _g1(table)
    if c.bon.empty or c.rl.empty:
        return not_tested("rl_kl_cost", "needs a Best-of-N curve and an RL curve against the same reward model (a "
                          "trial with rm.enabled, rl.reward orm or prm, and the bon stage's bon/<rm>@N)"
                          if c.methods else NO_CURVES)
    gaps = overopt.kl_gaps(c)
    if gaps.empty:
        return not_tested("rl_kl_cost", "no RL point past the start lies within the Best-of-N curves' sqrt(KL) "
                          "range (or the RL curves have no start)")
    est = overopt.estimate_of(gaps, "kl_gap", "curves")
    words, records = _fit_detail(fits)
    detail = (f"Best-of-N minus RL gold gain at equal KL, at the RL points past the start within the Best-of-N "
              f"range ({int(gaps['points'].sum())} points, {len(gaps)} curves; > 0: RL needs more KL for the same "
              f"gain): {est}")
    if c.rl_started_from_bon:
        detail += (f"; {c.rl_started_from_bon} RL curve(s) have no point at the start (KL <= {overopt.START_KL:g}): "
                   "their gains are from the Best-of-N pool mean (held-out prompts); rl.eval_every 1 logs step 1")
    if {"bon", "rl"} <= fits.keys() and None in fits["bon"] and None in fits["rl"]:
        bon_fit, rl_fit = fits["bon"][None], fits["rl"][None]
        top = float(bon_fit.predict(np.linspace(0, c.bon["d"].max(), 200)).max())
        if top > 0:
            kl_b = _kl_for_gain(bon_fit, top / 2, c.bon["d"].max())
            kl_r = _kl_for_gain(rl_fit, top / 2, c.rl["d"].max())
            rl_text = f"{kl_r:.3g} nats" if np.isfinite(kl_r) else "more than it reached"
            detail += (f"; by the fits over all proxy RMs, a gold gain of {top / 2:+.3g} (half Best-of-N's best) "
                       f"takes Best-of-N {kl_b:.3g} nats of KL and RL {rl_text}")
    detail += f"; {words}" if words else ""
    return _claim("rl_kl_cost", est, directional(est, SESOI["rl_kl_cost"]), detail, fits=records or None)


# ---- a PRM as the RL reward --------------------------------------------------------------------------

def with_reward(frame: pd.DataFrame, kind: pd.Series | None = None) -> pd.DataFrame:
    """The RL rows rewarded by one learned RM, with ``_reward`` (orm, prm_aggregate, prm_dense) and
    ``_reward_side`` (``kind``: ``table.reward_kind(frame)``, when known)."""
    kind = reward_kind(frame) if kind is None else kind
    keep = kind.isin(["orm", "prm"]).to_numpy()
    mode = (frame[RL_PRM_MODE].fillna("aggregate").astype(str) if RL_PRM_MODE in frame
            else pd.Series("aggregate", index=frame.index))
    reward = np.where(kind == "prm", "prm_" + mode, kind.astype(object))
    return frame.assign(**{REWARD: reward, SIDE: kind})[keep]


def _rewarded(table: pd.DataFrame, final: bool) -> pd.DataFrame:
    """``with_reward`` of the final points (or of every row), empty unless both an ORM and a PRM rewarded RL."""
    kind = _cached(table, "reward_kind", lambda: reward_kind(table))
    if not {"orm", "prm"} <= set(kind.dropna()):
        return pd.DataFrame(columns=[SIDE, REWARD, STEP])
    if not final:
        return _cached(table, "rewarded_rows", lambda: with_reward(table, kind))

    def of_final() -> pd.DataFrame:
        points = _final_points(table)
        by_run = dict(zip(zip(table[TRIAL], table[SEED]), kind))  # a run's reward is the same at every point
        return with_reward(points, pd.Series([by_run.get(k) for k in zip(points[TRIAL], points[SEED])],
                                             index=points.index, dtype=object))
    return _cached(table, "rewarded_final", of_final)


def _prm_reason(rows: pd.DataFrame, table: pd.DataFrame, metric: str) -> str | None:
    if not has(table, metric):
        return f"metric '{metric}' was not recorded"
    if not {"orm", "prm"} <= set(rows[SIDE]):
        found = sorted(set(_cached(table, "reward_kind", lambda: reward_kind(table)).dropna()))
        return (f"needs RL trials rewarded by an ORM and by a PRM (rl.reward {{orm: 1.0}} and {{prm: 1.0}}, "
                f"rl.prm_mode aggregate or dense); the grid's RL rewards: {found or 'none'}")
    return None


def prm_minus_orm(levels: np.ndarray) -> np.ndarray | None:
    """The mean over PRM rewards (prm_aggregate, prm_dense) minus the ORM reward."""
    found = list(levels)
    prm = [i for i, level in enumerate(found) if str(level).startswith("prm")]
    if "orm" not in found or not prm:
        return None
    out = np.zeros(len(found))
    out[found.index("orm")], out[prm] = -1.0, 1.0 / len(prm)
    return out


def late_slope(levels: np.ndarray) -> np.ndarray | None:
    """Least-squares slope per doubling over the upper half of the levels (the middle one included when
    their number is odd; both of two)."""
    if len(levels) < 2:
        return None
    start = min(len(levels) // 2, len(levels) - 2)
    x = np.log2(levels[start:].astype(float))
    out = np.zeros(len(levels))
    out[start:] = (x - x.mean()) / ((x - x.mean()) @ (x - x.mean()))
    return out


def _prm_vs_orm(factor: str, combine, sign_orm: float = -1.0) -> Both:
    return Both(ByLevel(factor, combine, where=(SIDE, "prm")),
                ByLevel(factor, combine, sign_orm, where=(SIDE, "orm")))


def _mode_details(rows: pd.DataFrame, fixed: list[str], metric: str) -> str:
    """Each PRM reward mode against the ORM, when the grid has both modes."""
    modes = sorted(m for m in rows[REWARD].unique() if str(m).startswith("prm"))
    if len(modes) < 2:
        return ""
    ests = [(mode, estimate(rows[rows[REWARD].isin([mode, "orm"])], fixed, ByLevel(REWARD, difference(mode, "orm")),
                            metric)) for mode in modes]
    return "".join(f"; {mode} minus orm final {metric}: {est}" for mode, est in ests)


def prm_reward(table: pd.DataFrame) -> Claim:
    """PRM- minus ORM-rewarded final pass@1; where policy sizes vary, that gap at the largest minus the smallest
    policy as well (supported when both are positive, not supported when either is below its SESOI)."""
    metric = pick(table, GAIN, PASS)
    final = _rewarded(table, final=True)
    if reason := _prm_reason(final, table, metric):
        return not_tested("prm_reward", reason)
    fixed = held_fixed(final, (RM_KIND, RM_PARAMS))
    main = estimate(final, fixed, ByLevel(REWARD, prm_minus_orm), metric)
    sesoi = SESOI["prm_reward"]
    detail = f"PRM- minus ORM-rewarded final {metric} (PRM modes averaged): {main}"
    detail += _mode_details(final, fixed, metric)
    outcome = directional(main, sesoi)
    axis = POLICY_PARAMS if has(final, POLICY_PARAMS) else POLICY_SIZE
    if levels(final, axis) >= 2:
        order = (final[POLICY_PARAMS] if axis == POLICY_PARAMS
                 else pd.to_numeric(final[POLICY_SIZE], errors="coerce"))
        sized = final.assign(**{ORDER: order})
        size_fixed = held_fixed(sized, (RM_KIND, RM_PARAMS, POLICY_SIZE, POLICY_PARAMS, RL_LR))
        bigger = estimate(sized, size_fixed, _prm_vs_orm(ORDER, last_minus_first), metric)
        if bigger.n_seeds:
            outcome = both_hold(outcome, directional(bigger, sesoi))
            detail += (f"; that gap at the largest minus at the smallest policy: {bigger}; supported when both are "
                       f"positive, not supported when either is below {sesoi:g}")
        else:
            detail += f"; the policy sizes share no cell with both rewards: {bigger.basis}"
    else:
        detail += "; one policy size: 'more so for larger policies' not tested"
    return _claim("prm_reward", main, outcome, detail)


def prm_reward_samples(table: pd.DataFrame) -> Claim:
    """How much more the gain rises per doubling of n, from the middle to the largest n, under a PRM reward
    than under an ORM reward; supported when that and the PRM's own rise are positive."""
    metric = pick(table, GAIN, PASS)
    final = _rewarded(table, final=True)
    if reason := _prm_reason(final, table, metric):
        return not_tested("prm_reward_samples", reason)
    sides = final.groupby(SIDE)[RL_N_SAMPLES].nunique() if has(final, RL_N_SAMPLES) else pd.Series(dtype=int)
    if not (sides.get("prm", 0) >= 2 and sides.get("orm", 0) >= 2):
        return not_tested("prm_reward_samples", f"needs two or more values of '{RL_N_SAMPLES}' under each of the "
                          "ORM and the PRM reward")
    fixed = held_fixed(final, (RM_KIND, RM_PARAMS, RL_N_SAMPLES, RL_LR))
    gap = estimate(final, fixed, _prm_vs_orm(RL_N_SAMPLES, late_slope), metric)
    prm_late, orm_late = (estimate(final, fixed, ByLevel(RL_N_SAMPLES, late_slope, where=(SIDE, side)), metric)
                          for side in ("prm", "orm"))
    sesoi = SESOI["prm_reward_samples"]
    outcome = both_hold(directional(gap, sesoi), directional(prm_late, sesoi))
    detail = (f"{metric} per doubling of n over the upper half of the n values (middle to largest), PRM minus ORM "
              f"reward (effect): {gap}; under the PRM reward: {prm_late}; under the ORM reward: {orm_late}; "
              f"supported when the effect and the PRM's rise are positive, not supported when either is below "
              f"{sesoi:g}")
    if has(final, RL_LR):
        detail += f"; pooled over {RL_LR} {sorted(final[RL_LR].dropna().unique())}"
    return _claim("prm_reward_samples", gap, outcome, detail)


def prm_reward_training(table: pd.DataFrame) -> Claim:
    """Along RL curves: the slope per doubling of steps over the later half of training, PRM minus ORM reward;
    supported when that and the PRM-rewarded curve's own late slope are positive."""
    metric = pick(table, GAIN, PASS)
    points = _rewarded(table, final=False)
    points = points[(points[STEP] > 0) & points[metric].notna()] if metric in points else points.iloc[:0]
    if reason := _prm_reason(points, table, metric):
        return not_tested("prm_reward_training", reason)
    if levels(points, STEP) < 2:
        return not_tested("prm_reward_training", "RL curves need two or more eval points after the start")
    fixed = held_fixed(points, (RM_KIND, RM_PARAMS))
    gap = estimate(points, fixed, _prm_vs_orm(STEP, late_slope), metric, curves=True, points=True)
    prm_late, orm_late = (estimate(points, fixed, ByLevel(STEP, late_slope, where=(SIDE, side)), metric, curves=True,
                                   points=True) for side in ("prm", "orm"))
    sesoi = SESOI["prm_reward_training"]
    outcome = both_hold(directional(gap, sesoi), directional(prm_late, sesoi))
    steps = sorted(points[STEP].unique())
    later = steps[min(len(steps) // 2, len(steps) - 2)]
    detail = (f"{metric} per doubling of RL steps over the later half of training (steps {later}-{steps[-1]}), "
              f"PRM minus ORM reward (effect): {gap}; PRM-rewarded: {prm_late}; ORM-rewarded: "
              f"{orm_late}; supported when the effect and the PRM-rewarded slope are positive, not supported when "
              f"either is below {sesoi:g}")
    return _claim("prm_reward_training", gap, outcome, detail)


TITLES = {
    "rm_data_volume": "More labelled data (prompts x responses) improves the reward model",
    "prompt_diversity": "At equal budget, more prompts beat more responses per prompt",
    "prm_vs_orm": "Process supervision scales better with data than outcome supervision",
    "samples_plateau": "More samples per prompt in RL help at first, then plateau",
    "rm_size_modest": "A larger reward model gives modest policy gains",
    "policy_size": "A larger policy gains less from RLHF with a fixed reward model",
    "ppo_vs_grpo": "PPO and GRPO reach similar final accuracy",
    "shaping_stability": "Reward normalization and asymmetric shrinking help stability",
    "diminishing_returns": "RLHF's returns to compute diminish",
    "overoptimization_peak": "Gold reward peaks, then falls as the proxy reward model is optimized (Gao et al. 2022)",
    "rl_kl_cost": "RL spends more KL than Best-of-N for the same gold gain (Gao et al. 2022)",
    "prm_reward": "As the RL reward, a PRM beats an ORM, more so for larger policies",
    "prm_reward_samples": "With a PRM reward more samples per prompt keep helping, where they plateau with an ORM",
    "prm_reward_training": "Along training a PRM-rewarded policy keeps improving while an ORM-rewarded one plateaus",
}
CLAIMS: dict[str, Callable[[pd.DataFrame], Claim]] = {
    "rm_data_volume": rm_data_volume,
    "prompt_diversity": prompt_diversity,
    "prm_vs_orm": prm_vs_orm,
    "samples_plateau": samples_plateau,
    "rm_size_modest": rm_size_modest,
    "policy_size": policy_size,
    "ppo_vs_grpo": ppo_vs_grpo,
    "shaping_stability": shaping_stability,
    "diminishing_returns": diminishing_returns,
    "overoptimization_peak": overoptimization_peak,
    "rl_kl_cost": rl_kl_cost,
    "prm_reward": prm_reward,
    "prm_reward_samples": prm_reward_samples,
    "prm_reward_training": prm_reward_training,
}


def check(claim_id: str, table: pd.DataFrame) -> Claim:
    """Run one claim check by id; an unknown id lists the valid ones."""
    if claim_id not in CLAIMS:
        raise KeyError(f"unknown claim '{claim_id}'; valid: {', '.join(CLAIMS)}")
    return CLAIMS[claim_id](table)


def check_all(table: pd.DataFrame, ids: Iterable[str] | None = None) -> list[Claim]:
    """Every claim check (or those of ``ids``), in registry order; what several need is computed once."""
    wanted = set(CLAIMS if ids is None else ids)
    if unknown := wanted - set(CLAIMS):
        raise KeyError(f"unknown claim '{sorted(unknown)[0]}'; valid: {', '.join(CLAIMS)}")
    _SHARED[:] = [(weakref.ref(table), None, {})]
    try:
        return [check_one(table) for claim_id, check_one in CLAIMS.items() if claim_id in wanted]
    finally:
        _SHARED.clear()


def _final_points(table: pd.DataFrame) -> pd.DataFrame:
    """``final_points(table)``, shared by the checks of one ``check_all`` call (never modified in place)."""
    if _SHARED and _SHARED[0][0]() is table:
        if _SHARED[0][1] is None:
            _SHARED[0] = (_SHARED[0][0], final_points(table), _SHARED[0][2])
        return _SHARED[0][1]
    return final_points(table)
