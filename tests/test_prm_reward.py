"""The three checks of a PRM as the RL reward on rows shaped as `configs/prm-reward.yaml` writes them
(``prm_rows``), their verdicts and their calibration (as tests/test_claims_calibration.py: simulated studies
of three seeds, 100 without a true effect and 100 with every effect at its smallest of interest, wrong
verdicts at most 0.08; seeded draws)."""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import replace

import pytest
from prm_rows import PrmTruth, as_json_rewards, prm_rows
from quickstart_rows import quickstart_rows

from rlhfscale.analysis import claims
from rlhfscale.analysis.table import to_table

PRM = ("prm_reward", "prm_reward_samples", "prm_reward_training")
MAX_ERROR = 0.08
DRAWS = {"null": 100, "boundary": 100, "strong": 30}
BOUNDARY = PrmTruth(prm_edge={"nano": 0.015, "micro": 0.035},  # main effect 0.02 over the cells, size gap 0.02
                    prm_n_gain={2: 0.10, 4: 0.12, 8: 0.13},  # the PRM's late rise and its gap over the ORM: 0.01
                    prm_late=0.01)
STRONG = PrmTruth(prm_edge={"nano": 0.05, "micro": 0.25}, prm_n_gain={2: 0.10, 4: 0.20, 8: 0.40},
                  orm_n_gain={2: 0.10, 4: 0.20, 8: 0.20}, prm_late=0.30, orm_late=0.0)
PRECISE = dict(eval_prompts=20000, seed_sd=0.005, train_sd=0.002, point_sd=0.001)
SCENARIOS = {"null": PrmTruth(), "boundary": BOUNDARY, "strong": STRONG}


def size_gap(claim) -> float:
    """The PRM-minus-ORM gap at the largest minus at the smallest policy, from the claim's detail."""
    match = re.search(r"that gap at the largest minus at the smallest policy: ([-+][0-9.e+-]+)", claim.detail)
    assert match, claim.detail
    return float(match.group(1))


@functools.cache
def rates(scenario: str, seeds: int = 3) -> dict[str, dict[str, float]]:
    draws = DRAWS[scenario]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for draw in range(draws):
        table = to_table(prm_rows(SCENARIOS[scenario], seeds=seeds, draw=1000 * seeds + draw))
        for claim in claims.check_all(table, PRM):
            counts[claim.id][claim.verdict] += 1
            assert claim.range_low <= claim.ci_low <= claim.effect <= claim.ci_high <= claim.range_high, claim
    return {cid: {v: n / draws for v, n in c.items()} for cid, c in counts.items()}


@pytest.mark.parametrize("rewards_as", ["dicts", "json text", "run metrics"])
def test_each_check_reaches_its_effect_on_pipeline_rows(rewards_as):
    rows = prm_rows(replace(STRONG, **PRECISE), seeds=3)
    if rewards_as == "json text":
        rows = as_json_rewards(rows)
    elif rewards_as == "run metrics":  # no rl.reward axis: the rl/reward_<source> batch means say which RM
        rows = [{k: v for k, v in r.items() if k != "rl.reward"} for r in rows]
    reward, samples, training = claims.check_all(to_table(rows), PRM)
    assert [reward.verdict, samples.verdict, training.verdict] == ["supported"] * 3, (
        reward.detail, samples.detail, training.detail)
    # the cells: nano at n = 2, 4, 8 (0.05, plus the PRM's extra 0.2 at n = 8) and micro at n = 4 (0.25)
    assert reward.effect == pytest.approx((0.05 + 0.05 + 0.25 + 0.25) / 4, abs=0.01)
    assert size_gap(reward) == pytest.approx(0.25 - 0.05, abs=0.01)
    assert "prm_aggregate minus orm" in reward.detail and "prm_dense minus orm" in reward.detail
    assert samples.effect == pytest.approx(0.2, abs=0.015)
    assert training.effect == pytest.approx(0.3, abs=0.02)
    assert all(c.n_seeds == 3 for c in (reward, samples, training))


def test_an_equal_gap_at_every_policy_size_is_not_more_so_for_larger_policies():
    truth = replace(STRONG, prm_edge={"nano": 0.1, "micro": 0.1}, **PRECISE)
    claim = claims.prm_reward(to_table(prm_rows(truth, seeds=3)))
    assert claim.verdict == "not supported" and claim.effect == pytest.approx(0.15, abs=0.01), claim.detail
    assert size_gap(claim) == pytest.approx(0.0, abs=0.01)


def test_a_prm_that_plateaus_like_the_orm_is_not_supported():
    truth = replace(STRONG, prm_n_gain=STRONG.orm_n_gain, prm_late=0.0, **PRECISE)
    samples, training = claims.check_all(to_table(prm_rows(truth, seeds=3)), PRM[1:])
    assert samples.verdict == training.verdict == "not supported", (samples.detail, training.detail)


def test_grids_without_both_rewards_are_not_tested():
    for claim in claims.check_all(to_table(quickstart_rows(seeds=2)), PRM):
        assert claim.verdict == "not tested" and "rewarded by an ORM and by a PRM" in claim.detail
        assert "['orm', 'rule']" in claim.detail
    orm_only = [r for r in prm_rows(seeds=2) if "prm" not in r["rl.reward"]]
    assert all(c.verdict == "not tested" for c in claims.check_all(to_table(orm_only), PRM))
    one_size = [r for r in prm_rows(replace(STRONG, **PRECISE), seeds=3) if r["policy.size"] == "nano"]
    claim = claims.prm_reward(to_table(one_size))
    assert claim.verdict == "supported" and "one policy size: 'more so for larger policies' not tested" in claim.detail


def test_no_true_effect_rarely_gives_a_wrong_verdict():
    found = rates("null")
    wrong = {cid: found[cid].get("supported", 0.0) for cid in PRM}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), (wrong, found)


def test_an_effect_at_the_smallest_of_interest_is_rarely_called_negligible():
    found = rates("boundary")
    wrong = {cid: found[cid].get("not supported", 0.0) for cid in PRM}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), (wrong, found)


def test_a_clear_effect_is_found_with_three_seeds():
    found = rates("strong")
    power = {cid: found[cid].get("supported", 0.0) for cid in PRM}
    assert all(rate >= 0.8 for rate in power.values()), (power, found)
