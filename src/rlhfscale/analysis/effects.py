"""Effects as weights on rows: the contrasts the claim checks compare, and their estimates.

A *contrast* (``ByLevel``, or a ``Both`` of two) maps a cell -- the rows sharing a seed and the
settings a check holds fixed -- to weights on its rows, or None when the cell lacks the levels it
needs; the cell's effect is ``sum w y``. Each level of the varied factor is the mean of its rows
with a value, so a level's weight is shared equally among them. ``estimate`` averages the cells of
each seed, then the seeds, and attaches the standard error, degrees of freedom and range that
``rlhfscale.analysis.stats`` describes.

``unit_estimate`` is the same for effects measured whole on each unit (a curve's rise, one number per
configuration and seed) rather than as weights on rows: the units are the rows, so the noise of
points within a curve, however correlated, is counted through the units' spread alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from rlhfscale.analysis.stats import (
    PRIOR_DF, SOURCE, Estimate, Noise, combine_codes, config_codes, dispersion, effect_bounds, floored, group_codes,
    noise_model, row_bounds,
)
from rlhfscale.analysis.table import BON_N, EVAL_N, PASS_BEFORE, SEED, STEP, TRIAL

LevelWeights = Callable[[np.ndarray], "np.ndarray | None"]
Columns = dict[str, np.ndarray]
N_POINT_BOOT = 400


@dataclass(frozen=True)
class ByLevel:
    """``combine`` (sorted level values -> level weights) over the levels of ``factor``, times ``sign``,
    on the rows where ``where`` = (column, value) holds (all rows when None)."""

    factor: str
    combine: LevelWeights
    sign: float = 1.0
    where: tuple[str, object] | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.factor,) + ((self.where[0],) if self.where else ())

    def __call__(self, cols: Columns, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(row positions, weights) within ``rows`` (positions into ``cols``), or None."""
        if self.where is not None:
            rows = rows[cols[self.where[0]][rows] == self.where[1]]
        factors = cols[self.factor][rows]
        rows = rows[~pd.isna(factors)]
        if rows.size == 0:
            return None
        uniques, codes = np.unique(cols[self.factor][rows], return_inverse=True)
        weights = self.combine(uniques)
        if weights is None:
            return None
        counts = np.bincount(codes, minlength=len(uniques))
        return rows, self.sign * np.asarray(weights, dtype=float)[codes] / counts[codes]


@dataclass(frozen=True)
class Both:
    """The sum of two contrasts, defined where both are."""

    first: ByLevel
    second: ByLevel

    @property
    def columns(self) -> tuple[str, ...]:
        return self.first.columns + self.second.columns

    def __call__(self, cols: Columns, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        a, b = self.first(cols, rows), self.second(cols, rows)
        return None if a is None or b is None else (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))


Contrast = ByLevel | Both


def _log2(levels: np.ndarray) -> np.ndarray:
    return np.log2(levels.astype(float))


def slope(levels: np.ndarray) -> np.ndarray | None:
    """Least-squares slope of the level means against log2 of the level: change per doubling."""
    if len(levels) < 2:
        return None
    centred = _log2(levels) - _log2(levels).mean()
    return centred / (centred @ centred)


def last_minus_first(levels: np.ndarray) -> np.ndarray | None:
    """The largest level's mean minus the smallest's."""
    if len(levels) < 2:
        return None
    weights = np.zeros(len(levels))
    weights[[0, -1]] = (-1.0, 1.0)
    return weights


def largest(levels: np.ndarray) -> np.ndarray | None:
    """The largest level's own mean (in a cell that compares at least two levels)."""
    if len(levels) < 2:
        return None
    weights = np.zeros(len(levels))
    weights[-1] = 1.0
    return weights


def first_minus_last(levels: np.ndarray) -> np.ndarray | None:
    weights = last_minus_first(levels)
    return None if weights is None else -weights


def difference(a: object, b: object) -> LevelWeights:
    """Level ``a``'s mean minus level ``b``'s."""
    def weights(levels: np.ndarray) -> np.ndarray | None:
        found = list(levels)
        if a not in found or b not in found:
            return None
        out = np.zeros(len(levels))
        out[found.index(a)], out[found.index(b)] = 1.0, -1.0
        return out
    return weights


def others_minus(baseline: object) -> LevelWeights:
    """The mean over the other levels of (level - ``baseline``)."""
    def weights(levels: np.ndarray) -> np.ndarray | None:
        found = list(levels)
        if baseline not in found or len(found) < 2:
            return None
        out = np.full(len(levels), 1.0 / (len(levels) - 1))
        out[found.index(baseline)] = -1.0
        return out
    return weights


def _early_late(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Change per doubling from the smallest to the middle level, and from the middle to the largest."""
    if len(levels) < 3:
        return None
    x, mid = _log2(levels), len(levels) // 2
    early_w, late_w = np.zeros(len(levels)), np.zeros(len(levels))
    early_w[[0, mid]] = np.array([-1.0, 1.0]) / (x[mid] - x[0])
    late_w[[mid, -1]] = np.array([-1.0, 1.0]) / (x[-1] - x[mid])
    return early_w, late_w


def early(levels: np.ndarray) -> np.ndarray | None:
    parts = _early_late(levels)
    return None if parts is None else parts[0]


def early_minus_late(levels: np.ndarray) -> np.ndarray | None:
    """How much less the mean rises per doubling in the upper half of the levels than in the lower."""
    parts = _early_late(levels)
    return None if parts is None else parts[0] - parts[1]


def concavity(levels: np.ndarray) -> np.ndarray | None:
    """Slope per doubling at the smallest level minus at the largest, of a quadratic in log2 level."""
    if len(levels) < 3:
        return None
    x = _log2(levels)
    return -2 * (x.max() - x.min()) * np.linalg.pinv(np.vander(x, 3))[0]


def _cells(codes: np.ndarray, cols: Columns, contrast: Contrast) -> dict[object, list[tuple[np.ndarray, np.ndarray]]]:
    """Per seed, (dense weights, row positions) of every cell whose contrast is defined (it needs two rows)."""
    order = np.argsort(codes, kind="stable")
    out: dict[object, list[tuple[np.ndarray, np.ndarray]]] = {}
    for rows in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        found = contrast(cols, rows) if rows.size >= 2 else None
        if found is None or not np.all(np.isfinite(found[1])):
            continue
        dense = np.zeros(codes.size)
        np.add.at(dense, found[0], found[1])
        out.setdefault(cols[SEED][rows[0]], []).append((dense, rows))
    return out


def compared_noise(cols: Columns, cells: dict, metric: str, curves: bool) -> Noise:
    """The noise model pooled over the configurations the contrast compares (every seed of each), not the whole
    grid: a configuration whose seeds move apart in another way (RL against a reward model at chance, a policy of
    another size from its own start) breaks the additive seed blocks, and its residuals would widen every
    interval. Falls back to the whole grid's where the compared ones hold no seed replicates."""
    noise = noise_model(cols, metric, curves=curves)
    used = np.zeros(cols[SEED].size, dtype=bool)
    for found in cells.values():
        for dense, _ in found:
            used |= dense != 0
    config = config_codes(cols[TRIAL])
    within = np.isin(config, np.unique(config[used]))
    if within.all():
        return noise
    local = noise_model({k: v[within] for k, v in cols.items()}, metric, curves=curves)
    if local.residual_df <= 0:
        return noise
    return replace(noise, phi=local.phi, df=local.df, residual_df=local.residual_df)


def estimate(rows: pd.DataFrame, keys: list[str], contrast: Contrast, metric: str, *, curves: bool = False,
             points: bool = False, bounds: tuple[float, float] | None = None) -> Estimate:
    """Effect of ``contrast`` over the cells (seed x ``keys``) of ``rows`` on ``metric``, as the module says.

    ``curves``: the rows are RL-curve points (their noise blocks are curves); ``points``: one cell of
    one seed may be bootstrapped over its rows; ``bounds``: each row's range, where not the metric's.
    """
    keep = rows[metric].notna().to_numpy()
    needed = {SEED, TRIAL, STEP, metric, SOURCE.get(metric, metric), PASS_BEFORE, EVAL_N, BON_N, *keys,
              *contrast.columns}
    cols = {c: rows[c].to_numpy()[keep] for c in needed if c in rows}
    cells = _cells(group_codes(cols, [SEED, *keys]), cols, contrast)
    if not cells:
        return Estimate.missing("no cell holds the levels to compare")
    noise = compared_noise(cols, cells, metric, curves)
    per_seed = [np.mean([w for w, _ in found], axis=0) for found in cells.values()]
    only = next(iter(cells.values()))
    units = per_seed if len(per_seed) >= 2 else [w for w, _ in only]  # one seed: its cells are the replicates
    weights = np.mean(units, axis=0)
    y = cols[metric].astype(float)
    lows, highs = row_bounds(cols, metric) if bounds is None else (
        np.full(y.size, bounds[0]), np.full(y.size, bounds[1]))
    value, span = float(weights @ y), effect_bounds(weights, lows, highs)
    if noise.residual_df > 0:  # seed replicates somewhere in the grid: the pooled model
        se = float(np.sqrt(noise.phi * (weights**2 @ noise.scale)))
        return Estimate(value, se, noise.df, len(per_seed), f"over {len(per_seed)} seeds; {noise.describe()}", *span)
    variances = np.array([w**2 @ noise.scale for w in units])
    if len(units) >= 2:
        se, df = _replicate_se(np.array([w @ y for w in units]), variances, noise.binomial)
        what = "seeds" if len(per_seed) >= 2 else "trials, one seed"
        return Estimate(value, se, df, len(per_seed), f"over {len(units)} {what}", *span)
    if points and (boot := _bootstrap(cols, cell := only[0][1], contrast, metric)) is not None:
        spread, df = floored(boot**2, cell.size - 2.0, variances[0]) if noise.binomial else (boot**2, cell.size - 2.0)
        return Estimate(value, float(np.sqrt(spread)), df, 1,
                        f"over {cell.size} points of one seed and cell (bootstrap)", *span)
    if noise.binomial:
        return Estimate(value, float(np.sqrt(variances[0])), PRIOR_DF, 1,
                        "one seed and cell: binomial noise assumed", *span)
    return Estimate(value, np.nan, np.nan, 1, "one seed and cell: no interval", *span)


def _replicate_se(effects: np.ndarray, variances: np.ndarray, binomial: bool) -> tuple[float, float]:
    """Standard error of the mean of replicate effects; a proportion's spread is floored by binomial noise."""
    n = effects.size
    spread, df = effects.var(ddof=1), n - 1.0
    if binomial:
        spread, df = floored(spread, df, variances.mean())
    return float(np.sqrt(spread / n)), df


def _bootstrap(cols: Columns, cell: np.ndarray, contrast: Contrast, metric: str) -> float | None:
    """Standard deviation of the effect over resamples of one cell's rows (None: fewer than 4 rows)."""
    if cell.size < 4:
        return None
    draws = cell[np.random.default_rng(0).integers(0, cell.size, size=(N_POINT_BOOT, cell.size))]
    boot = []
    for rows in draws:
        local = {c: v[rows] for c, v in cols.items()}
        found = contrast(local, np.arange(rows.size))
        boot.append(np.nan if found is None else float(found[1] @ local[metric][found[0]].astype(float)))
    boot = np.asarray(boot)
    boot = boot[np.isfinite(boot)]
    return float(boot.std(ddof=1)) if boot.size >= 2 else None


def unit_estimate(config: np.ndarray, seed: np.ndarray, values: np.ndarray,
                  bounds: tuple[float, float] = (-np.inf, np.inf), what: str = "units") -> Estimate:
    """The mean over seeds of each seed's mean over configurations of per-unit effects, with an interval.

    ``values[i]`` is unit i's effect (``config[i]``, ``seed[i]``; NaN: no effect measured). With seed
    replicates the noise is the residual variance of the two-way fit configuration + seed (the model
    ``stats`` pools over the grid, each unit a row with scale 1), on (configurations - 1) x (seeds - 1)
    degrees of freedom in a full grid; without residual degrees of freedom the seeds' means are the
    replicates, with one seed the configurations, and a single unit has no interval. ``bounds``: the
    range one unit's effect can take.
    """
    keep = np.isfinite(np.asarray(values, dtype=float))
    y = np.asarray(values, dtype=float)[keep]
    if y.size == 0:
        return Estimate.missing(f"no {what} to measure")
    config, seed = np.asarray(config, dtype=object)[keep], np.asarray(seed, dtype=object)[keep]
    seeds, seed_at = np.unique(seed.astype(str), return_inverse=True)
    per_seed = np.bincount(seed_at)
    weights = 1.0 / (len(seeds) * per_seed[seed_at])
    value = float(weights @ y)
    span = (float(bounds[0]), float(bounds[1]))
    phi, df = dispersion(y, np.ones(y.size), combine_codes(config), combine_codes(seed))
    if df > 0:
        se = float(np.sqrt(phi * (weights**2).sum()))
        return Estimate(value, se, df, len(seeds), f"{y.size} {what} over {len(seeds)} seeds; residual "
                        f"variance of configuration + seed on {df:g} df", *span)
    means = np.bincount(seed_at, weights=y) / per_seed
    if len(seeds) >= 2:
        return Estimate(value, float(means.std(ddof=1) / np.sqrt(means.size)), means.size - 1.0, len(seeds),
                        f"{y.size} {what}, over {len(seeds)} seeds' means", *span)
    if y.size >= 2:
        return Estimate(value, float(y.std(ddof=1) / np.sqrt(y.size)), y.size - 1.0, 1,
                        f"over {y.size} {what} of one seed", *span)
    return Estimate(value, np.nan, np.nan, 1, f"one {what[:-1] if what.endswith('s') else what}: no interval", *span)
