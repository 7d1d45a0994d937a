"""One PNG per tested claim, plus reward over-optimization, drawn with matplotlib (Agg).

Every point is a mean over seeds with its 95 % interval as the error bar
(``stats.mean_interval``: binomial-aware for accuracies, never outside the
metric's range); a factor that is a scale goes on a log x-axis with a dashed
log-linear trend and its shaded 95 % band (``fits.Fit.band``, clipped to the
range); where FLOPs columns exist a panel puts the same metric against compute.
RL curves are drawn per configuration (seeds pooled), RL compute at step 0
being 0 (``table.to_table``). The over-optimization claims draw gold and proxy gains against
d = sqrt(KL) for Best-of-N (analytic KL) and RL (measured KL) with the Gao et al. fits
(``analysis.overopt``); the PRM-reward claims draw the final or along-training metric per reward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.optimize import OptimizeWarning  # noqa: E402

from rlhfscale.analysis import overopt  # noqa: E402
from rlhfscale.analysis.claims import REWARD, Claim, with_reward, pick  # noqa: E402
from rlhfscale.analysis.claims_samples import SWEEP, labelled_sweeps  # noqa: E402
from rlhfscale.analysis.fits import fit_log_linear, fit_rl_gold  # noqa: E402
from rlhfscale.analysis.stats import mean_interval, metric_bounds, metric_items  # noqa: E402
from rlhfscale.analysis.table import (  # noqa: E402
    BON_RM, DATA_PROMPTS, DATA_VOLUME, FLOPS_RL, FLOPS_RM, FLOPS_SFT, FLOPS_TOTAL, GAIN, GAIN_REL,
    GOLD_REWARD, KL, PASS, PASS_BEFORE, POLICY_PARAMS, POLICY_SIZE, PROXY_REWARD, REWARD_STD,
    RL_ALGORITHM, RL_N_SAMPLES, RL_SHAPING, RM_KIND, RM_PAIR_ACC, RM_PARAMS, RM_SIZE, SEED, STEP,
    TRIAL, config_of, final_points, has,
)

MAX_LEGEND = 8
OVEROPTIMIZATION = "overoptimization"


def summarize(table: pd.DataFrame, level: str, y: str, at: str | None = None) -> pd.DataFrame:
    """Per level of ``level``: mean of ``y`` over seeds with its CI, placed at the mean of ``at``.

    Columns: level, x (the level itself when ``at`` is None), mean, low, high.
    """
    rows, items = [], metric_items(table, y)
    for value, sub in table.dropna(subset=[y]).groupby(level):
        mean, low, high = mean_interval(sub.groupby(SEED)[y].mean().to_numpy(), y, items)
        rows.append({"level": value, "x": sub[at].mean() if at else value, "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=["level", "x", "mean", "low", "high"])


def _yerr(s: pd.DataFrame) -> np.ndarray:
    """Error-bar lengths below and above each mean (none where there is no interval)."""
    return np.nan_to_num(np.vstack([s["mean"] - s["low"], s["high"] - s["mean"]]))


def _errorbar(ax: Axes, s: pd.DataFrame, label: str):
    yerr = _yerr(s)
    return ax.errorbar(s["x"], s["mean"], yerr=yerr, marker="o", capsize=3, label=label)


def _fit_line(ax: Axes, s: pd.DataFrame, color: str, metric: str) -> None:
    """Dashed y = a + b log x through the level means with its 95 % band, labelled with its slope per doubling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
        fit = fit_log_linear(s["x"], s["mean"])
        xs = np.geomspace(s["x"].min(), s["x"].max(), 50)
        low, high = fit.band(xs, bounds=metric_bounds(metric))
    ax.plot(xs, fit.predict(xs), "--", color=color, lw=1, label=f"fit {np.log(2) * fit.params['b']:+.3g}/doubling")
    ax.fill_between(xs, low, high, color=color, alpha=0.12, lw=0)


def trend(ax: Axes, table: pd.DataFrame, level: str, y: str, *, series: str | None = None,
          at: str | None = None, fit: bool = True) -> None:
    """``y`` against ``level`` (or the mean of ``at`` per level) on a log x-axis, one line per series."""
    groups = list(table.groupby(series)) if series and has(table, series) else [(y, table)]
    xs = []
    for name, sub in groups:
        s = summarize(sub, level, y, at)
        s = s[s["x"] > 0]
        if s.empty:
            continue
        xs.extend(s["x"])
        bars = _errorbar(ax, s, str(name))
        if fit and len(s) >= 3:
            _fit_line(ax, s, bars[0].get_color(), y)
    _log_x(ax, xs)
    ax.set_xlabel(at or level)
    ax.set_ylabel(y)
    if len(groups) <= MAX_LEGEND:
        ax.legend(fontsize="small", title=series if len(groups) > 1 else None)


def _log_x(ax: Axes, xs: list[float]) -> None:
    """Log x-axis with small minor-tick labels, widened to a factor of 4 when the points (nearly) coincide."""
    ax.set_xscale("log")
    ax.tick_params(axis="x", which="minor", labelsize=7)
    if xs and max(xs) < 2 * min(xs):
        ax.set_xlim(min(xs) / 2, max(xs) * 2)


def bars(ax: Axes, table: pd.DataFrame, factor: str, y: str) -> None:
    """Mean of ``y`` per level of a categorical factor, CI error bars."""
    s = summarize(table, factor, y)
    ax.bar(range(len(s)), s["mean"], yerr=_yerr(s), capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(s)), [str(v) for v in s["level"]])
    ax.set_xlabel(factor)
    ax.set_ylabel(y)


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0), squeeze=False)
    return fig, list(axes[0])


def _flops(table: pd.DataFrame, *candidates: str) -> str | None:
    return next((c for c in candidates if has(table, c)), None)


def _versus(table: pd.DataFrame, factor: str, y: str, series: str | None, flops: str | None) -> Figure:
    """``y`` against a scale factor, and against compute when ``flops`` is recorded."""
    fig, axes = _figure(2 if flops else 1)
    trend(axes[0], table, factor, y, series=series)
    if flops:
        trend(axes[1], table, factor, y, series=series, at=flops, fit=False)
    return fig


def _rm_quality(table: pd.DataFrame, factor: str, series: str, metrics: tuple[str, str]) -> Figure:
    final = final_points(table)
    return _versus(final, factor, pick(final, *metrics), series, _flops(final, FLOPS_RM, FLOPS_TOTAL))


def plot_rm_data_volume(table: pd.DataFrame) -> Figure:
    return _rm_quality(table, DATA_VOLUME, RM_KIND, (RM_PAIR_ACC, BON_RM))


def plot_prompt_diversity(table: pd.DataFrame) -> Figure:
    return _rm_quality(table, DATA_PROMPTS, DATA_VOLUME, (RM_PAIR_ACC, BON_RM))


def plot_prm_vs_orm(table: pd.DataFrame) -> Figure:
    return _rm_quality(table, DATA_VOLUME, RM_KIND, (BON_RM, RM_PAIR_ACC))


def plot_samples_sweeps(table: pd.DataFrame) -> Figure:
    """Both n sweeps (prompts per step fixed, samples per step fixed) against n, and against RL compute."""
    final = labelled_sweeps(table)
    return _versus(final, RL_N_SAMPLES, pick(final, GAIN, PASS), SWEEP, _flops(final, FLOPS_RL, FLOPS_TOTAL))


def _sizes(table: pd.DataFrame, size: str, params: str, metrics: list[str]) -> Figure:
    """Each metric against model size (parameters), and against total compute."""
    final = final_points(table)
    level = params if has(final, params) else size
    final = final.assign(**{level: pd.to_numeric(final[level])})
    flops = _flops(final, FLOPS_TOTAL)
    fig, axes = _figure(len(metrics) + bool(flops))
    for ax, metric in zip(axes, metrics):
        trend(ax, final, level, metric, fit=False)
    if flops:
        for metric in metrics:
            trend(axes[-1], final, level, metric, at=flops, fit=False)
        axes[-1].set_ylabel(", ".join(metrics))
    return fig


def plot_rm_size_modest(table: pd.DataFrame) -> Figure:
    metrics = [m for m in (BON_RM, pick(table, PASS, GAIN)) if has(table, m)]
    return _sizes(table, RM_SIZE, RM_PARAMS, metrics)


def plot_policy_size(table: pd.DataFrame) -> Figure:
    return _sizes(table, POLICY_SIZE, POLICY_PARAMS, [m for m in (GAIN, GAIN_REL) if has(table, m)])


def _categorical(table: pd.DataFrame, factor: str, metrics: list[str]) -> Figure:
    """Final metrics per level of a categorical factor, and accuracy along the RL curve against compute."""
    final = final_points(table)
    metrics = [m for m in metrics if has(final, m)]
    curve = has(table, FLOPS_RL) and has(table, PASS) and table[STEP].nunique() > 1
    fig, axes = _figure(len(metrics) + curve)
    for ax, metric in zip(axes, metrics):
        bars(ax, final, factor, metric)
    if curve:
        for name, sub in table.groupby(factor):
            s = summarize(sub, STEP, PASS, at=FLOPS_RL)
            _errorbar(axes[-1], s[s["x"] > 0], str(name))
        _log_x(axes[-1], [])
        axes[-1].set(xlabel=FLOPS_RL, ylabel=PASS)
        axes[-1].legend(fontsize="small", title=factor)
    return fig


def plot_ppo_vs_grpo(table: pd.DataFrame) -> Figure:
    return _categorical(table, RL_ALGORITHM, [PASS])


def plot_shaping_stability(table: pd.DataFrame) -> Figure:
    return _categorical(table, RL_SHAPING, [PASS, REWARD_STD])


def plot_diminishing_returns(table: pd.DataFrame) -> Figure:
    """Each configuration's RL curve (seeds pooled) against RL compute; SFT accuracy against SFT compute."""
    metric = pick(table, GAIN, PASS)
    sft = has(table, FLOPS_SFT) and has(table, PASS_BEFORE)
    fig, axes = _figure(1 + sft)
    curves = table[table[FLOPS_RL] > 0]
    configs = config_of(curves[TRIAL])
    for config, sub in curves.groupby(configs):
        s = summarize(sub, STEP, metric, at=FLOPS_RL)
        _errorbar(axes[0], s, str(config) or "base")
    _log_x(axes[0], [])
    axes[0].set(xlabel=FLOPS_RL, ylabel=metric)
    if configs.nunique() <= MAX_LEGEND:
        axes[0].legend(fontsize="small")
    if sft:
        trend(axes[1], final_points(table), FLOPS_SFT, PASS_BEFORE)
    return fig


def plot_overoptimization(table: pd.DataFrame) -> Figure | None:
    """Gold and proxy reward against d = sqrt(KL) with the Gao et al. RL fit of the gold reward."""
    if not (has(table, KL) and has(table, GOLD_REWARD)):
        return None
    points = table.dropna(subset=[KL, GOLD_REWARD])
    d = np.sqrt(points[KL].clip(lower=0).to_numpy())
    fig, (ax,) = _figure(1)
    ax.scatter(d, points[GOLD_REWARD], s=14, label=f"gold ({GOLD_REWARD})")
    if has(points, PROXY_REWARD):
        ax.scatter(d, points[PROXY_REWARD], s=14, marker="x", label=f"proxy ({PROXY_REWARD})")
    if np.unique(d).size >= 3:
        gold = points[GOLD_REWARD]
        fit = fit_rl_gold(d, gold)
        grid = np.linspace(0, d.max(), 100)
        a, b = fit.params["alpha"], fit.params["beta"]
        ax.plot(grid, fit.predict(grid), "k--", lw=1, label=f"gold fit d(α − β log d): α={a:.3g}, β={b:.3g}")
        bounds = (0.0, 1.0) if gold.between(0, 1).all() else (-np.inf, np.inf)  # a verifier's or rater's [0, 1]
        ax.fill_between(grid, *fit.band(grid, bounds=bounds), color="k", alpha=0.1, lw=0, label="95% band")
    ax.set(xlabel="d = sqrt(KL(policy || init))", ylabel="reward", title="Reward over-optimization")
    ax.legend(fontsize="small")
    return fig


def _overopt_points(ax: Axes, points: pd.DataFrame, value: str, fits: dict, method: str, *,
                    scatter: bool) -> list[float]:
    """One method's ``value`` against d per configuration (Best-of-N: mean over seeds at each N with its
    interval; RL: every point), with the fitted curve of each configuration (dashed) where there is one.
    Returns the values drawn (means and points, not interval ends)."""
    drawn: list[float] = []
    for config, sub in points.groupby("config", sort=True):
        label = f"{overopt.METHODS[method]} {config or 'base'}"
        if scatter:
            dots = ax.scatter(sub["d"], sub[value], s=8, alpha=0.5, label=label)
            color, values = dots.get_facecolor()[0], sub[value]
        else:
            s = summarize(sub.assign(**{"_d": sub["d"]}), "_d", value)
            color, values = _errorbar(ax, s, label)[0].get_color(), s["mean"]
        drawn.extend(np.asarray(values, dtype=float)[np.isfinite(np.asarray(values, dtype=float))])
        if config in fits:
            grid = np.linspace(0, sub["d"].max(), 100)
            ax.plot(grid, fits[config].predict(grid), "--", color=color, lw=1)
    return drawn


def _zoom(ax: Axes, drawn: list[float]) -> None:
    """y-limits around what was drawn: wide intervals (two seeds give t = 12.7) run off the axes, not the curves."""
    if drawn:
        low, high = min(drawn), max(drawn)
        pad = 0.15 * max(high - low, 1e-3)
        ax.set_ylim(low - pad, high + pad)


def plot_overoptimization_peak(table: pd.DataFrame) -> Figure:
    """Gold gain against sqrt(KL) for Best-of-N and for RL (fits dashed), and proxy gain against sqrt(KL) for both."""
    c = overopt.curves(table)
    gold_fits, proxy_fits = overopt.fits(c), overopt.fits(c, "proxy_gain")
    fig, axes = _figure(len(c.methods) + 1)
    for ax, method in zip(axes, c.methods):
        drawn = _overopt_points(ax, c.of(method), "gold_gain", gold_fits.get(method, {}), method,
                                scatter=method == "rl")
        _zoom(ax, drawn)
        ax.axhline(0, color="grey", lw=0.5)
        form = "d(α − βd)" if method == "bon" else "d(α − β log d)"
        ax.set(xlabel="d = sqrt(KL)", ylabel="gold gain", title=f"{overopt.METHODS[method]}: gold, fit {form}")
        ax.legend(fontsize="x-small")
    drawn = []
    for method in c.methods:
        drawn += _overopt_points(axes[-1], c.of(method), "proxy_gain", proxy_fits.get(method, {}), method,
                                 scatter=method == "rl")
    _zoom(axes[-1], drawn)
    axes[-1].set(xlabel="d = sqrt(KL)", ylabel="proxy (RM score) gain", title="proxy")
    axes[-1].legend(fontsize="x-small")
    return fig


def plot_rl_kl_cost(table: pd.DataFrame) -> Figure:
    """Both methods' gold gain against sqrt(KL) on one axis, each with its fit over all proxy RMs; and the same
    within Best-of-N's range."""
    c = overopt.curves(table)
    found = overopt.fits(c)
    fig, axes = _figure(2)
    for ax, limit in zip(axes, (None, c.bon["d"].max())):
        for method in c.methods:
            points = c.of(method)
            points = points if limit is None else points[points["d"] <= limit * 1.05]
            dots = ax.scatter(points["d"], points["gold_gain"], s=8, alpha=0.4, label=overopt.METHODS[method])
            fit = found.get(method, {}).get(None) or next(iter(found.get(method, {}).values()), None)
            if fit is not None:
                grid = np.linspace(0, points["d"].max(), 100)
                ax.plot(grid, fit.predict(grid), "--", color=dots.get_facecolor()[0], alpha=1.0,
                        label=f"{overopt.METHODS[method]} fit: {overopt.describe_fit(fit).split(', peak')[0]}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="d = sqrt(KL)", ylabel="gold gain",
               title="all of each curve" if limit is None else "within Best-of-N's range")
        ax.legend(fontsize="x-small")
    return fig


def plot_prm_reward(table: pd.DataFrame) -> Figure:
    final = with_reward(final_points(table))
    metric = pick(final, GAIN, PASS)
    sizes = POLICY_PARAMS if has(final, POLICY_PARAMS) else POLICY_SIZE
    varied = final[sizes].nunique() >= 2 if sizes in final else False
    fig, axes = _figure(1 + varied)
    bars(axes[0], final, REWARD, metric)
    if varied:
        sized = final.assign(**{sizes: pd.to_numeric(final[sizes], errors="coerce")})
        trend(axes[1], sized, sizes, metric, series=REWARD, fit=False)
    return fig


def plot_prm_reward_samples(table: pd.DataFrame) -> Figure:
    final = with_reward(final_points(table))
    fig, (ax,) = _figure(1)
    trend(ax, final, RL_N_SAMPLES, pick(final, GAIN, PASS), series=REWARD, fit=False)
    return fig


def plot_prm_reward_training(table: pd.DataFrame) -> Figure:
    points = with_reward(table)
    points = points[points[STEP] > 0]
    fig, (ax,) = _figure(1)
    trend(ax, points, STEP, pick(points, GAIN, PASS), series=REWARD, fit=False)
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "rm_data_volume": plot_rm_data_volume,
    "prompt_diversity": plot_prompt_diversity,
    "prm_vs_orm": plot_prm_vs_orm,
    "samples_plateau": plot_samples_sweeps,
    "samples_fixed_compute": plot_samples_sweeps,
    "rm_size_modest": plot_rm_size_modest,
    "policy_size": plot_policy_size,
    "ppo_vs_grpo": plot_ppo_vs_grpo,
    "shaping_stability": plot_shaping_stability,
    "diminishing_returns": plot_diminishing_returns,
    "overoptimization_peak": plot_overoptimization_peak,
    "rl_kl_cost": plot_rl_kl_cost,
    "prm_reward": plot_prm_reward,
    "prm_reward_samples": plot_prm_reward_samples,
    "prm_reward_training": plot_prm_reward_training,
}


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(table: pd.DataFrame, claims: list[Claim], out_dir: Path) -> dict[str, Path]:
    """Draw every tested claim's plot (and over-optimization) into ``out_dir``; returns id -> PNG path."""
    written = {}
    for claim in claims:
        if claim.verdict != "not tested":
            fig = PLOTS[claim.id](table)
            fig.suptitle(f"{claim.title}: {claim.verdict}")
            written[claim.id] = save(fig, out_dir / f"{claim.id}.png")
    if (fig := plot_overoptimization(table)) is not None:
        written[OVEROPTIMIZATION] = save(fig, out_dir / f"{OVEROPTIMIZATION}.png")
    return written
