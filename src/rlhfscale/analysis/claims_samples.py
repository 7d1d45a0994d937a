"""Claim checks on samples per prompt in RL (finding 4 of Hou et al. 2024), swept two ways.

The paper's sweep varies n with the prompts per step and the learning rate fixed, so each doubling of n doubles
the samples, and about the compute, of every RL step: ``samples_plateau`` reads it (cells hold
``rl.prompts_per_step`` fixed). The reviewers asked whether n still helps once compute is held fixed:
``samples_fixed_compute`` reads trials that vary n with the samples per step fixed (``rl.samples_per_step`` =
prompts per step x n; more samples per prompt, fewer prompts, about equal RL FLOPs a step). Beside it the detail
reports the paper's sweep per doubling of n, the same runs compared at equal RL FLOPs (each run's pass@1
interpolated along its curve at the largest RL compute every run of the cell reached), the gain per doubling of
RL FLOPs spent on more steps instead (along the curves), and each sweep's gain per 1e12 RL FLOPs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhfscale.analysis.claim_base import SESOI, Claim, held_fixed, make_claim, not_tested, pick, \
    shared_final_points, untested_reason
from rlhfscale.analysis.effects import ByLevel, early, early_minus_late, estimate, slope
from rlhfscale.analysis.stats import Estimate, directional
from rlhfscale.analysis.table import (
    FLOPS_RL, GAIN, PASS, RL_LR, RL_N_SAMPLES, RL_PPS, RL_SPS, SEED, STEP, TRIAL, config_of, has, levels,
)

EQUAL = "_pass@1_at_equal_flops"  # a run's pass@1 interpolated at its cell's common RL compute
SWEEP = "_sweep"  # which n sweep a final point belongs to (for the plot)
TFLOP = 1e12


def samples_plateau(table: pd.DataFrame) -> Claim:
    """The paper's sweep: n varied at a fixed prompts per step. Effect: how much less the metric rises per
    doubling of n from the middle to the largest n than from the smallest to the middle (the rise itself must
    exceed 0 too); cells hold the prompts per step fixed, so trials that change it with n stay out."""
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [RL_N_SAMPLES], [metric]):
        return not_tested("samples_plateau", reason)
    if levels(table, RL_N_SAMPLES) < 3:
        return not_tested("samples_plateau", f"a plateau needs three values of '{RL_N_SAMPLES}'")
    final = shared_final_points(table)
    fixed = sweep_keys(final, RL_PPS)
    rise = estimate(final, fixed, ByLevel(RL_N_SAMPLES, early), metric)
    drop = estimate(final, fixed, ByLevel(RL_N_SAMPLES, early_minus_late), metric)
    sesoi = SESOI["samples_plateau"]
    verdicts = {directional(rise, sesoi), directional(drop, sesoi)}
    plateau = ("not supported" if "not supported" in verdicts else
               "supported" if verdicts == {"supported"} else "inconclusive")
    lr = f"pooled over {RL_LR} {sorted(final[RL_LR].dropna().unique())}" if has(final, RL_LR) else "no lr axis"
    setting = _paper_setting(sweep_rows(final, fixed, metric))
    detail = (f"{metric} per doubling of n, smallest to middle n: {rise}; "
              f"how much less it rises from middle to largest n (effect): {drop}; both must exceed 0, "
              f"either below the smallest effect of interest is not supported; {lr}; {setting} "
              f"(the paper's sweep: each doubling of n doubles a step's samples and compute; samples_fixed_compute "
              f"compares n at fixed compute)")
    return make_claim("samples_plateau", drop, plateau, detail)


def samples_fixed_compute(table: pd.DataFrame) -> Claim:
    """The reviewers' sweep: n varied at a fixed number of samples per step (prompts per step = budget / n), so
    more samples per prompt cost no compute and take prompts away. Effect: the metric's change per doubling of n
    (least squares over the n levels, within cells of one samples-per-step budget), directional: supported when
    it is above 0, not supported when below the smallest effect of interest (the paper's gain from n was its
    compute). The paper's sweep, per doubling of n, at equal RL FLOPs and per FLOP, is reported beside it."""
    metric = pick(table, GAIN, PASS)
    if reason := untested_reason(table, [RL_N_SAMPLES], [metric]):
        return not_tested("samples_fixed_compute", reason)
    final = rl_final(table)
    paper = paper_sweep_text(table, final, metric)
    keys = sweep_keys(final, RL_SPS)
    rows = sweep_rows(final, keys, metric) if has(final, RL_SPS) else final.iloc[:0]
    est = estimate(final, keys, ByLevel(RL_N_SAMPLES, slope), metric) if len(rows) else Estimate.missing("")
    if not est.n_seeds:
        return not_tested("samples_fixed_compute", f"no sweep of n at a fixed number of samples per step: needs "
                          f"{fixed_samples_trials(final)}; {paper}")
    budgets = sorted(rows[RL_SPS].unique())
    detail = (f"n at a fixed {RL_SPS} ({', '.join(f'{b:g}' for b in budgets)}; {RL_PPS} = budget / n): {metric} per "
              f"doubling of n (effect): {est}; {flops_spread(rows)}; {per_tflop(rows, metric)}; {paper}")
    return make_claim("samples_fixed_compute", est, directional(est, SESOI["samples_fixed_compute"]), detail)


def rl_final(table: pd.DataFrame) -> pd.DataFrame:
    """Final points of the runs that trained by RL (RL compute recorded and above 0, where the table records it)."""
    final = shared_final_points(table)
    return final[final[FLOPS_RL].fillna(0) > 0] if has(final, FLOPS_RL) else final


def sweep_keys(final: pd.DataFrame, hold: str) -> list[str]:
    """What a cell of an n sweep holds fixed: every axis but n, the learning rate (pooled: often tuned per n) and
    the prompts per step, plus ``hold`` (``rl.prompts_per_step``: the paper's sweep; ``rl.samples_per_step``:
    the reviewers')."""
    keys = held_fixed(final, (RL_N_SAMPLES, RL_LR, RL_PPS))
    return keys + [hold] if has(final, hold) else keys


def sweep_rows(final: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """The final points in cells (seed x ``keys``) that hold two or more values of n with ``metric`` recorded."""
    rows = final[final[metric].notna() & final[RL_N_SAMPLES].notna()]
    if rows.empty:
        return rows
    n_levels = rows.groupby([SEED, *keys], dropna=False)[RL_N_SAMPLES].transform("nunique")
    return rows[n_levels.to_numpy() >= 2]


def at_equal_flops(table: pd.DataFrame, keys: list[str]) -> tuple[Estimate, pd.DataFrame]:
    """pass@1 per doubling of n with every run of a cell read at the same RL compute: the smallest final RL FLOPs
    in its cell, each run's pass@1 interpolated linearly in FLOPs between its curve's eval points (step 0 at 0
    FLOPs). Noise: the interpolated values' own spread over seeds (continuous, pooled over the sweep's runs).
    Returns the estimate and the runs with their interpolated value (``EQUAL``) and common compute (``FLOPS_RL``)."""
    rows = sweep_rows(rl_final(table), keys, PASS) if has(table, FLOPS_RL) else pd.DataFrame()
    if rows.empty:
        return Estimate.missing("no n sweep with RL curves"), rows
    curves = table[table[FLOPS_RL].notna() & table[PASS].notna()].sort_values([TRIAL, SEED, STEP], kind="stable")
    curves = curves[curves[TRIAL].isin(set(rows[TRIAL]))]
    by_run = {run: (g[FLOPS_RL].to_numpy(float), g[PASS].to_numpy(float))
              for run, g in curves.groupby([TRIAL, SEED], sort=False)}
    common = rows.groupby([SEED, *keys], dropna=False)[FLOPS_RL].transform("min").to_numpy(float)
    values = [_interpolate(*by_run[(trial, seed)], level) if (trial, seed) in by_run else np.nan
              for trial, seed, level in zip(rows[TRIAL], rows[SEED], common)]
    rows = rows.assign(**{EQUAL: values, FLOPS_RL: common})
    return estimate(rows, keys, ByLevel(RL_N_SAMPLES, slope), EQUAL, bounds=(0.0, 1.0)), rows


def _interpolate(flops: np.ndarray, values: np.ndarray, level: float) -> float:
    if not (flops.size and flops.min() <= level <= flops.max()):
        return np.nan
    return float(np.interp(level, flops, values))


def paper_sweep_text(table: pd.DataFrame, final: pd.DataFrame, metric: str) -> str:
    """The paper's sweep (n at a fixed prompts per step) per doubling of n, at equal RL FLOPs, per doubling of RL
    FLOPs along its curves (compute spent on more steps instead of more samples), and per 1e12 RL FLOPs."""
    keys = sweep_keys(final, RL_PPS)
    rows = sweep_rows(final, keys, metric)
    if rows.empty:
        return f"no sweep of n at a fixed {RL_PPS} (the paper's) to compare"
    per_n = estimate(final, keys, ByLevel(RL_N_SAMPLES, slope), metric)
    text = (f"the paper's sweep ({_paper_setting(rows)}, each doubling of n doubling a step's samples and "
            f"compute): {metric} per doubling of n: {per_n}")
    equal, runs = at_equal_flops(table, keys)
    if equal.n_seeds:
        low, high = runs[FLOPS_RL].min(), runs[FLOPS_RL].max()
        at = f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g} to {high:.3g} by cell"
        text += (f"; at equal RL FLOPs ({at}: the smallest n's final compute, each run's {PASS} interpolated "
                 f"along its curve), {PASS} per doubling of n: {equal}")
    points = table[(table[STEP] > 0) & (table[FLOPS_RL].fillna(0) > 0) & table[TRIAL].isin(set(rows[TRIAL]))] \
        if has(table, FLOPS_RL) else table.iloc[:0]
    if levels(points, FLOPS_RL) >= 2:
        steps = estimate(points, [TRIAL], ByLevel(FLOPS_RL, slope), PASS, curves=True, points=True)
        text += f"; along the same runs' curves, {PASS} per doubling of RL FLOPs spent on more steps: {steps}"
    return f"{text}; {per_tflop(rows, metric)}"


def _paper_setting(rows: pd.DataFrame) -> str:
    if has(rows, RL_PPS):
        return f"{RL_PPS} held fixed ({', '.join(f'{p:g}' for p in sorted(rows[RL_PPS].dropna().unique()))})"
    return f"{RL_PPS} not varied by the grid"


def per_tflop(rows: pd.DataFrame, metric: str) -> str:
    """Mean final ``metric`` per 1e12 RL FLOPs at each n (means over runs; descriptive, no interval)."""
    if not has(rows, FLOPS_RL):
        return "no RL FLOPs recorded"
    means = rows.groupby(RL_N_SAMPLES)[[metric, FLOPS_RL]].mean()
    parts = [f"n={n:g}: {TFLOP * m / f:+.3g} ({m:+.3g} over {f:.3g})" for n, (m, f) in means.iterrows()]
    return f"{metric} per 1e12 RL FLOPs (means, no interval): " + ", ".join(parts)


def flops_spread(rows: pd.DataFrame) -> str:
    """How equal the compute of a fixed-samples sweep was: mean final RL FLOPs of its smallest and largest n."""
    if not has(rows, FLOPS_RL):
        return "RL FLOPs not recorded"
    means = rows.groupby(RL_N_SAMPLES)[FLOPS_RL].mean()
    return (f"final RL FLOPs {means.iloc[0]:.3g} at n={means.index[0]:g}, {means.iloc[-1]:.3g} at "
            f"n={means.index[-1]:g} (ratio {means.iloc[-1] / means.iloc[0]:.3g})")


def fixed_samples_trials(final: pd.DataFrame) -> str:
    """The trials that sweep n at the base's samples per step, with the base's values where the table has them."""
    base = final[config_of(final[TRIAL]) == ""]
    n = base[RL_N_SAMPLES].dropna().iloc[0] if has(base, RL_N_SAMPLES) else None
    p = base[RL_PPS].dropna().iloc[0] if has(base, RL_PPS) else None
    half, double = (f"{n / 2:g}", f"{2 * n:g}") if n else ("N/2", "2N")
    more, fewer = (f"{2 * p:g}", f"{p / 2:g}") if p else ("2P", "P/2")
    return (f"{{rl.n_samples: {half}, rl.prompts_per_step: {more}}} and {{rl.n_samples: {double}, "
            f"rl.prompts_per_step: {fewer}}} beside the base's {f'{p:g}' if p else 'P'} prompts x "
            f"{f'{n:g}' if n else 'N'} samples per step" + ("" if p else " (P its rl.prompts_per_step)"))


def labelled_sweeps(table: pd.DataFrame) -> pd.DataFrame:
    """The final points of both n sweeps, labelled in ``SWEEP`` (a run in both appears twice): for the plot."""
    metric = pick(table, GAIN, PASS)
    final = rl_final(table)
    if not has(final, metric) or not has(final, RL_N_SAMPLES):
        return final.iloc[:0].assign(**{SWEEP: ""})
    parts = [sweep_rows(final, sweep_keys(final, RL_PPS), metric).assign(**{SWEEP: "prompts per step fixed"})]
    if has(final, RL_SPS):
        fixed = sweep_rows(final, sweep_keys(final, RL_SPS), metric)
        parts.append(fixed.assign(**{SWEEP: fixed[RL_SPS].map(lambda s: f"{s:g} samples per step")}))
    return pd.concat(parts, ignore_index=True)
