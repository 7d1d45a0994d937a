"""Every claim check on rows shaped exactly as the pipeline writes them (``quickstart_rows``), reaching
each verdict: trial ids carrying the seed, axes at resolved values, RL curves whose step-0 point
carries the run's final ``flops/rl``, RM-only trials without curves, accuracies on a 1/N grid."""

from __future__ import annotations

from dataclasses import replace

import pytest
from quickstart_rows import CLAIMS, Truth, quickstart_rows

from rlhfscale.analysis import claims
from rlhfscale.analysis.table import FLOPS_RL, FLOPS_TOTAL, STEP, TRIAL, config_of, to_table

PRECISE = Truth(eval_prompts=5000, heldout_pairs=5000, bon_prompts=5000, train_sd=0.003, point_sd=0.002)
PLATEAU, ACCELERATING = {2: 0.0, 4: 0.2, 8: 0.2}, {2: 0.0, 4: 0.0, 8: 0.2}
CASES = [  # (check, changes to PRECISE, expected verdict, expected effect); C3, C6, C9: test_claims_faithful
    ("rm_data_volume", {"volume_slope": 0.05}, "supported", 0.05),
    ("rm_data_volume", {"volume_slope": -0.05}, "not supported", -0.05),
    ("prompt_diversity", {"diversity": 0.1}, "supported", 0.1),
    ("prompt_diversity", {"diversity": -0.1}, "not supported", -0.1),
    ("samples_plateau", {"n_gain": PLATEAU}, "supported", 0.2),
    ("samples_plateau", {"n_gain": ACCELERATING}, "not supported", -0.2),
    ("rm_size_modest", {"rm_size_gain": 0.0}, "supported", 0.0),
    ("rm_size_modest", {"rm_size_gain": 0.2}, "not supported", 0.2),
    ("ppo_vs_grpo", {"ppo_minus_grpo": 0.0}, "supported", 0.0),
    ("ppo_vs_grpo", {"ppo_minus_grpo": 0.2}, "not supported", 0.2),
    ("shaping_stability", {"shaping_gain": 0.1, "shaping_log_std": 0.5}, "supported", 0.1),
    ("shaping_stability", {"shaping_gain": -0.1, "shaping_log_std": -0.5}, "not supported", -0.1),
]


@pytest.mark.parametrize("check, changes, verdict, effect", CASES,
                         ids=[f"{c[0]}-{c[2].replace(' ', '_')}" for c in CASES])
def test_each_check_reaches_its_conclusive_verdicts_on_pipeline_rows(check, changes, verdict, effect):
    claim = claims.check(check, to_table(quickstart_rows(replace(PRECISE, **changes), seeds=4)))
    assert claim.verdict == verdict, claim.detail
    assert claim.effect == pytest.approx(effect, abs=0.025), claim.detail
    assert claim.n_seeds == 4 and claim.ci_low <= claim.effect <= claim.ci_high
    assert claim.smallest_effect_of_interest > 0 and claim.min_detectable > 0


@pytest.mark.parametrize("check", CLAIMS)
def test_each_check_is_inconclusive_on_the_quickstart_with_two_seeds_and_an_effect_at_its_threshold(check):
    """At the quickstart's size (pass@1 over 100 prompts, two seeds) an effect of one SESOI is beyond
    what the grid can see: inconclusive (in at least 7 of 10 studies), the smallest detectable effect
    (in claims.json and the detail) larger than the SESOI."""
    sesoi = {"volume_slope": 0.01, "diversity": 0.02, "prm_extra_slope": 0.01, "rm_size_gain": 0.05,
             "policy_gap": 0.02, "ppo_minus_grpo": 0.05, "shaping_gain": 0.02, "concavity": 0.01}
    found = [claims.check(check, to_table(quickstart_rows(replace(Truth(), **sesoi), seeds=2, draw=d)))
             for d in range(10)]
    assert sum(c.verdict == "inconclusive" for c in found) >= 7, [c.detail for c in found]
    for claim in found:
        assert claim.min_detectable > claim.smallest_effect_of_interest
        assert f"{claim.min_detectable:.3g}" in claim.detail
        assert 0 < claim.ci_high - claim.ci_low


def test_pipeline_rows_are_read_as_configurations_over_seeds():
    rows = quickstart_rows(seeds=2)
    assert {"seed=0", "rl.algorithm=ppo,seed=1", 'rm.enabled=true,rm.size=micro,rl.reward={"orm":1.0},seed=0'} \
        <= {r["trial"] for r in rows}
    table = to_table(rows)
    configs = config_of(table[TRIAL])
    assert configs.nunique() == 14 and set(configs[table[TRIAL].str.startswith("seed=")]) == {""}
    assert (configs[table[TRIAL] == "rl.algorithm=ppo,seed=1"] == "rl.algorithm=ppo").all()


def test_the_step_zero_point_of_a_curve_is_read_at_zero_rl_compute():
    rows = quickstart_rows(seeds=1)
    start = next(r for r in rows if r["trial"] == "seed=0" and r["step"] == 0)
    end = next(r for r in rows if r["trial"] == "seed=0" and r["step"] == 24)
    assert start[FLOPS_RL] == end[FLOPS_RL] > 0  # what the pipeline writes: the run's final RL compute
    table = to_table(rows)
    base = table[table[TRIAL] == "seed=0"].set_index(STEP)
    assert base.loc[0, FLOPS_RL] == 0.0 and base.loc[24, FLOPS_RL] == end[FLOPS_RL]
    assert base.loc[0, FLOPS_TOTAL] == pytest.approx(start[FLOPS_TOTAL] - start[FLOPS_RL])
    rm_only = table[table["rl.enabled"].eq(False)]
    assert len(rm_only) == 5
    assert rm_only[FLOPS_RL].isna().all() and (rm_only[STEP] == 0).all()  # no curve: nothing to change


def test_the_rm_checks_say_how_many_held_out_pairs_each_accuracy_rests_on():
    table = to_table(quickstart_rows(replace(PRECISE, heldout_pairs=140), seeds=2))
    for check in ("rm_data_volume", "prompt_diversity"):
        assert "each RM's accuracy on 140-140 held-out pairs" in claims.check(check, table).detail



def test_a_trial_without_rl_is_never_read_as_an_rl_run():
    """An SFT-only trial (rl.enabled false, for the SFT curve) still resolves rl.algorithm=grpo; it must not enter
    PPO minus GRPO as a GRPO run that learned nothing (rl.reward_kind 'none' keeps it apart)."""
    from quickstart_rows import faithful_trials

    rows = quickstart_rows(replace(PRECISE, ppo_minus_grpo=0.0), seeds=3, trials=faithful_trials("diminishing_returns"))
    claim = claims.check("ppo_vs_grpo", to_table(rows))
    assert claim.effect == pytest.approx(0.0, abs=0.02) and claim.verdict == "supported", claim.detail
