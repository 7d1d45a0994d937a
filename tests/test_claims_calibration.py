"""Calibration of every claim check on simulated quickstart studies (``quickstart_rows``).

Each scenario simulates many studies shaped like `configs/quickstart.yaml` (its 14 trials, rows as
the pipeline writes them, pass@1 over 100 prompts) and counts each check's verdicts:

- no true effect: a directional claim must rarely say "supported", a similarity claim rarely "not
  supported" (nominal 2.5 % each: the 95 % interval on one side);
- every effect exactly at its smallest effect of interest (the boundary): a directional claim must
  rarely say "not supported", a similarity claim rarely "supported" (nominal 2.5 %);
- effects well beyond it: found in most studies at 3 seeds;
- a negligible effect, measured precisely: concluded ("not supported", or "similar") more often
  with 8 seeds than with 3.

Thresholds on error rates are 0.08 at 200 draws: a check whose true rate were the 5 % the claims
promise at most would exceed it with probability ~3 %, one at its nominal 2.5 % with probability
~1e-4; the draws are seeded, so the counts are reproducible.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import replace

import numpy as np
import pytest
from quickstart_rows import CLAIMS, Truth, quickstart_rows

from rlhfscale.analysis import claims
from rlhfscale.analysis.table import to_table

EQUIVALENCE = set(claims.EQUIVALENCE)
MAX_ERROR = 0.08
MIN_POWER = 0.8

NULL = Truth()  # every effect 0 (RL gains equal across n, sizes, algorithms, shaping; straight curves)
BOUNDARY = Truth(volume_slope=0.01, diversity=0.02, prm_extra_slope=0.01, n_gain={2: 0.10, 4: 0.11, 8: 0.11},
                 rm_size_gain=0.05, policy_gap=0.02, ppo_minus_grpo=0.05, shaping_gain=0.02, concavity=0.01)
STRONG = Truth(volume_slope=0.08, diversity=0.2, prm_extra_slope=0.2, n_gain={2: 0.0, 4: 0.3, 8: 0.3},
               rm_size_gain=0.25, policy_gap=0.2, ppo_minus_grpo=0.25, shaping_gain=0.2, shaping_log_std=0.5,
               concavity=0.25)
NEGLIGIBLE = Truth(rm_size_gain=0.03, ppo_minus_grpo=0.03,  # inside the +-0.05 similarity margin
                   eval_prompts=5000, heldout_pairs=5000, bon_prompts=5000, train_sd=0.003, point_sd=0.002)
SCENARIOS = {"null": NULL, "boundary": BOUNDARY, "strong": STRONG, "negligible": NEGLIGIBLE}


@functools.cache
def rates(scenario: str, seeds: int, draws: int) -> dict[str, dict[str, float]]:
    """Per check, the share of ``draws`` simulated studies giving each verdict."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for draw in range(draws):
        table = to_table(quickstart_rows(SCENARIOS[scenario], seeds=seeds, draw=10_000 * seeds + draw))
        for claim in claims.check_all(table):
            counts[claim.id][claim.verdict] += 1
            if claim.id not in CLAIMS:
                assert claim.verdict == "not tested", claim
                continue
            assert claim.range_low <= claim.ci_low <= claim.effect <= claim.ci_high <= claim.range_high, claim
    return {cid: {v: n / draws for v, n in c.items()} for cid, c in counts.items()}


def wrong_at_null(claim_id: str) -> str:
    return "not supported" if claim_id in EQUIVALENCE else "supported"


def right_when_clear(claim_id: str) -> str:
    return wrong_at_null(claim_id)


def right_when_negligible(claim_id: str) -> str:
    return "supported" if claim_id in EQUIVALENCE else "not supported"


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_no_true_effect_rarely_gives_a_wrong_verdict(seeds):
    found = rates("null", seeds, 200)
    wrong = {cid: found[cid].get(wrong_at_null(cid), 0.0) for cid in CLAIMS}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), wrong
    assert found["diminishing_returns"].get("supported", 0.0) <= MAX_ERROR  # was 10 / 33 / 61 % (step-0 FLOPs)


def test_an_effect_at_the_smallest_of_interest_is_rarely_called_negligible():
    found = rates("boundary", 3, 200)
    wrong = {cid: found[cid].get(right_when_negligible(cid), 0.0) for cid in CLAIMS}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), wrong


def test_a_clear_effect_is_found_with_three_seeds():
    found = rates("strong", 3, 100)
    power = {cid: found[cid].get(right_when_clear(cid), 0.0) for cid in CLAIMS}
    assert all(rate >= MIN_POWER for rate in power.values()), power


def test_a_negligible_effect_is_concluded_more_often_with_more_seeds():
    few, many = rates("negligible", 3, 100), rates("negligible", 8, 100)
    power = {cid: (few[cid].get(right_when_negligible(cid), 0.0), many[cid].get(right_when_negligible(cid), 0.0))
             for cid in CLAIMS}
    assert all(at_8 >= max(0.25, at_3) for at_3, at_8 in power.values()), power
    assert all(at_8 > at_3 for at_3, at_8 in power.values() if at_3 < 0.95), power  # grows unless already sure


def test_every_interval_stays_in_the_metric_range_on_a_small_noisy_grid():
    """Few prompts, two seeds, effects near the edge: unclipped, intervals would pass +-1."""
    noisy = Truth(diversity=0.3, rm_size_gain=0.6, policy_gap=0.6, ppo_minus_grpo=0.6, shaping_gain=0.6,
                  eval_prompts=4, heldout_pairs=4, bon_prompts=4, train_sd=0.1)
    clipped = 0
    for draw in range(5):
        for claim in claims.check_all(to_table(quickstart_rows(noisy, seeds=2, draw=draw))):
            if claim.id not in CLAIMS:
                continue
            assert claim.range_low <= claim.ci_low <= claim.ci_high <= claim.range_high, claim
            if claim.id in ("prompt_diversity", "rm_size_modest", "ppo_vs_grpo", "shaping_stability"):
                assert -1 <= claim.ci_low and claim.ci_high <= 1, claim
            clipped += claim.effect - 2 * claim.se < claim.range_low or claim.effect + 2 * claim.se > claim.range_high
    assert clipped >= 5  # unclipped, these intervals would have left the range


def tied_rows(eval_prompts: int) -> list[dict]:
    """Two seeds in which GRPO (the base trial) and PPO score the same pass@1, 41 / 100 or its like."""
    rows = quickstart_rows(replace(NULL, eval_prompts=eval_prompts, train_sd=0.002, point_sd=0.001), seeds=2)
    last = max(row.get("step", 0) for row in rows)
    for row in rows:
        base_or_ppo = row["trial"].startswith("seed=") or row.get("rl.algorithm") == "ppo"
        if base_or_ppo and row.get("step") == last:
            row["eval/pass@1"] = row["eval/pass@1_after"] = 0.41
    return rows


def test_two_tied_seeds_give_a_width_and_no_verdict_the_binomial_noise_does_not_justify():
    claim = claims.ppo_vs_grpo(to_table(tied_rows(100)))
    assert claim.effect == 0.0 and claim.n_seeds == 2
    assert claim.ci_high - claim.ci_low > 0.1  # 41 / 100 twice is not +-0.05 of precision
    assert claim.verdict == "inconclusive"
    assert np.isfinite(claim.min_detectable) and claim.min_detectable > claims.SESOI["ppo_vs_grpo"]


def test_two_tied_seeds_over_many_prompts_can_be_conclusive():
    claim = claims.ppo_vs_grpo(to_table(tied_rows(10_000)))
    assert 0 < claim.ci_high - claim.ci_low < 2 * claims.SESOI["ppo_vs_grpo"]
    assert claim.verdict == "supported"
