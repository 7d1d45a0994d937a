"""Effects, intervals, smallest detectable effects and verdicts for the claim checks.

Effects are linear contrasts
    A check states its effect as weights on the rows of a *cell* (the rows that share a seed and
    every setting the check holds fixed): a slope per doubling, a difference of level means, a
    curvature. A seed's effect is the mean of its cells', the estimate the mean over seeds, so the
    estimate is ``sum_r W_r y_r`` with known weights ``W_r`` on the table's rows.

Noise model: binomial-aware, pooled over the grid
    ``var(y_r) = phi * s_r``, independent across rows once a configuration effect and a block effect
    are removed (the block is the seed, whose trials share their SFT start; along RL curves it is
    the curve). For a proportion over N evaluation items (pass@1 over N prompts, pair accuracy over
    N pairs, a divergence flag: N = 1 run) ``s_r = p (1 - p) / N``, p the configuration's mean over
    seeds moved half an item off 0 and 1, so ``phi`` is the dispersion relative to binomial noise;
    for any other metric ``s_r = 1``. N comes from a count column (``eval.n_prompts``,
    ``bon.prompts``) where the table has one, else from the values' granularity (the smallest N
    making every value a multiple of 1/N; values on no such grid are continuous). The test prompts
    are fixed per task, so the intervals speak about this evaluation set averaged over training
    seeds; the binomial term, counted separately for every row, is conservative for differences of
    trials scored on the same prompts.

    ``phi`` is estimated from the residuals of the weighted two-way fit (configuration + block)
    pooled over every configuration recording the metric: (configurations - 1) x (seeds - 1)
    degrees of freedom in a full grid, not seeds - 1, which with two seeds gave a t multiplier of
    12.7. Configurations whose values agree at every seed are one measurement (every RL trial of a
    seed carries its SFT start's accuracy) and count once. For a proportion binomial noise is a soft
    floor: an estimate below 1 is raised to ``phi = (D0 + df phi^) / (D0 + df)``, one above is kept,
    and t has ``D0 + df`` degrees of freedom (``PRIOR_DF`` = D0, ``floored``), so seeds that tie on
    a 1/N-step accuracy never give a zero-width interval, and many seeds outweigh the floor.
    ``se^2 = phi * sum_r W_r^2 s_r``; the interval is ``estimate +- t se``, clipped to the range the
    weights allow given each row's range (an accuracy in [0, 1], a gain in [-before, 1 - before]).
    A gain compared across different SFT starts adds the starting accuracy's noise, from its own
    model (``Estimate.with_noise_of``, Welch-Satterthwaite degrees of freedom).

Fallbacks
    With no seed replicate of any configuration the replicates are the units that exist: the
    seeds' effects, else (one seed) the cells' effects, their spread floored by binomial noise the
    same way; a single cell of one seed uses a bootstrap over its points where the check allows,
    else the binomial noise alone (``PRIOR_DF`` degrees of freedom), else it has no interval.

Decisions (``directional``, ``equivalent``)
    Every claim has a smallest effect of interest (SESOI, in the metric's units). A directional
    claim is "not supported" when the 95 % interval lies below the SESOI (the effect is negligible
    or of the other sign: one side of a two one-sided test), else "supported" when it lies above 0,
    else "inconclusive": at a true effect of 0 "supported" is wrong at most 2.5 % of the time, at a
    true effect of one SESOI "not supported" is. A "similar" / "modest" claim is supported when the
    interval lies within +-SESOI (two one-sided tests) and not supported when it lies wholly
    outside. ``min_detectable`` is the effect found 80 % of the time at this standard error:
    ``(t_0.975 + t_0.80) se`` for a direction, ``(t_0.975 + t_0.90) se`` for the smallest margin an
    equivalence test could confirm at a true difference of 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from rlhfscale.analysis.table import (
    BON_N, BON_ORACLE, BON_RM, DIVERGED, EVAL_N, GAIN, PASS, PASS_BEFORE, PASS_OOD, RM_PAIR_ACC, SEED,
    SEED_SUFFIX, STEP, TRIAL,
)

ALPHA = 0.05
POWER = 0.8
PRIOR_DF = 4.0
MAX_ITEMS = 20000
FEW_VALUES_MAX_ITEMS = 1000
GRID_TOL = 1e-7  # float32 accuracies are within ~6e-8 of k / N
PROPORTIONS = (RM_PAIR_ACC, BON_RM, BON_ORACLE, PASS_BEFORE, PASS, PASS_OOD, DIVERGED)
SOURCE = {GAIN: PASS}  # a gain's evaluation noise is its pass@1's (the start cancels within a seed)
COUNTS = {PASS: EVAL_N, PASS_BEFORE: EVAL_N, PASS_OOD: EVAL_N, BON_RM: BON_N, BON_ORACLE: BON_N}
FIXED_ITEMS = {DIVERGED: 1.0}
Columns = Mapping[str, object]  # a DataFrame, or a dict of equally long arrays


@dataclass(frozen=True)
class Noise:
    """One metric's noise model on a set of rows: ``var(y_r) = phi * scale_r``."""

    scale: np.ndarray
    phi: float
    df: float  # of the interval's t (the binomial floor's included)
    binomial: bool
    items: float
    residual_df: float = 0.0  # from seed replicates alone: 0 means the grid has none to pool

    def describe(self) -> str:
        kind = f"binomial, N = {self.items:g}" if self.binomial else "continuous"
        return f"noise {kind}, dispersion {self.phi:.3g} on {self.df:g} df"


@dataclass(frozen=True)
class Estimate:
    """An effect, its standard error and degrees of freedom, the range it can take, and its basis."""

    value: float
    se: float
    df: float
    n_seeds: int
    basis: str
    lower: float = -np.inf
    upper: float = np.inf

    @classmethod
    def missing(cls, basis: str) -> Estimate:
        return cls(np.nan, np.nan, np.nan, 0, basis)

    def interval(self, alpha: float = ALPHA) -> tuple[float, float]:
        """The two-sided (1 - alpha) interval, clipped to the effect's range (NaNs when there is none)."""
        if not (np.isfinite(self.se) and self.df > 0):
            return (np.nan, np.nan)
        half = t_quantile(1 - alpha / 2, self.df) * self.se
        return (float(np.clip(self.value - half, self.lower, self.upper)),
                float(np.clip(self.value + half, self.lower, self.upper)))

    @property
    def low(self) -> float:
        return self.interval()[0]

    @property
    def high(self) -> float:
        return self.interval()[1]

    def min_detectable(self, *, equivalence: bool = False, power: float = POWER, alpha: float = ALPHA) -> float:
        """The smallest effect (or equivalence margin) found with probability ``power`` at this se."""
        if not (np.isfinite(self.se) and self.df > 0):
            return np.nan
        beta = (1 - power) / 2 if equivalence else 1 - power
        return float((t_quantile(1 - alpha / 2, self.df) + t_quantile(1 - beta, self.df)) * self.se)

    def with_noise_of(self, other: Estimate) -> Estimate:
        """This estimate with ``other``'s noise added as independent (Welch-Satterthwaite df).

        For a gain compared across different SFT starts: the pass@1 contrast's noise plus the starting
        accuracy's, each from its own noise model, where the gain's own model sees only the first.
        """
        parts = np.array([self.se, other.se]) ** 2
        dfs = np.array([self.df, other.df])
        if not np.all(np.isfinite(parts)) or not np.all(dfs > 0):
            return self
        df = parts.sum() ** 2 / np.sum(parts**2 / dfs) if parts.sum() > 0 else min(dfs)
        return replace(self, se=float(np.sqrt(parts.sum())), df=float(df))

    def text(self, alpha: float = ALPHA) -> str:
        """The value, its (1 - alpha) interval and its basis."""
        low, high = self.interval(alpha)
        interval = "" if np.isnan(low) else f" [{low:+.4g}, {high:+.4g}]"
        return f"{self.value:+.4g}{interval} ({self.basis})"

    def __str__(self) -> str:
        return self.text()


def directional(est: Estimate, sesoi: float, alpha: float = ALPHA) -> str:
    """Not supported when the interval lies below ``sesoi``; supported when it lies above 0."""
    low, high = est.interval(alpha)
    return "not supported" if high < sesoi else "supported" if low > 0 else "inconclusive"


def equivalent(est: Estimate, margin: float, alpha: float = ALPHA) -> str:
    """Supported when the interval lies within +-margin; not supported when wholly outside it."""
    low, high = est.interval(alpha)
    inside, outside = -margin < low and high < margin, low > margin or high < -margin
    return "supported" if inside else "not supported" if outside else "inconclusive"


def items_from_values(values: np.ndarray) -> float:
    """The smallest N making every value in [0, 1] a multiple of 1/N (NaN when none up to ``MAX_ITEMS``).

    Values 0 and 1 say nothing about N; when nothing else is there, N = 1 (each value one
    Bernoulli outcome), the widest noise the values allow. Values from no grid can agree with one
    by chance: for three or more informative values that chance is ~3e-4 up to ``MAX_ITEMS``;
    fewer must fit a grid of at most ``FEW_VALUES_MAX_ITEMS`` (chance ~1e-5 for two).
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() < -GRID_TOL or values.max() > 1 + GRID_TOL:
        return np.nan
    inner = np.unique(values[(values > GRID_TOL) & (values < 1 - GRID_TOL)])
    if inner.size == 0:
        return 1.0
    candidates = np.arange(1, (MAX_ITEMS if inner.size >= 3 else FEW_VALUES_MAX_ITEMS) + 1, dtype=float)
    for value in inner:
        scaled = value * candidates
        candidates = candidates[np.abs(scaled - np.round(scaled)) <= GRID_TOL * candidates]
        if candidates.size == 0:
            return np.nan
        every = inner * candidates[0]  # the smallest candidate left fits every value: it is the answer
        if np.all(np.abs(every - np.round(every)) <= GRID_TOL * candidates[0]):
            return float(candidates[0])
    return float(candidates[0])


def combine_codes(*columns: object) -> np.ndarray:
    """One integer per row naming its combination of values (a missing value is a level of its own)."""
    codes = None
    for column in columns:
        level, uniques = pd.factorize(column, use_na_sentinel=False)
        codes = level if codes is None else pd.factorize(codes * (len(uniques) + 1) + level)[0]
    return np.asarray(codes, dtype=np.int64)


def group_codes(rows: Columns, keys: list[str]) -> np.ndarray:
    """``combine_codes`` of the columns ``keys`` of ``rows``."""
    return combine_codes(*(np.asarray(rows[k]) for k in keys))


def config_codes(trials: np.ndarray) -> np.ndarray:
    """Codes of each row's configuration (``table.config_of``), computed once per distinct trial id."""
    codes, uniques = pd.factorize(trials)
    configs = [_without_seed(str(trial)) for trial in uniques]
    return pd.factorize(np.array(configs, dtype=object))[0][codes]


@lru_cache(maxsize=65536)
def _without_seed(trial: str) -> str:
    return re.sub(SEED_SUFFIX, "", trial)


@lru_cache(maxsize=4096)
def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (cached: the checks ask for the same few many times)."""
    return float(stats.t.ppf(q, df))


def _items(rows: Columns, metric: str, source: str) -> np.ndarray:
    """Evaluation items behind each row's value: a count column, a fixed count, or the values' grid."""
    values = np.asarray(rows[source], dtype=float)
    if metric in FIXED_ITEMS:
        return np.full(values.size, FIXED_ITEMS[metric])
    inferred = items_from_values(values)
    if COUNTS.get(source) not in rows:
        return np.full(values.size, inferred)
    counts = np.asarray(rows[COUNTS[source]], dtype=float)
    return np.where(np.isnan(counts), inferred, counts)


def row_scale(rows: Columns, metric: str, fixed: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """Per-row binomial variance ``p (1 - p) / N`` (p the mean of the row's ``fixed`` group), or 1."""
    source = SOURCE.get(metric, metric)
    ones = np.ones(fixed.size)
    if source not in PROPORTIONS or source not in rows:
        return ones, False, np.nan
    n = _items(rows, metric, source)
    if np.isnan(n).all():
        return ones, False, np.nan
    values = np.asarray(rows[source], dtype=float)
    known = ~np.isnan(values)
    sums = np.bincount(fixed[known], weights=values[known], minlength=fixed.max() + 1)
    counts = np.bincount(fixed[known], minlength=fixed.max() + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (sums / counts)[fixed]
        p = (p * n + 0.5) / (n + 1)
        scale = p * (1 - p) / n
    scale = np.where(np.isfinite(scale), scale, np.nanmax(scale) if np.isfinite(scale).any() else 0.25)
    return scale, True, float(np.nanmedian(n))  # n has a finite entry (checked above)


def dispersion(y: np.ndarray, scale: np.ndarray, fixed: np.ndarray, block: np.ndarray) -> tuple[float, float]:
    """(phi, df) from the weighted least-squares residuals of y ~ fixed + block (df 0: nothing to estimate)."""
    n_fixed, n_block = fixed.max() + 1, block.max() + 1
    design = np.zeros((y.size, n_fixed + n_block - 1))
    design[np.arange(y.size), fixed] = 1.0
    later = block > 0
    design[np.flatnonzero(later), n_fixed + block[later] - 1] = 1.0
    root_w = 1 / np.sqrt(scale)
    coef, _, rank, _ = np.linalg.lstsq(design * root_w[:, None], y * root_w, rcond=None)
    df = y.size - rank
    if df <= 0:
        return np.nan, 0.0
    residual = (y - design @ coef) * root_w
    return float(residual @ residual / df), float(df)


def distinct_measurements(config: np.ndarray, seed: np.ndarray, step: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask keeping one configuration of each set whose values agree at every (seed, step).

    Such configurations share one measurement -- every RL trial of a seed carries its SFT start's
    accuracy, and trials differing only downstream of a stage carry that stage's metrics -- and
    counted apart they would add residuals of zero, shrinking the pooled dispersion.
    """
    first: dict[tuple, int] = {}
    keep_config = {}
    for code in np.unique(config):
        at = config == code
        signature = tuple(sorted(zip(seed[at].tolist(), step[at].tolist(), y[at].tolist())))
        keep_config[code] = first.setdefault(signature, code) == code
    return np.array([keep_config[c] for c in config], dtype=bool)


def noise_model(rows: Columns, metric: str, *, curves: bool = False) -> Noise:
    """The pooled noise model of ``metric`` on rows that all hold a value of it (``scale`` in row order).

    Configuration effects (x step along curves) and seed blocks (curve blocks along curves), fitted
    on distinct measurements (``distinct_measurements``).
    """
    y = np.asarray(rows[metric], dtype=float)
    if y.size == 0:
        return Noise(np.ones(0), np.nan, 0.0, False, np.nan, 0.0)
    trial, step, seed = (np.asarray(rows[k]) for k in (TRIAL, STEP, SEED))
    config = config_codes(trial)
    fixed = combine_codes(config, step) if curves else config
    block = combine_codes(trial, seed) if curves else combine_codes(seed)
    scale, binomial, items = row_scale(rows, metric, fixed)
    keep = distinct_measurements(config, seed, step, y)
    phi, residual_df = dispersion(y[keep], scale[keep], combine_codes(fixed[keep]), combine_codes(block[keep]))
    phi, df = floored(phi, residual_df, 1.0) if binomial else (phi, residual_df)
    return Noise(scale, phi, df, binomial, items, residual_df)


def floored(estimate: float, df: float, floor: float) -> tuple[float, float]:
    """A variance estimate on ``df`` degrees of freedom, raised toward ``floor`` (worth ``PRIOR_DF`` df)
    when below it, kept when above; with ``PRIOR_DF + df`` degrees of freedom."""
    estimate = 0.0 if df <= 0 or not np.isfinite(estimate) else float(estimate)
    return max(estimate, (PRIOR_DF * floor + df * estimate) / (PRIOR_DF + df)), PRIOR_DF + df


def metric_bounds(metric: str) -> tuple[float, float]:
    """The range a single value of ``metric`` can take (a gain's widest: [-1, 1])."""
    return (0.0, 1.0) if metric in PROPORTIONS else (-1.0, 1.0) if metric == GAIN else (-np.inf, np.inf)


def metric_items(table: pd.DataFrame, metric: str) -> float:
    """Evaluation items behind ``metric``'s values (NaN when it is not a proportion or shows no 1/N grid)."""
    source = SOURCE.get(metric, metric)
    if source not in PROPORTIONS or source not in table:
        return np.nan
    items = _items(table, metric, source)
    return float(np.nanmedian(items)) if np.isfinite(items).any() else np.nan


def mean_interval(values: np.ndarray, metric: str, items: float = np.nan,
                  alpha: float = ALPHA) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed values, the interval inside the metric's range.

    A proportion over N items: the between-seed variance floored by ``p (1 - p) / N`` (``floored``;
    so one seed, or seeds that tie, still get a width); otherwise Student's t on the seeds alone (no
    interval from one value).
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (np.nan, np.nan, np.nan)
    mean, n, (lo, hi) = float(values.mean()), values.size, metric_bounds(metric)
    spread, df = (values.var(ddof=1), n - 1.0) if n >= 2 else (np.nan, 0.0)
    if np.isfinite(items) and items > 0:
        source_mean = mean if metric != GAIN else np.nan
        p = (source_mean * items + 0.5) / (items + 1) if np.isfinite(source_mean) else 0.5
        spread, df = floored(spread, df, p * (1 - p) / items)
    if df <= 0:
        return (mean, np.nan, np.nan)
    half = t_quantile(1 - alpha / 2, df) * np.sqrt(spread / n)
    return (mean, float(np.clip(mean - half, lo, hi)), float(np.clip(mean + half, lo, hi)))


def row_bounds(rows: Columns, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The range each row's value can take: [0, 1] for a proportion, [-before, 1 - before] for a gain."""
    n = len(rows[metric])
    if metric in PROPORTIONS:
        return np.zeros(n), np.ones(n)
    if metric == GAIN and PASS_BEFORE in rows:
        before = np.asarray(rows[PASS_BEFORE], dtype=float)
        return np.nan_to_num(-before, nan=-1.0), np.nan_to_num(1 - before, nan=1.0)
    if metric == GAIN:
        return -np.ones(n), np.ones(n)
    return np.full(n, -np.inf), np.full(n, np.inf)


def effect_bounds(weights: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:
    """The smallest and largest ``sum w y`` over rows with each y in its range (weights 0 ignore a row)."""
    used = weights != 0
    w, lo, hi = weights[used], lows[used], highs[used]
    return float(np.where(w > 0, w * lo, w * hi).sum()), float(np.where(w > 0, w * hi, w * lo).sum())
