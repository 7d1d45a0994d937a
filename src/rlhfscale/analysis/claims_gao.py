"""Reward over-optimization as Gao et al. (2022) measured it: the gold reward peaks then falls as the
proxy RM is optimized (Best-of-N and RL), and RL spends more KL than Best-of-N for the same gold gain
(per-curve effects and the d(a - b d) / d(a - b log d) fits of ``analysis.overopt``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhfscale.analysis import overopt
from rlhfscale.analysis.claim_base import SESOI, Claim, both_hold, cached, make_claim, not_tested
from rlhfscale.analysis.stats import ALPHA, directional


def _g1(table: pd.DataFrame) -> tuple[overopt.Curves, dict]:
    """Best-of-N and RL over-optimization curves and their gold fits."""
    def compute():
        found = overopt.curves(table)
        return found, overopt.fits(found)
    return cached(table, "g1", compute)


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
    return make_claim("overoptimization_peak", parts[headline][1], outcome, detail, alpha=alpha, fits=records or None)


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
    return make_claim("rl_kl_cost", est, directional(est, SESOI["rl_kl_cost"]), detail, fits=records or None)


