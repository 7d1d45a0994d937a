"""Claim checks: each finding of Hou et al. 2024 tested on the user's grid.

Every check reads the tidy table (``table.to_table``) and returns a ``Claim``.
An effect is computed in *cells*: the rows that share a seed and every other
setting the check holds fixed, so comparisons are paired by seed. Cell effects
are averaged per seed and bootstrapped over seeds (``fits.mean_ci``: the
percentile bootstrap, widened to Student's t where that is wider, since a
handful of seeds is the usual case). With one seed the interval comes from
bootstrapping over cells (trials), or, for slope effects of a single cell, over
its points; otherwise the verdict is "inconclusive" with the effect still
reported. Verdicts compare the interval with a null (and, where a claim
is about size or shape, with a threshold); they never lean toward the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlhfscale.analysis.fits import bootstrap_ci, fit_log_linear, mean_ci
from rlhfscale.analysis.table import (
    AXES, BON_RM, DATA_PROMPTS, DATA_RPP, DATA_VOLUME, DIVERGED, FLOPS_RL, FLOPS_SFT, GAIN,
    GAIN_REL, PASS, PASS_BEFORE, PASS_OOD, POLICY_PARAMS, POLICY_SIZE, REWARD_STD, RL_ALGORITHM,
    RL_LR, RL_N_SAMPLES, RL_SHAPING, RM_KIND, RM_PAIR_ACC, RM_PARAMS, RM_SIZE, SEED, STEP, TASK,
    TRIAL, final_points, has, levels,
)

VERDICTS = ("supported", "not supported", "inconclusive", "not tested")
N_BOOT = 2000
N_POINT_BOOT = 400
NEGLIGIBLE_SLOPE = 0.005  # accuracy per doubling below which "grows" is not supported
MODEST_GAIN = 0.05  # a policy gain below this (absolute accuracy) is "modest"
EQUIVALENCE_MARGIN = 0.05  # final-accuracy difference within which PPO ~ GRPO
RM_CONTEXT = (RM_KIND, RM_SIZE, RM_PARAMS, TASK)
ORDER = "_order"
LOG_STD = "_log_reward_std"
STABILITY = (  # (column, sign that makes "shaping helps" positive, label)
    (PASS, 1.0, f"final {PASS}, shaped minus none"),
    (DIVERGED, -1.0, "divergence rate, none minus shaped"),
    (LOG_STD, -1.0, f"log {REWARD_STD}, none minus shaped"),
)

CellFn = Callable[[pd.DataFrame], float]


@dataclass(frozen=True)
class Claim:
    """One finding checked on the grid; ``plot`` names its PNG once drawn."""

    id: str
    title: str
    verdict: str
    effect: float
    ci_low: float
    ci_high: float
    n_seeds: int
    detail: str
    plot: str | None = None


@dataclass(frozen=True)
class Estimate:
    """An effect with its bootstrap interval and what the interval resampled."""

    value: float
    low: float
    high: float
    n_seeds: int
    basis: str

    def __str__(self) -> str:
        interval = "" if np.isnan(self.low) else f" [{self.low:+.4g}, {self.high:+.4g}]"
        return f"{self.value:+.4g}{interval} ({self.basis})"


def estimate(table: pd.DataFrame, keys: list[str], cell_fn: CellFn, *, points: bool = False) -> Estimate:
    """Effect of ``cell_fn`` over cells (seed x ``keys``), bootstrapped as the module says."""
    cells = [cell for _, cell in table.groupby([SEED, *keys], dropna=False)]
    values = np.array([cell_fn(cell) for cell in cells], dtype=float)
    usable = np.isfinite(values)
    if not usable.any():
        return Estimate(np.nan, np.nan, np.nan, 0, "no cell holds the levels to compare")
    seeds = np.array([cell[SEED].iloc[0] for cell in cells])[usable]
    per_seed = pd.Series(values[usable]).groupby(seeds).mean().to_numpy()
    if per_seed.size >= 2:
        return Estimate(*mean_ci(per_seed, n_boot=N_BOOT), per_seed.size, f"over {per_seed.size} seeds")
    if usable.sum() >= 2:
        return Estimate(*mean_ci(values[usable], n_boot=N_BOOT), 1, f"over {usable.sum()} trials, one seed")
    cell = cells[int(np.flatnonzero(usable)[0])]
    if points and len(cell) >= 4:
        stat = lambda idx: cell_fn(cell.iloc[idx.astype(int)])  # noqa: E731
        boot = bootstrap_ci(np.arange(len(cell)), stat=stat, n_boot=N_POINT_BOOT)
        return Estimate(*boot, 1, f"over {len(cell)} points of one seed and cell")
    return Estimate(float(values[usable][0]), np.nan, np.nan, 1, "one seed and cell: no interval")


def verdict(supported: bool, refuted: bool) -> str:
    """The verdict from two interval tests (a NaN bound makes both tests False)."""
    return "supported" if supported else "not supported" if refuted else "inconclusive"


def directional(est: Estimate, negligible: float = 0.0) -> str:
    """Supported when the interval is above 0; not supported when it lies at or below ``negligible``."""
    return verdict(est.low > 0, est.high <= negligible)


def equivalent(est: Estimate, margin: float) -> str:
    """Supported when the interval lies within +-margin; not supported when wholly outside it."""
    return verdict(-margin <= est.low and est.high <= margin, est.low > margin or est.high < -margin)


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


def level_means(cell: pd.DataFrame, factor: str, metric: str) -> pd.Series:
    """Mean of ``metric`` per level of ``factor`` (levels sorted, missing values skipped)."""
    codes, uniques = pd.factorize(cell[factor], sort=True)
    y = cell[metric].to_numpy(dtype=float)
    keep = (codes >= 0) & np.isfinite(y)
    sums = np.bincount(codes[keep], weights=y[keep], minlength=len(uniques))
    counts = np.bincount(codes[keep], minlength=len(uniques))
    return pd.Series(sums[counts > 0] / counts[counts > 0], index=uniques[counts > 0])


def slope_per_doubling(cell: pd.DataFrame, factor: str, metric: str) -> float:
    """Least-squares slope of the level means against log2 of the factor."""
    means = level_means(cell, factor, metric)
    if len(means) < 2:
        return np.nan
    return float(np.polyfit(np.log2(means.index.to_numpy(float)), means.to_numpy(), 1)[0])


def largest_minus_smallest(cell: pd.DataFrame, factor: str, metric: str) -> float:
    means = level_means(cell, factor, metric)
    return float(means.iloc[-1] - means.iloc[0]) if len(means) >= 2 else np.nan


def level_difference(cell: pd.DataFrame, factor: str, metric: str, a: str, b: str) -> float:
    means = level_means(cell, factor, metric)
    return float(means[a] - means[b]) if a in means and b in means else np.nan


def _claim(claim_id: str, est: Estimate, outcome: str, detail: str) -> Claim:
    if est.n_seeds == 0:
        return not_tested(claim_id, f"{est.basis}; {detail}")
    return Claim(claim_id, TITLES[claim_id], outcome, est.value, est.low, est.high, est.n_seeds, detail)


def not_tested(claim_id: str, reason: str) -> Claim:
    return Claim(claim_id, TITLES[claim_id], "not tested", np.nan, np.nan, np.nan, 0, reason)


def _rm_keys(table: pd.DataFrame, *extra: str) -> list[str]:
    """What an RM-quality cell holds fixed: the RM's kind, size and task (plus ``extra``)."""
    return [a for a in (*RM_CONTEXT, *extra) if has(table, a)]


def rm_data_volume(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_VOLUME], [metric]):
        return not_tested("rm_data_volume", reason)
    final = final_points(table)
    est = estimate(final, _rm_keys(final), lambda c: slope_per_doubling(c, DATA_VOLUME, metric), points=True)
    detail = f"slope of {metric} per doubling of labelled volume (prompts x responses): {est}"
    return _claim("rm_data_volume", est, directional(est, NEGLIGIBLE_SLOPE), detail)


def prompt_diversity(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_PROMPTS, DATA_RPP], [metric]):
        return not_tested("prompt_diversity", reason)
    final = final_points(table)
    est = estimate(final, _rm_keys(final, DATA_VOLUME), lambda c: largest_minus_smallest(c, DATA_PROMPTS, metric))
    detail = (f"{metric} with the most prompts minus with the fewest (more responses each), "
              f"at equal labelled volume: {est}")
    return _claim("prompt_diversity", est, directional(est), detail)


def prm_vs_orm(table: pd.DataFrame) -> Claim:
    metric = pick(table, BON_RM, RM_PAIR_ACC)
    if reason := untested_reason(table, [DATA_VOLUME, RM_KIND], [metric], {RM_KIND: {"prm", "orm"}}):
        return not_tested("prm_vs_orm", reason)
    final = final_points(table)

    def slope_gap(cell: pd.DataFrame) -> float:
        prm, orm = (slope_per_doubling(cell[cell[RM_KIND] == k], DATA_VOLUME, metric) for k in ("prm", "orm"))
        return prm - orm

    est = estimate(final, [k for k in _rm_keys(final) if k != RM_KIND], slope_gap)
    detail = f"PRM minus ORM slope of {metric} per doubling of labelled volume: {est}"
    fixed = held_fixed(final, (RM_KIND,))
    for label, column in (("targeted pass@1", PASS), ("other-task pass@1", PASS_OOD)):
        if has(final, column):
            side = estimate(final, fixed, lambda c, m=column: level_difference(c, RM_KIND, m, "prm", "orm"))
            detail += f"; PRM minus ORM {label}: {side}"
    return _claim("prm_vs_orm", est, directional(est), detail)


def _early_late(cell: pd.DataFrame, metric: str) -> tuple[float, float]:
    """Gain per doubling of n from the smallest to the middle n, and from the middle to the largest."""
    means = level_means(cell, RL_N_SAMPLES, metric)
    if len(means) < 3:
        return np.nan, np.nan
    n, g, mid = np.log2(means.index.to_numpy(float)), means.to_numpy(), len(means) // 2
    return (g[mid] - g[0]) / (n[mid] - n[0]), (g[-1] - g[mid]) / (n[-1] - n[mid])


def samples_plateau(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [RL_N_SAMPLES], [metric]):
        return not_tested("samples_plateau", reason)
    if levels(table, RL_N_SAMPLES) < 3:
        return not_tested("samples_plateau", f"a plateau needs three values of '{RL_N_SAMPLES}'")
    final = final_points(table)
    fixed = held_fixed(final, (RL_N_SAMPLES, RL_LR))
    early = estimate(final, fixed, lambda c: _early_late(c, metric)[0])
    drop = estimate(final, fixed, lambda c: np.subtract(*_early_late(c, metric)))
    plateau = verdict(early.low > 0 and drop.low > 0, early.high <= 0 or drop.high <= 0)
    lr = f"pooled over {RL_LR} {sorted(final[RL_LR].dropna().unique())}" if has(final, RL_LR) else "no lr axis"
    detail = (f"{metric} per doubling of n, smallest to middle n: {early}; "
              f"how much less it rises from middle to largest n (effect): {drop}; {lr}")
    return _claim("samples_plateau", drop, plateau, detail)


def _with_size_order(table: pd.DataFrame, size: str, params: str) -> pd.DataFrame:
    """The final points with a numeric ``_order`` column ranking model sizes."""
    final = final_points(table)
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
    rl = estimate(final, fixed, lambda c: largest_minus_smallest(c, ORDER, metric))
    modest = verdict(rl.low > 0 and rl.high < MODEST_GAIN, rl.high <= 0 or rl.low >= MODEST_GAIN)
    detail = f"RL: largest minus smallest RM, policy {metric}: {rl} (modest: within (0, {MODEST_GAIN}))"
    if has(final, BON_RM):
        bon = estimate(final, fixed, lambda c: largest_minus_smallest(c, ORDER, BON_RM))
        shortfall = estimate(final, fixed, lambda c: largest_minus_smallest(c, ORDER, BON_RM)
                             - largest_minus_smallest(c, ORDER, metric))
        detail += f"; Best-of-16: largest minus smallest RM, {BON_RM}: {bon}; BoN gain minus RL gain: {shortfall}"
    return _claim("rm_size_modest", rl, modest, detail)


def policy_size(table: pd.DataFrame) -> Claim:
    if reason := _size_reason(table, POLICY_SIZE, POLICY_PARAMS, [GAIN]):
        return not_tested("policy_size", reason)
    final = _with_size_order(table, POLICY_SIZE, POLICY_PARAMS)
    fixed = held_fixed(final, (POLICY_SIZE, POLICY_PARAMS, RL_LR))  # lr is often tuned per size
    gap = estimate(final, fixed, lambda c: -largest_minus_smallest(c, ORDER, GAIN))
    detail = f"smallest minus largest policy, absolute {GAIN}: {gap}"
    if has(final, GAIN_REL):
        rel = estimate(final, fixed, lambda c: -largest_minus_smallest(c, ORDER, GAIN_REL))
        detail += f"; relative to the starting accuracy ({GAIN_REL}): {rel}"
    if has(final, PASS_BEFORE):
        start = estimate(final, fixed, lambda c: largest_minus_smallest(c, ORDER, PASS_BEFORE))
        detail += f"; largest minus smallest starting accuracy: {start}"
    return _claim("policy_size", gap, directional(gap), detail)


def ppo_vs_grpo(table: pd.DataFrame) -> Claim:
    if reason := untested_reason(table, [RL_ALGORITHM], [PASS], {RL_ALGORITHM: {"ppo", "grpo"}}):
        return not_tested("ppo_vs_grpo", reason)
    final = final_points(table)
    est = estimate(final, held_fixed(final, (RL_ALGORITHM, RL_LR)),
                   lambda c: level_difference(c, RL_ALGORITHM, PASS, "ppo", "grpo"))
    detail = f"PPO minus GRPO final {PASS}: {est}; similar = interval within +-{EQUIVALENCE_MARGIN}"
    return _claim("ppo_vs_grpo", est, equivalent(est, EQUIVALENCE_MARGIN), detail)


def _shaped_minus_none(cell: pd.DataFrame, metric: str) -> float:
    """Mean over the shaping variants in the cell of (variant - none)."""
    means = level_means(cell, RL_SHAPING, metric)
    if "none" not in means or len(means) < 2:
        return np.nan
    return float(means.drop("none").mean() - means["none"])


def _stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Final points with log reward std; divergence dropped when no run diverged (it tells nothing apart)."""
    final = final_points(table)
    if has(final, REWARD_STD):
        final = final.assign(**{LOG_STD: np.log(final[REWARD_STD].where(final[REWARD_STD] > 0))})
    if has(final, DIVERGED) and not final[DIVERGED].any():
        final = final.drop(columns=DIVERGED)
    return final


def shaping_stability(table: pd.DataFrame) -> Claim:
    final = _stability_table(table)
    indicators = [(m, sign, label) for m, sign, label in STABILITY if has(final, m)]
    if reason := untested_reason(table, [RL_SHAPING], [] if indicators else [PASS], {RL_SHAPING: {"none"}}):
        return not_tested("shaping_stability", reason)
    fixed = held_fixed(final, (RL_SHAPING,))
    ests = [(label, estimate(final, fixed, lambda c, m=m, s=sign: s * _shaped_minus_none(c, m)))
            for m, sign, label in indicators]
    better = [(label, e) for label, e in ests if e.low > 0]
    worse = [(label, e) for label, e in ests if e.high < 0]
    label, headline = (better or worse or ests)[0]
    variants = sorted(set(final[RL_SHAPING].dropna()) - {"none"})
    detail = (f"shaping {variants} vs none, positive = shaping helps; effect: {label}; "
              + "; ".join(f"{name}: {e}" for name, e in ests))
    return _claim("shaping_stability", headline, verdict(bool(better) and not worse, bool(worse) and not better), detail)


def _concavity(curve: pd.DataFrame, metric: str) -> float:
    """Slope per doubling of RL compute at the curve's start minus at its end (quadratic in log2 FLOPs)."""
    points = level_means(curve[curve[FLOPS_RL] > 0], FLOPS_RL, metric)
    if len(points) < 3:
        return np.nan
    log_flops = np.log2(points.index.to_numpy(float))
    curvature = np.polyfit(log_flops, points.to_numpy(), 2)[0]
    return float(-2 * curvature * (log_flops.max() - log_flops.min()))


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
    est = estimate(table, [TRIAL], lambda c: _concavity(c, metric), points=True)
    detail = (f"{metric} slope per doubling of {FLOPS_RL}, early minus late along each RL curve: {est}; "
              f"RL {metric} overall: {_per_doubling(table[FLOPS_RL], table[metric])}")
    if has(table, FLOPS_SFT) and has(table, PASS_BEFORE):
        final = final_points(table)
        detail += f"; SFT {PASS_BEFORE} vs {FLOPS_SFT}: {_per_doubling(final[FLOPS_SFT], final[PASS_BEFORE])}"
    return _claim("diminishing_returns", est, directional(est), detail)


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
}


def check(claim_id: str, table: pd.DataFrame) -> Claim:
    """Run one claim check by id; an unknown id lists the valid ones."""
    if claim_id not in CLAIMS:
        raise KeyError(f"unknown claim '{claim_id}'; valid: {', '.join(CLAIMS)}")
    return CLAIMS[claim_id](table)


def check_all(table: pd.DataFrame) -> list[Claim]:
    """Every claim check, in registry order."""
    return [check_one(table) for check_one in CLAIMS.values()]
