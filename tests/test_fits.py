import numpy as np
import pytest
from scipy import stats

from rlhfscale.analysis import fits

X = np.geomspace(1, 1000, 40)
D = np.linspace(0.05, 6.0, 40)

CASES = [
    (fits.fit_power_law, fits.power_law, X, {"a": 2.0, "b": 0.3}, 0.05),
    (fits.fit_saturating, fits.saturating, X, {"c": 0.9, "a": 0.5, "b": 0.4}, 0.005),
    (fits.fit_log_linear, fits.log_linear, X, {"a": 0.2, "b": 0.05}, 0.01),
    (fits.fit_bon_gold, fits.bon_gold, D, {"alpha": 1.0, "beta": 0.15}, 0.02),
    (fits.fit_rl_gold, fits.rl_gold, D, {"alpha": 0.8, "beta": 0.4}, 0.02),
]


@pytest.mark.parametrize("fit_fn, form, x, truth, noise", CASES, ids=[c[1].__name__ for c in CASES])
def test_recovers_known_parameters_and_cis_cover_them(fit_fn, form, x, truth, noise):
    y = form(x, *truth.values()) + np.random.default_rng(0).normal(0, noise, x.size)
    fit = fit_fn(x, y, alpha=0.01)
    for name, value in truth.items():
        assert fit.params[name] == pytest.approx(value, rel=0.15, abs=0.02), name
        low, high = fit.ci[name]
        assert low < value < high, name
        assert high - low < 0.5 * abs(value) + 0.05, name
    assert fit.r2 > 0.9
    assert fit.rmse == pytest.approx(noise, rel=0.35)
    assert np.allclose(fit.predict(x), form(x, *fit.params.values()))


def test_log_linear_matches_ordinary_least_squares():
    x = np.array([1.0, 2, 4, 8, 16, 32])
    y = np.array([0.10, 0.16, 0.19, 0.26, 0.29, 0.36])
    ref = stats.linregress(np.log(x), y)
    fit = fits.fit_log_linear(x, y)
    assert fit.params["b"] == pytest.approx(ref.slope)
    assert fit.params["a"] == pytest.approx(ref.intercept)
    assert fit.stderr["b"] == pytest.approx(ref.stderr, rel=1e-4)
    t = stats.t.ppf(0.975, x.size - 2)
    assert fit.ci["b"][1] == pytest.approx(ref.slope + t * ref.stderr, rel=1e-4)


def test_log_linear_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(7)
    x = np.geomspace(1, 100, 8)
    hits = 0
    for _ in range(300):
        fit = fits.fit_log_linear(x, 0.3 + 0.04 * np.log(x) + rng.normal(0, 0.02, x.size))
        hits += fit.ci["b"][0] < 0.04 < fit.ci["b"][1]
    assert 0.90 <= hits / 300 <= 0.99


def test_rl_gold_is_defined_at_zero_kl():
    assert fits.rl_gold(np.array([0.0, 1.0]), 0.8, 0.4).tolist() == [0.0, 0.8]


@pytest.mark.parametrize(
    "x, y, message",
    [([1, 2], [1, 2], "more than 2 points"), ([0, 1, 2], [1, 2, 3], "> 0"), ([1, 2, 3], [1, 2], "length")],
)
def test_bad_points_are_refused(x, y, message):
    with pytest.raises(ValueError, match=message):
        fits.fit_power_law(x, y)


def test_bootstrap_ci_of_mean_covers_truth_at_nominal_rate():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        sample = rng.normal(0.5, 1.0, 40)
        estimate, low, high = fits.bootstrap_ci(sample, n_boot=400, seed=i)
        assert estimate == pytest.approx(sample.mean())
        hits += low < 0.5 < high
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_ci_width_matches_standard_error_and_uses_stat():
    sample = np.random.default_rng(2).normal(0, 2.0, 400)
    _, low, high = fits.bootstrap_ci(sample)
    assert high - low == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(400), rel=0.15)
    median, low, high = fits.bootstrap_ci([1.0, 2.0, 100.0], stat=np.median)
    assert median == 2.0 and low == 1.0 and high == 100.0
    assert fits.bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(np.isnan(fits.bootstrap_ci([])))


def test_mean_ci_is_never_narrower_than_student_t_with_few_seeds():
    two = [0.010, 0.012]
    assert fits.bootstrap_ci(two)[1] > 0  # the bare percentile bootstrap would call this positive
    mean, low, high = fits.mean_ci(two)
    half = stats.t.ppf(0.975, 1) * np.std(two, ddof=1) / np.sqrt(2)
    assert mean == pytest.approx(0.011)
    assert (low, high) == pytest.approx((0.011 - half, 0.011 + half))
    assert low < 0 < high


def test_mean_ci_matches_the_bootstrap_with_many_values():
    sample = np.random.default_rng(3).normal(1.0, 0.5, 200)
    assert fits.mean_ci(sample, seed=4) == pytest.approx(fits.bootstrap_ci(sample, seed=4), rel=0.02)
    assert fits.mean_ci([2.5]) == (2.5, 2.5, 2.5)


def test_band_is_the_least_squares_confidence_band_and_respects_bounds():
    x = np.geomspace(1, 100, 8)
    y = 0.3 + 0.04 * np.log(x) + np.random.default_rng(0).normal(0, 0.02, x.size)
    fit = fits.fit_log_linear(x, y)
    design = np.column_stack([np.ones(x.size), np.log(x)])
    residual = y - design @ np.array([fit.params["a"], fit.params["b"]])
    leverage = np.einsum("ij,jk,ik->i", design, np.linalg.inv(design.T @ design), design)
    half = stats.t.ppf(0.975, x.size - 2) * np.sqrt(residual @ residual / (x.size - 2) * leverage)
    low, high = fit.band(x)
    assert low == pytest.approx(fit.predict(x) - half, rel=1e-4)
    assert high == pytest.approx(fit.predict(x) + half, rel=1e-4)
    three = fits.fit_log_linear([1.0, 2.0, 4.0], [0.90, 0.97, 0.99])  # one df: a t of 12.7
    low, high = three.band(np.array([1.0, 4.0]), bounds=(0.0, 1.0))
    assert np.all(low >= 0) and np.all(high <= 1) and high.max() == 1.0


def test_band_of_a_nonlinear_form_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(5)
    d = np.linspace(0.1, 5, 25)
    hits = 0
    for _ in range(100):
        fit = fits.fit_rl_gold(d, fits.rl_gold(d, 0.8, 0.4) + rng.normal(0, 0.05, d.size))
        low, high = fit.band(np.array([2.5]))
        hits += low[0] < fits.rl_gold(2.5, 0.8, 0.4) < high[0]
    assert 0.88 <= hits / 100 <= 1.0
