"""Scaling-curve fits with parameter uncertainty, and bootstrap intervals (``bootstrap_ci``, ``mean_ci``).

Every fit is ordinary (unweighted) least squares by ``scipy.optimize.curve_fit``;
standard errors come from its covariance (scaled by the residual variance) and
confidence intervals use Student's t with n - p degrees of freedom. ``Fit.band``
gives the pointwise confidence band of the fitted curve by the delta method
(the curve's gradient in the parameters through their covariance, the same t),
clipped to a range when one is given. ``fit_curves`` fits a form that is linear in its parameters to
several curves at once, each curve a replicate (see there). Forms:

    power_law    y = a * x**b
    saturating   y = c - a * x**(-b)          (accuracies approaching a ceiling c)
    log_linear   y = a + b * log(x)
    bon_gold     r = d * (alpha - beta * d)         Gao et al. 2022, Best-of-N, d = sqrt(KL)
    rl_gold      r = d * (alpha - beta * log(d))    Gao et al. 2022, RL, d = sqrt(KL)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats


def power_law(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * x**b


def saturating(x: np.ndarray, c: float, a: float, b: float) -> np.ndarray:
    return c - a * x ** (-b)


def log_linear(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a + b * np.log(x)


def bon_gold(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return d * (alpha - beta * d)


def rl_gold(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return alpha * d - beta * _d_log_d(d)


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d * log(d), continued by its limit 0 at d = 0."""
    d = np.asarray(d, dtype=float)
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


FORMS: dict[str, Callable[..., np.ndarray]] = {
    "power_law": power_law,
    "saturating": saturating,
    "log_linear": log_linear,
    "bon_gold": bon_gold,
    "rl_gold": rl_gold,
}
PARAMS: dict[str, tuple[str, ...]] = {
    "power_law": ("a", "b"),
    "saturating": ("c", "a", "b"),
    "log_linear": ("a", "b"),
    "bon_gold": ("alpha", "beta"),
    "rl_gold": ("alpha", "beta"),
}


@dataclass(frozen=True)
class Fit:
    """A fitted form: parameters, standard errors, (1 - alpha) CIs and goodness of fit."""

    form: str
    params: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2: float
    rmse: float
    n: int
    cov: np.ndarray | None = field(default=None, compare=False, repr=False)
    df: float | None = None  # of the intervals' t, where not n - p (``fit_curves``)
    basis: str = ""

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """The fitted curve at ``x``."""
        return FORMS[self.form](np.asarray(x, dtype=float), *self.params.values())

    def band(self, x, *, alpha: float = 0.05, bounds: tuple[float, float] = (-np.inf, np.inf)):
        """Pointwise (1 - alpha) confidence band (low, high) of the curve at ``x``, clipped to ``bounds``."""
        x = np.asarray(x, dtype=float)
        values = np.array(list(self.params.values()))
        if self.cov is None or not np.all(np.isfinite(self.cov)):
            return np.full(x.shape, np.nan), np.full(x.shape, np.nan)
        form, steps = FORMS[self.form], 1e-6 * np.maximum(1.0, np.abs(values)) * np.eye(values.size)
        grad = np.array([(form(x, *(values + step)) - form(x, *(values - step))) / (2 * step.sum()) for step in steps])
        spread = np.sqrt(np.einsum("ix,ij,jx->x", grad, self.cov, grad))
        df = self.df if self.df is not None else self.n - values.size
        half = stats.t.ppf(1 - alpha / 2, df) * spread
        centre = self.predict(x)
        return np.clip(centre - half, *bounds), np.clip(centre + half, *bounds)


def fit_power_law(x, y, *, alpha: float = 0.05) -> Fit:
    """y = a * x**b for x > 0; the start comes from a log-log line."""
    x, y = _points(x, y, 2, positive_x=True)
    sign = np.sign(np.mean(y))
    if np.all(y * sign > 0):
        b0, log_a0 = np.polyfit(np.log(x), np.log(y * sign), 1)
        p0 = (sign * np.exp(log_a0), b0)
    else:
        p0 = (float(np.mean(y)), 0.0)
    return _least_squares("power_law", x, y, p0, alpha=alpha)


def fit_saturating(x, y, *, alpha: float = 0.05) -> Fit:
    """y = c - a * x**(-b) with b > 0, for x > 0 (accuracy rising to a ceiling c)."""
    x, y = _points(x, y, 3, positive_x=True)
    c0 = y.max() + 0.1 * max(np.ptp(y), 1e-3)
    slope, log_a0 = np.polyfit(np.log(x), np.log(c0 - y), 1)
    p0 = (c0, np.exp(log_a0), max(-slope, 1e-3))
    bounds = ([-np.inf, -np.inf, 0.0], [np.inf, np.inf, np.inf])
    return _least_squares("saturating", x, y, p0, bounds=bounds, alpha=alpha)


def fit_log_linear(x, y, *, alpha: float = 0.05) -> Fit:
    """y = a + b * log(x) for x > 0 (b is the change per e-fold of x)."""
    x, y = _points(x, y, 2, positive_x=True)
    b0, a0 = np.polyfit(np.log(x), y, 1)
    return _least_squares("log_linear", x, y, (a0, b0), alpha=alpha)


def fit_bon_gold(d, r, *, alpha: float = 0.05) -> Fit:
    """Best-of-N gold reward r = d * (alpha - beta * d), d = sqrt(KL) >= 0."""
    d, r = _points(d, r, 2, nonnegative_x=True)
    p0 = _linear_start(np.column_stack([d, -d * d]), r)
    return _least_squares("bon_gold", d, r, p0, alpha=alpha)


def fit_rl_gold(d, r, *, alpha: float = 0.05) -> Fit:
    """RL gold reward r = d * (alpha - beta * log d), d = sqrt(KL) >= 0."""
    d, r = _points(d, r, 2, nonnegative_x=True)
    p0 = _linear_start(np.column_stack([d, -_d_log_d(d)]), r)
    return _least_squares("rl_gold", d, r, p0, alpha=alpha)


LINEAR_DESIGNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # forms linear in their parameters
    "bon_gold": lambda d: np.column_stack([d, -d * d]),
    "rl_gold": lambda d: np.column_stack([d, -_d_log_d(d)]),
    "log_linear": lambda x: np.column_stack([np.ones_like(x), np.log(x)]),
}


def fit_curves(form: str, x, y, curve, group=None, *, alpha: float = 0.05) -> dict[object, Fit]:
    """One fit per group of curves (and ``None``: all curves), each curve a replicate.

    ``form`` must be linear in its parameters (``LINEAR_DESIGNS``). Every curve (points sharing a
    ``curve`` id, e.g. one seed's) with more points than parameters is fitted by least squares on its
    own; a group's parameters are the mean of its curves' and their standard errors come from the
    spread of those curves' parameters around their group's mean, pooled over the groups (so the
    points of one curve are never taken as independent, and groups of two curves still get an
    interval from the others), t on ``sum(curves - 1)`` degrees of freedom; the fit over all curves
    uses their spread around the overall mean (between-group differences included). Where no group
    has two curves, the group's points are fitted together and the intervals are the ordinary
    least-squares ones, which take the points as independent (``basis`` says so).
    """
    design = LINEAR_DESIGNS[form]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    curve = np.asarray(curve, dtype=object)
    group = np.full(x.size, None, dtype=object) if group is None else np.asarray(group, dtype=object)
    p = len(PARAMS[form])
    per_curve: dict[object, tuple[object, np.ndarray]] = {}
    for c in dict.fromkeys(curve.tolist()):
        at = curve == c
        if at.sum() > p and np.unique(x[at]).size >= p:
            per_curve[c] = (group[at][0], np.linalg.lstsq(design(x[at]), y[at], rcond=None)[0])
    groups = list(dict.fromkeys(g for g, _ in per_curve.values()))
    by_group = {g: np.array([v for h, v in per_curve.values() if h == g]) for g in groups}
    residuals = [v - v.mean(axis=0) for v in by_group.values() if len(v) >= 2]
    df = float(sum(len(r) - 1 for r in residuals))
    pooled = sum(r.T @ r for r in residuals) / df if df > 0 else None
    out: dict[object, Fit] = {}
    for g in groups + ([None] if len(groups) > 1 else []):
        members = np.vstack(list(by_group.values())) if g is None else by_group[g]
        at = np.ones(x.size, dtype=bool) if g is None else group == g
        at &= np.isin(curve, [c for c, (h, _) in per_curve.items() if g is None or h == g])
        if g is None and len(members) >= 2 and len(groups) > 1:
            cov, fit_df = np.cov(members.T, ddof=1) / len(members), len(members) - 1.0
            basis = f"mean of {len(members)} curves' fits, interval from their spread"
        elif pooled is not None:
            cov, fit_df = pooled / len(members), df
            basis = (f"mean of {len(members)} curves' fits, interval from their spread" if groups == [None] else
                     f"mean of {len(members)} curves' fits, interval from the spread of curves' fits within "
                     f"groups, pooled ({df:g} df)")
        else:
            whole = _least_squares(form, x[at], y[at], tuple(members.mean(axis=0)), alpha=alpha)
            out[g] = Fit(**{**whole.__dict__, "basis": "least squares over the points, taken as independent"})
            continue
        out[g] = _mean_fit(form, members.mean(axis=0), cov, fit_df, x[at], y[at], basis, alpha)
    return out


def _mean_fit(form, params, cov, df, x, y, basis, alpha) -> Fit:
    names = PARAMS[form]
    stderr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    t = stats.t.ppf(1 - alpha / 2, df)
    residual = y - FORMS[form](x, *params)
    total = np.sum((y - y.mean()) ** 2)
    return Fit(form=form, params={k: float(v) for k, v in zip(names, params)},
               stderr={k: float(s) for k, s in zip(names, stderr)},
               ci={k: (float(v - t * s), float(v + t * s)) for k, v, s in zip(names, params, stderr)},
               r2=float(1 - np.sum(residual**2) / total) if total > 0 else np.nan,
               rmse=float(np.sqrt(np.mean(residual**2))), n=int(x.size), cov=np.asarray(cov, dtype=float),
               df=float(df), basis=basis)


def bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap: (stat of the values, lower bound, upper bound).

    Resamples whose stat is NaN (a resample can lack what the stat needs) are
    dropped. One value gives a zero-width interval at that value; none gives NaNs.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (np.nan, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(n_boot, values.size))
    boot = np.array([stat(values[idx]) for idx in draws], dtype=float)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return (float(stat(values)), np.nan, np.nan)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (float(stat(values)), float(low), float(high))


def mean_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean with an interval for few replicates: (mean, lower, upper).

    The percentile bootstrap cannot reach past the observed range, so with a
    handful of seeds it under-covers badly (two seeds of equal sign would
    exclude zero half the time under the null). The interval is therefore the
    wider, on each side, of the percentile bootstrap and the Student-t interval.
    The bootstrap draws are the same as ``bootstrap_ci``'s for the same seed.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
    draws = np.random.default_rng(seed).integers(0, values.size, size=(n_boot, values.size))
    low, high = np.quantile(values[draws].mean(axis=1), [alpha / 2, 1 - alpha / 2])
    mean = float(values.mean())
    half = stats.t.ppf(1 - alpha / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return (mean, float(min(low, mean - half)), float(max(high, mean + half)))


def _points(x, y, n_params: int, *, positive_x: bool = False, nonnegative_x: bool = False):
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    if x.size <= n_params:
        raise ValueError(f"need more than {n_params} points to fit {n_params} parameters with errors, got {x.size}")
    if positive_x and np.any(x <= 0):
        raise ValueError("x must be > 0 for this form")
    if nonnegative_x and np.any(x < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    return x, y


def _linear_start(design: np.ndarray, y: np.ndarray) -> tuple[float, ...]:
    """Least-squares solution of a form that is linear in its parameters."""
    return tuple(np.linalg.lstsq(design, y, rcond=None)[0])


def _least_squares(form, x, y, p0, *, bounds=(-np.inf, np.inf), alpha: float) -> Fit:
    params, cov = optimize.curve_fit(FORMS[form], x, y, p0=p0, bounds=bounds, maxfev=20000)
    stderr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    t = stats.t.ppf(1 - alpha / 2, x.size - params.size)
    residual = y - FORMS[form](x, *params)
    total = np.sum((y - y.mean()) ** 2)
    names = PARAMS[form]
    return Fit(
        form=form,
        params={k: float(v) for k, v in zip(names, params)},
        stderr={k: float(s) for k, s in zip(names, stderr)},
        ci={k: (float(v - t * s), float(v + t * s)) for k, v, s in zip(names, params, stderr)},
        r2=float(1 - np.sum(residual**2) / total) if total > 0 else np.nan,
        rmse=float(np.sqrt(np.mean(residual**2))),
        n=int(x.size),
        cov=np.asarray(cov, dtype=float),
    )
