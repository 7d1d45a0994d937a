"""Reward over-optimization (Gao, Schulman & Hilton 2022) on a study's grid: the data, effects and fits of
the G1 checks.

Curves
    Best-of-N: every trial x seed whose ``bon`` stage judged its reward model on one pool gives a
    curve of the gold value of the response the RM picks among N (``bon/<rm>@N``: the verifier's
    accuracy, or the chat world's gold rater) and of the RM's own score of it
    (``bon/<rm>_proxy@N``), at d = sqrt(KL), KL = log N - (N - 1) / N (the analytic value, an
    upper bound). The trial's own RM is the one with a proxy curve (else ``orm``).
    RL: every RL curve whose reward is a learned RM (``rl.reward`` orm or prm; ``table.reward_kind``)
    gives its points along training (d = sqrt(rl/kl), ``rl/gold_reward``, ``rl/proxy_reward``, each
    the mean over a rollout batch); the step-0 point carries no measurement (``table.to_table``).
    A curve is one proxy RM and seed (``unit``: trial x seed); its configuration is the trial's
    (``table.config_of``).

Gains are changes from the start. Best-of-N starts at N = 1, the pool's mean. RL starts at the mean
of the curve's points with KL <= ``START_KL`` (step 1 samples the initial policy, logged when
``rl.eval_every`` is 1); a curve without such a point starts at its trial's Best-of-N pool mean,
the same policy on held-out prompts (the verdict's detail says how many did).

Effects, one number per curve (so points of a curve, however correlated, count once)
    rise     the least-squares change of gold over the lower half of the curve's d range
             (its slope on [d_min, mid] times mid - d_min; mid the range's midpoint)
    fall     minus the same over the upper half [mid, d_max]: > 0 when gold falls
    kl_gap   (one proxy RM and seed with both methods) Best-of-N's gold gain minus RL's at the d of
             every RL point past the start and within the Best-of-N range, Best-of-N interpolated
             linearly between its N, averaged over those points: > 0 when RL needs more KL for the
             same gold gain (at equal KL it has less).
``effects.unit_estimate`` averages them (configurations, then seeds) with its interval: the residual
variance of configuration + seed over the curves, as ``stats`` pools it over a grid's rows. The
points of a curve are not the units because they are not independent given the curve: Best-of-N's
picks are nested (the best of 64 is the best of one of its 32-subsets) and an RL run drifts.

Verdicts, decided as ``stats`` decides the others (smallest effects of interest in gold units, the
gold in [0, 1]: 0.01 is one point of the gold rater's scale)
    overoptimization_peak  per method, rise and fall each directional at SESOI 0.01: a method shows
                           the peak when both are supported; the claim is supported when a method
                           does (each method's intervals Bonferroni-widened to alpha / methods), not
                           supported when every method's rise or fall lies below 0.01, else
                           inconclusive (``min_detectable`` of the headline method's fall).
    rl_kl_cost             kl_gap directional at SESOI 0.01.

Fits: gold gain (and proxy gain) = d (alpha - beta d) for Best-of-N and d (alpha - beta log d) for
RL, per proxy-RM configuration and over all, by ``fits.fit_curves`` (each curve a replicate). The
fitted gold peaks at d* = alpha / (2 beta) (Best-of-N) and d* = exp(alpha / beta - 1) (RL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rlhfscale.analysis.effects import unit_estimate
from rlhfscale.analysis.fits import Fit, fit_curves
from rlhfscale.analysis.stats import Estimate
from rlhfscale.analysis.table import (
    GOLD_REWARD, KL, PROXY_REWARD, SEED, STEP, TRIAL, config_of, final_points, reward_kind,
)

START_KL = 0.01  # nats: points at most this far from the initial policy measure the start
BON_COLUMN = re.compile(r"^bon/(?P<rm>orm|genrm|llrm|prm_[a-z]+)(?P<proxy>_proxy)?@(?P<n>\d+)$")
FORMS = {"bon": "bon_gold", "rl": "rl_gold"}
METHODS = {"bon": "Best-of-N", "rl": "RL"}
POINT_COLUMNS = ["unit", "config", SEED, "d", "gold", "proxy", "gold_gain", "proxy_gain"]


def bon_kl(n: np.ndarray | float) -> np.ndarray:
    """KL(Best-of-N || policy) = log N - (N - 1) / N (Stiennon et al. 2020; an upper bound)."""
    n = np.asarray(n, dtype=float)
    return np.log(n) - (n - 1) / n


@dataclass(frozen=True)
class Curves:
    """Both methods' points (columns ``POINT_COLUMNS``, plus ``n`` or ``step``) and how RL curves started."""

    bon: pd.DataFrame
    rl: pd.DataFrame
    rl_started_from_bon: int = 0  # RL curves whose start is their Best-of-N pool mean

    def of(self, method: str) -> pd.DataFrame:
        return self.bon if method == "bon" else self.rl

    @property
    def methods(self) -> list[str]:
        return [m for m in ("bon", "rl") if not self.of(m).empty]


def _units(trials: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    return np.array([f"{t}|{s}" for t, s in zip(trials, seeds)], dtype=object)


def _configs(trials: np.ndarray) -> np.ndarray:
    uniques, at = np.unique(trials.astype(str), return_inverse=True)
    return config_of(pd.Series(uniques, dtype=object)).to_numpy(dtype=object)[at]


def bon_curves(final: pd.DataFrame) -> pd.DataFrame:
    """One row per trial x seed x N of every Best-of-N curve (the trial's own RM)."""
    names: dict[str, dict[int, list[str | None]]] = {}
    for column in final.columns:
        if m := BON_COLUMN.match(column):
            names.setdefault(m["rm"], {}).setdefault(int(m["n"]), [None, None])[bool(m["proxy"])] = column
    trials, seeds = final[TRIAL].to_numpy(dtype=object), final[SEED].to_numpy()
    frames, taken = [], np.zeros(len(final), dtype=bool)
    for name in sorted(names, key=lambda rm: (not any(p for _, p in names[rm].values()), rm != "orm")):
        ns = sorted(n for n, (gold, _) in names[name].items() if gold)
        if len(ns) < 2 or ns[0] != 1:
            continue
        gold = np.column_stack([final[names[name][n][0]].to_numpy(dtype=float) for n in ns])
        proxy = np.column_stack([final[names[name][n][1]].to_numpy(dtype=float) if names[name][n][1]
                                 else np.full(len(final), np.nan) for n in ns])
        own = ~taken & np.isfinite(gold).all(axis=1) & (np.isfinite(proxy).all(axis=1) | (name == "orm"))
        taken |= own
        if not own.any():
            continue
        g, p, k = gold[own], proxy[own], len(ns)
        rows = np.repeat(np.flatnonzero(own), k)
        frames.append(pd.DataFrame({
            "unit": _units(trials[rows], seeds[rows]), "config": _configs(trials[rows]), SEED: seeds[rows],
            "d": np.tile(np.sqrt(bon_kl(np.array(ns))), own.sum()), "gold": g.ravel(), "proxy": p.ravel(),
            "gold_gain": (g - g[:, :1]).ravel(), "proxy_gain": (p - p[:, :1]).ravel(),
            "n": np.tile(np.array(ns), own.sum()), "rm": name,
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=POINT_COLUMNS + ["n", "rm"])


def rl_curves(table: pd.DataFrame, bon: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The points of every RL curve against a learned RM, with gains from its start; and how many curves
    started from their Best-of-N pool mean (no point at the start)."""
    empty = pd.DataFrame(columns=POINT_COLUMNS + [STEP, "start"])
    if KL not in table or GOLD_REWARD not in table:
        return empty, 0
    keep = (table[STEP] > 0).to_numpy() & table[KL].notna().to_numpy() & table[GOLD_REWARD].notna().to_numpy()
    if not keep.any():
        return empty, 0
    keep[keep] = reward_kind(table[keep]).isin(["orm", "prm"]).to_numpy()
    if not keep.any():
        return empty, 0
    rows = table[keep]
    kl = rows[KL].to_numpy(dtype=float).clip(min=0.0)
    gold = rows[GOLD_REWARD].to_numpy(dtype=float)
    proxy = rows[PROXY_REWARD].to_numpy(dtype=float) if PROXY_REWARD in rows else np.full(kl.size, np.nan)
    trials, seeds = rows[TRIAL].to_numpy(dtype=object), rows[SEED].to_numpy()
    unit = _units(trials, seeds)
    start = kl <= START_KL
    units, at = np.unique(unit, return_inverse=True)
    counts = np.bincount(at[start], minlength=units.size).astype(float)
    known = start & np.isfinite(proxy)
    with np.errstate(invalid="ignore", divide="ignore"):
        base_gold = np.bincount(at[start], weights=gold[start], minlength=units.size) / counts
        base_proxy = (np.bincount(at[known], weights=proxy[known], minlength=units.size)
                      / np.bincount(at[known], minlength=units.size))
    from_bon = 0
    if not bon.empty:
        first = bon[bon["n"] == 1]
        pool = dict(zip(first["unit"], zip(first["gold"], first["proxy"])))
        for i, name in enumerate(units):
            if counts[i] == 0 and name in pool:
                base_gold[i], base_proxy[i] = pool[name]
                from_bon += 1
    points = pd.DataFrame({
        "unit": unit, "config": _configs(trials), SEED: seeds, "d": np.sqrt(kl),
        "gold": gold, "proxy": proxy, "gold_gain": gold - base_gold[at], "proxy_gain": proxy - base_proxy[at],
        STEP: rows[STEP].to_numpy(), "start": start,
    })
    return points, from_bon


def curves(table: pd.DataFrame) -> Curves:
    """Both methods' curves from the tidy table."""
    columns = [c for c in table.columns if BON_COLUMN.match(c)]
    final = final_points(table[[TRIAL, SEED, STEP, *columns]]) if columns else table.iloc[:0]
    bon = bon_curves(final)
    rl, from_bon = rl_curves(table, bon)
    return Curves(bon, rl, from_bon)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    return float(x @ (y - y.mean()) / (x @ x))


def rise_and_fall(d: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(rise, fall) of one curve, as the module says (NaN where a half has fewer than two distinct d)."""
    d, gold = np.asarray(d, dtype=float), np.asarray(gold, dtype=float)
    ok = np.isfinite(d) & np.isfinite(gold)
    d, gold = d[ok], gold[ok]
    if d.size < 3:
        return np.nan, np.nan
    low, high = d.min(), d.max()
    mid = (low + high) / 2
    lower, upper = d <= mid, d >= mid
    if np.unique(d[lower]).size < 2 or np.unique(d[upper]).size < 2:
        return np.nan, np.nan
    return (_slope(d[lower], gold[lower]) * (mid - low), -_slope(d[upper], gold[upper]) * (high - mid))


def _by_unit(points: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """(unit, row positions) of every curve, in order of first appearance."""
    units, first, at = np.unique(points["unit"].to_numpy(dtype=object).astype(str), return_index=True,
                                 return_inverse=True)
    order = np.argsort(first)
    return [(units[i], np.flatnonzero(at == i)) for i in order]


def per_curve(points: pd.DataFrame) -> pd.DataFrame:
    """rise and fall of every curve (index ``unit``; columns config, seed, rise, fall, d_max)."""
    d, gold = points["d"].to_numpy(dtype=float), points["gold"].to_numpy(dtype=float)
    config, seed = points["config"].to_numpy(dtype=object), points[SEED].to_numpy()
    rows = []
    for unit, at in _by_unit(points):
        rise, fall = rise_and_fall(d[at], gold[at])
        rows.append((unit, config[at[0]], seed[at[0]], rise, fall, d[at].max()))
    return pd.DataFrame(rows, columns=["unit", "config", SEED, "rise", "fall", "d_max"]).set_index("unit")


def kl_gaps(c: Curves) -> pd.DataFrame:
    """kl_gap of every proxy RM and seed with both a Best-of-N and an RL curve (index ``unit``)."""
    columns = ["unit", "config", SEED, "kl_gap", "points"]
    if c.bon.empty or c.rl.empty:
        return pd.DataFrame(columns=columns).set_index("unit")
    bon_at = dict(_by_unit(c.bon))
    bon_d, bon_gain = c.bon["d"].to_numpy(dtype=float), c.bon["gold_gain"].to_numpy(dtype=float)
    d, gain = c.rl["d"].to_numpy(dtype=float), c.rl["gold_gain"].to_numpy(dtype=float)
    past = ~c.rl["start"].to_numpy(dtype=bool) & np.isfinite(gain)
    config, seed = c.rl["config"].to_numpy(dtype=object), c.rl[SEED].to_numpy()
    rows = []
    for unit, at in _by_unit(c.rl):
        if unit not in bon_at:
            continue
        order = bon_at[unit][np.argsort(bon_d[bon_at[unit]])]
        within = at[past[at] & (d[at] <= bon_d[order].max())]
        if within.size == 0:
            continue
        gap = np.interp(d[within], bon_d[order], bon_gain[order]) - gain[within]
        rows.append((unit, config[at[0]], seed[at[0]], float(gap.mean()), within.size))
    return pd.DataFrame(rows, columns=columns).set_index("unit")


def estimate_of(units: pd.DataFrame, column: str, what: str) -> Estimate:
    """``effects.unit_estimate`` of one per-curve effect; a gold change lies in [-1, 1] (gold in [0, 1])."""
    return unit_estimate(units["config"].to_numpy(), units[SEED].to_numpy(), units[column].to_numpy(dtype=float),
                         bounds=(-1.0, 1.0), what=what)


def fits(c: Curves, value: str = "gold_gain") -> dict[str, dict[object, Fit]]:
    """Per method, the Gao et al. form fitted to ``value`` per configuration (key: its id) and over all
    curves (key None), starting points excluded (their gain is 0 by construction)."""
    out = {}
    for method in c.methods:
        points = c.of(method)
        points = points[points["d"].gt(np.sqrt(START_KL)) & points[value].notna()]
        if points.empty:
            continue
        with np.errstate(all="ignore"):
            found = fit_curves(FORMS[method], points["d"], points[value], points["unit"], points["config"])
        if found:
            out[method] = found
    return out


def peak(fit: Fit) -> float:
    """The d at which a fitted gold curve peaks (inf: it never turns down)."""
    alpha, beta = fit.params["alpha"], fit.params["beta"]
    if beta <= 0:
        return np.inf if alpha > 0 or beta < 0 else 0.0
    if fit.form == "bon_gold":
        return float(max(alpha / (2 * beta), 0.0))
    return float(np.exp(alpha / beta - 1)) if alpha / beta < 20 else np.inf  # d* > 1e8: no turn in sight


def describe_fit(fit: Fit) -> str:
    """``alpha +a [lo, hi], beta +b [lo, hi], peak at d = ...``."""
    parts = [f"{k} {v:+.3g} [{fit.ci[k][0]:+.3g}, {fit.ci[k][1]:+.3g}]" for k, v in fit.params.items()]
    d_star = peak(fit)
    where = "never turns down" if not np.isfinite(d_star) else f"peak at d = {d_star:.3g}"
    return f"{', '.join(parts)}, {where}"


def fit_record(fit: Fit) -> dict[str, object]:
    """A fit as plain values for claims.json."""
    return {"form": fit.form, "params": fit.params, "ci": {k: list(v) for k, v in fit.ci.items()},
            "stderr": fit.stderr, "df": fit.df if fit.df is not None else fit.n - len(fit.params),
            "n_points": fit.n, "r2": fit.r2, "peak_d": peak(fit), "basis": fit.basis}
