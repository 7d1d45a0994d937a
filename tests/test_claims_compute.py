"""Samples per prompt swept at a fixed compute per step (``samples_fixed_compute``), beside the paper's sweep at a fixed
prompts per step (``samples_plateau``), on rows shaped as the pipeline writes them (``quickstart_rows``): the
quickstart's trials plus n halved and doubled at the base's samples per step (``fixed_samples_trials``).

The check reaches every verdict, is "not tested" without the fixed-samples trials (naming them), leaves the paper's
sweep alone, reports the paper's sweep at equal RL FLOPs and per FLOP, and is calibrated on many simulated studies:
no true effect rarely gives "supported", an effect at the smallest of interest rarely "not supported", a strong one
(either sign) is found at 3 seeds, and the 95 % interval covers the true effect in at least 90 % of studies and never
leaves the effect's range; so does the equal-FLOPs interval. Thresholds as in test_claims_calibration (0.08 at 200
draws)."""

from __future__ import annotations

import collections
import functools
from dataclasses import replace

import pytest
from quickstart_rows import Truth, faithful_trials, fixed_samples_trials, quickstart_rows, quickstart_trials

from rlhfscale.analysis import claims, plots
from rlhfscale.analysis.claims_samples import SWEEP, at_equal_flops, labelled_sweeps, rl_final, sweep_keys
from rlhfscale.analysis.table import RL_N_SAMPLES, RL_PPS, RL_SPS, to_table

CHECK = "samples_fixed_compute"
PRECISE = Truth(eval_prompts=5000, heldout_pairs=5000, bon_prompts=5000, train_sd=0.003, point_sd=0.002)


def budget(per_doubling: float, at_base: float = 0.10) -> dict:
    """Gain by n at the base's samples per step, rising ``per_doubling`` per doubling of n around the base's n = 4."""
    return {2: at_base - per_doubling, 4: at_base, 8: at_base + per_doubling}


def study(truth: Truth, seeds: int, draw: int = 0):
    return to_table(quickstart_rows(truth, seeds=seeds, draw=draw, trials=faithful_trials(CHECK)))


def equal_flops(table):
    return at_equal_flops(table, sweep_keys(rl_final(table), RL_PPS))[0]


def test_the_fixed_samples_trials_keep_the_base_samples_per_step():
    base = quickstart_trials()[0]["rl"]
    table = study(Truth(), seeds=1)
    added = table[table[RL_PPS] != base["prompts_per_step"]]
    assert len(fixed_samples_trials()) == 2 and set(added[RL_N_SAMPLES]) == {base["n_samples"] // 2,
                                                                               base["n_samples"] * 2}
    assert (added[RL_SPS] == base["prompts_per_step"] * base["n_samples"]).all()
    assert (table[RL_SPS] == table[RL_PPS] * table[RL_N_SAMPLES]).all()


CASES = [  # (changes to PRECISE, seeds, expected verdict, expected effect)
    ({"budget_n_gain": budget(0.1)}, 4, "supported", 0.1),
    ({"budget_n_gain": budget(-0.1)}, 4, "not supported", -0.1),
    ({"budget_n_gain": budget(0.0)}, 8, "not supported", 0.0),  # negligible, measured precisely
]


@pytest.mark.parametrize("changes, seeds, verdict, effect", CASES, ids=["rises", "falls", "flat"])
def test_the_fixed_compute_check_reaches_its_conclusive_verdicts_on_pipeline_rows(changes, seeds, verdict, effect):
    claim = claims.check(CHECK, study(replace(PRECISE, **changes), seeds=seeds))
    assert claim.verdict == verdict, claim.detail
    assert claim.effect == pytest.approx(effect, abs=0.01), claim.detail
    assert claim.n_seeds == seeds
    assert claim.range_low <= claim.ci_low <= claim.effect <= claim.ci_high <= claim.range_high
    assert claim.smallest_effect_of_interest > 0 and claim.min_detectable > 0
    assert "rl.samples_per_step (256" in claim.detail and "the paper's sweep" in claim.detail


def test_it_is_inconclusive_with_two_seeds_at_its_threshold():
    at = Truth(budget_n_gain=budget(claims.SESOI[CHECK]))
    found = [claims.check(CHECK, study(at, seeds=2, draw=d)) for d in range(10)]
    assert sum(c.verdict == "inconclusive" for c in found) >= 7, [c.detail for c in found]
    for claim in found:
        assert claim.min_detectable > claim.smallest_effect_of_interest
        assert f"{claim.min_detectable:.3g}" in claim.detail


def test_without_the_fixed_samples_trials_it_is_not_tested_and_names_them():
    claim = claims.check(CHECK, to_table(quickstart_rows(seeds=2)))
    assert claim.verdict == "not tested"
    assert "{rl.n_samples: 2, rl.prompts_per_step: 2P} and {rl.n_samples: 8, rl.prompts_per_step: P/2}" in claim.detail
    assert "at equal RL FLOPs" in claim.detail  # the paper's sweep is still read per FLOP
    recorded = quickstart_trials()[2] + [{"rl.prompts_per_step": 64}]  # the base's value, now a column
    claim = claims.check(CHECK, to_table(quickstart_rows(seeds=2, trials=recorded)))
    assert claim.verdict == "not tested"
    assert "{rl.n_samples: 2, rl.prompts_per_step: 128} and {rl.n_samples: 8, rl.prompts_per_step: 32}" in claim.detail


def test_the_papers_sweep_holds_the_prompts_per_step_fixed():
    """The plateau check reads the same cells with or without the fixed-samples trials, whatever they score."""
    plain = claims.check("samples_plateau", to_table(quickstart_rows(seeds=3, draw=5)))
    wild = Truth(budget_n_gain={2: 0.5, 4: 0.1, 8: -0.3})
    both = claims.check("samples_plateau", to_table(quickstart_rows(wild, seeds=3, draw=5,
                                                                     trials=faithful_trials(CHECK))))
    assert both.effect == pytest.approx(plain.effect) and "rl.prompts_per_step held fixed (64)" in both.detail


def test_equal_flops_compares_the_papers_runs_at_the_smallest_n_s_compute():
    """In the simulated world each run's gain rises linearly in log2 steps from its first eval point (step 8) to its
    last (24): at n = 2's final compute, n = 4 is at step 12 and n = 8 at step 6 (no gain yet), so with an equal final
    gain g at every n the gain per doubling of n at equal FLOPs is -g / 2."""
    est = equal_flops(study(replace(PRECISE, n_gain={2: 0.2, 4: 0.2, 8: 0.2}), seeds=8))
    assert est.value == pytest.approx(-0.1, abs=0.01)
    assert est.low < est.value < est.high


def test_the_plot_draws_both_sweeps():
    table = study(Truth(), seeds=2)
    sweeps = labelled_sweeps(table)
    assert set(sweeps[SWEEP]) == {"prompts per step fixed", "256 samples per step"}
    fig = plots.PLOTS[CHECK](table)
    assert len(fig.axes[0].get_legend().get_texts()) >= 2
    plots.plt.close(fig)


# ---- calibration ---------------------------------------------------------------------------------------

MAX_ERROR = 0.08
SCENARIOS = {"null": (Truth(), 0.0), "boundary": (Truth(budget_n_gain=budget(0.01)), 0.01),
             "strong": (Truth(budget_n_gain=budget(0.1)), 0.1), "reversed": (Truth(budget_n_gain=budget(-0.1)), -0.1)}


@functools.cache
def equal_flops_truth() -> float:
    """The equal-FLOPs effect of the paper's sweep under the scenarios' n_gain (all equal), measured precisely."""
    return equal_flops(study(PRECISE, seeds=24, draw=1)).value


@functools.cache
def outcomes(scenario: str, seeds: int, draws: int) -> dict[str, float]:
    """Share of studies giving each verdict; ``covered`` / ``equal_covered``: the intervals hold the truth."""
    truth, effect = SCENARIOS[scenario]
    counts = collections.Counter()
    for draw in range(draws):
        table = study(truth, seeds, draw=30_000 * seeds + draw)
        claim = claims.check(CHECK, table)
        assert claim.range_low <= claim.ci_low <= claim.effect <= claim.ci_high <= claim.range_high, claim
        counts[claim.verdict] += 1
        counts["covered"] += claim.ci_low <= effect <= claim.ci_high
        equal = equal_flops(table)
        assert equal.lower <= equal.low <= equal.value <= equal.high <= equal.upper and -1 <= equal.low, equal
        counts["equal_covered"] += equal.low <= equal_flops_truth() <= equal.high
    return {k: n / draws for k, n in counts.items()}


@pytest.mark.parametrize("seeds", [2, 3])
def test_no_true_effect_is_rarely_supported_and_the_intervals_cover_the_truth(seeds):
    found = outcomes("null", seeds, 200)
    assert found.get("supported", 0.0) <= MAX_ERROR, found
    assert found["covered"] >= 0.9 and found["equal_covered"] >= 0.9, found


def test_an_effect_at_the_smallest_of_interest_is_rarely_called_negligible():
    found = outcomes("boundary", 3, 200)
    assert found.get("not supported", 0.0) <= MAX_ERROR and found["covered"] >= 0.9, found


@pytest.mark.parametrize("scenario, verdict", [("strong", "supported"), ("reversed", "not supported")])
def test_a_clear_effect_is_found_with_three_seeds(scenario, verdict):
    found = outcomes(scenario, 3, 100)
    assert found.get(verdict, 0.0) >= 0.8 and found["covered"] >= 0.9, found
