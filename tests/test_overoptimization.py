"""The over-optimization checks (Gao et al. 2022) on rows shaped as `configs/overoptimization.yaml` writes them
(``overopt_rows``): the curves read from the rows, the fits, the verdicts, and their calibration.

Calibration, as tests/test_claims_calibration.py does for the others, over simulated studies of two
seeds (100 without a true effect, 60 in the other scenarios; threshold 0.08: at 100 draws a check whose
true rate of a wrong verdict were 5 % exceeds it with probability ~6 %, one at its nominal 2.5 % with
probability ~4e-4, at 60 draws ~18 % and ~2 %; the draws are seeded):
- no true effect (the proxy carries no information: gold flat in sqrt(KL) for both methods): neither
  claim says "supported";
- gold rises, then stays flat (never falls), the same curve for Best-of-N and RL: the peak claim
  rarely says "supported" (its fall is exactly 0), nor the KL claim (the methods are equally efficient);
- RL exactly one smallest effect of interest less efficient than Best-of-N: rarely "not supported";
- Gao's shapes with a clear peak and RL far less efficient: both found in most studies (three seeds).
"""

from __future__ import annotations

import collections
import functools
import json
from dataclasses import asdict

import numpy as np
import pytest
from overopt_rows import NS, RL_STEPS, Gold, flat, overopt_rows, peaked_bon, peaked_rl, plateau

from rlhfscale.analysis import claims, overopt
from rlhfscale.analysis.plots import write_plots
from rlhfscale.analysis.report import _json_value
from rlhfscale.analysis.table import GOLD_REWARD, KL, PROXY_REWARD, STEP, to_table

G1 = ("overoptimization_peak", "rl_kl_cost")
MAX_ERROR = 0.08
DRAWS = {"null": 100, "plateau": 60, "kl_boundary": 60, "strong": 30}


def rl_one_sesoi_worse(d):
    """RL's gold gain exactly 0.01 below Best-of-N's (flat) at every point past the start."""
    return np.where(np.asarray(d, dtype=float) > 0, -claims.SESOI["rl_kl_cost"], 0.0)


STRONG = Gold(bon=peaked_bon, rl=peaked_rl)
SCENARIOS = {
    "null": Gold(),
    "plateau": Gold(bon=plateau, rl=plateau),
    "kl_boundary": Gold(bon=flat, rl=rl_one_sesoi_worse),
    "strong": STRONG,
}


@functools.cache
def rates(scenario: str, seeds: int = 2) -> dict[str, dict[str, float]]:
    draws = DRAWS[scenario]
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for draw in range(draws):
        table = to_table(overopt_rows(SCENARIOS[scenario], seeds=seeds, draw=1000 * seeds + draw))
        for claim in claims.check_all(table, G1):
            counts[claim.id][claim.verdict] += 1
            assert claim.range_low <= claim.ci_low <= claim.effect <= claim.ci_high <= claim.range_high, claim
    return {cid: {v: n / draws for v, n in c.items()} for cid, c in counts.items()}


def test_the_curves_are_read_from_pipeline_rows():
    rows = overopt_rows(STRONG, seeds=2)
    assert {"data.prompts=32,seed=0", "data.prompts=512,rm.size=micro,seed=1"} <= {r["trial"] for r in rows}
    table = to_table(rows)
    start = table[table[STEP] == 0]
    assert (start[KL] == 0).all() and start[GOLD_REWARD].isna().all() and start[PROXY_REWARD].isna().all()
    assert table.loc[table[STEP] == RL_STEPS, GOLD_REWARD].notna().all()  # the final point's are its own
    c = overopt.curves(table)
    assert len(c.bon) == 8 * len(NS) and set(c.bon["n"]) == set(NS)
    assert np.allclose(sorted(set(c.bon["d"].round(6))), np.sqrt(overopt.bon_kl(np.array(NS))).round(6))
    assert (c.bon.loc[c.bon["n"] == 1, ["gold_gain", "proxy_gain"]] == 0).all().all()
    assert len(c.rl) == 8 * RL_STEPS and c.rl["unit"].nunique() == 8  # steps 1..S of every curve, not step 0
    assert c.rl_started_from_bon == 0 and (c.rl.loc[c.rl["start"], "gold_gain"] == 0).all()  # step 1: KL 0
    assert set(c.rl["config"]) == set(c.bon["config"]) == {
        "data.prompts=32", "data.prompts=128", "data.prompts=512", "data.prompts=512,rm.size=micro"}


def test_a_clear_peak_and_a_costly_rl_are_found_with_the_fits_and_their_intervals(tmp_path):
    table = to_table(overopt_rows(STRONG, seeds=4, draw=3))
    peak, cost = claims.check_all(table, G1)
    assert peak.verdict == "supported" and cost.verdict == "supported", (peak.detail, cost.detail)
    assert peak.n_seeds == cost.n_seeds == 4
    assert peak.effect == pytest.approx(0.05 * 0.9 * 1.25 - 0.02, abs=0.03)  # Best-of-N's gold falls ~0.04
    assert 0.02 < cost.effect < 0.05
    bon_fit, rl_fit = peak.fits["bon"]["all"], peak.fits["rl"]["all"]
    assert bon_fit["params"]["alpha"] == pytest.approx(0.10, abs=0.02)
    assert bon_fit["params"]["beta"] == pytest.approx(0.05, abs=0.015)
    assert rl_fit["params"]["alpha"] == pytest.approx(0.01, abs=0.01)
    assert rl_fit["params"]["beta"] == pytest.approx(0.02, abs=0.01)
    for fit in (bon_fit, rl_fit):
        for name, (low, high) in fit["ci"].items():
            assert low < fit["params"][name] < high and fit["df"] >= 3
    assert bon_fit["peak_d"] == pytest.approx(1.0, abs=0.3) and rl_fit["peak_d"] == pytest.approx(0.61, abs=0.4)
    assert set(peak.fits["bon"]) == {"all", "data.prompts=32", "data.prompts=128", "data.prompts=512",
                                     "data.prompts=512,rm.size=micro"}
    assert "d (alpha - beta d)" in peak.detail and "d (alpha - beta log d)" in peak.detail
    assert "takes Best-of-N" in cost.detail
    written = write_plots(table, [peak, cost], tmp_path)
    assert {"overoptimization_peak", "rl_kl_cost", "overoptimization"} <= written.keys()
    entry = json.loads(json.dumps({k: _json_value(v) for k, v in asdict(peak).items()}, allow_nan=False))
    assert entry["fits"]["bon"]["all"]["ci"]["alpha"][0] < 0.10  # what claims.json holds: plain JSON


def test_rl_curves_without_a_start_begin_at_their_best_of_n_pool():
    rows = [r for r in overopt_rows(STRONG, seeds=2) if r["step"] != 1]  # rl.eval_every 2: no point at KL 0
    c = overopt.curves(to_table(rows))
    assert c.rl_started_from_bon == 8 and not c.rl["start"].any()
    claim = claims.rl_kl_cost(to_table(rows))
    assert claim.verdict != "not tested" and "their gains are from the Best-of-N pool mean" in claim.detail


def test_grids_without_the_curves_are_not_tested():
    from quickstart_rows import quickstart_rows

    for claim in claims.check_all(to_table(quickstart_rows(seeds=2)), G1):
        assert claim.verdict == "not tested" and "rl.reward orm or prm" in claim.detail
    bon_only = [r for r in overopt_rows(STRONG, seeds=2) if r["step"] == 0]
    for r in bon_only:
        for key in [k for k in r if k.startswith("rl/") or k == "curve"]:
            del r[key]
    peak, cost = claims.check_all(to_table(bon_only), G1)
    assert peak.verdict != "not tested" and "RL (" not in peak.detail
    assert cost.verdict == "not tested" and "needs a Best-of-N curve and an RL curve" in cost.detail


def test_no_true_effect_rarely_gives_a_wrong_verdict():
    found = rates("null")
    wrong = {cid: found[cid].get("supported", 0.0) for cid in G1}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), (wrong, found)


def test_gold_that_rises_and_stays_is_rarely_called_a_peak():
    found = rates("plateau")
    wrong = {cid: found[cid].get("supported", 0.0) for cid in G1}
    assert all(rate <= MAX_ERROR for rate in wrong.values()), (wrong, found)


def test_rl_one_smallest_effect_less_efficient_is_rarely_called_negligible():
    found = rates("kl_boundary")
    assert found["rl_kl_cost"].get("not supported", 0.0) <= MAX_ERROR, found


def test_a_clear_effect_is_found():
    found = rates("strong", seeds=3)
    power = {cid: found[cid].get("supported", 0.0) for cid in G1}
    assert all(rate >= 0.8 for rate in power.values()), (power, found)
