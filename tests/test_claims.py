import itertools
import re

import numpy as np
import pytest

from rlhfscale.analysis import claims
from rlhfscale.analysis.table import (
    BON_RM, DATA_PROMPTS, DATA_RPP, DIVERGED, FLOPS_RL, FLOPS_SFT, PASS, PASS_BEFORE,
    POLICY_PARAMS, REWARD_STD, RL_ALGORITHM, RL_N_SAMPLES, RL_SHAPING, RM_KIND, RM_PAIR_ACC,
    RM_PARAMS, RM_SIZE, to_table,
)

L2 = np.log2


def product(**axes):
    """Every combination of the axes (dotted names passed with '__' for '.')."""
    names = [n.replace("__", ".") for n in axes]
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def grid(configs, metrics, *, exact=None, seeds=range(4), steps=(0,), noise=0.003):
    """A tidy table: each config x seed x step; metrics = fn(row) + Gaussian noise, exact = fn(row)."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, config in itertools.product(seeds, configs):
        for step in steps:
            row = {"trial": "-".join(map(str, config.values())), "seed": seed, "step": step, **config}
            row |= {m: fn(row) for m, fn in (exact or {}).items()}
            rows.append(row | {m: fn(row) + rng.normal(0, noise) for m, fn in metrics.items()})
    return to_table(rows)


def detail_value(claim, label):
    """The effect printed after ``label`` in a claim's detail."""
    match = re.search(re.escape(label) + r": ([-+][0-9.e+-]+)", claim.detail)
    assert match, claim.detail
    return float(match.group(1))


def assert_tested(claim, verdict, effect, tol):
    assert claim.verdict == verdict, claim.detail
    assert claim.effect == pytest.approx(effect, abs=tol)
    assert claim.ci_low <= claim.effect <= claim.ci_high
    assert claim.ci_high - claim.ci_low < 4 * tol + 0.02


def test_registry_order_and_lookup():
    assert list(claims.CLAIMS) == [
        "rm_data_volume", "prompt_diversity", "prm_vs_orm", "samples_plateau", "samples_fixed_compute",
        "rm_size_modest", "policy_size", "ppo_vs_grpo", "shaping_stability", "diminishing_returns", "overoptimization_peak",
        "rl_kl_cost", "prm_reward", "prm_reward_samples", "prm_reward_training",
    ]
    with pytest.raises(KeyError, match="rm_data_volume, prompt_diversity"):
        claims.check("bigger_is_better", grid([{}], {PASS: lambda r: 0.5}))


def test_every_claim_is_not_tested_on_a_grid_without_axes():
    table = grid([{}], {PASS: lambda r: 0.5, PASS_BEFORE: lambda r: 0.4})
    results = claims.check_all(table)
    assert [c.verdict for c in results] == ["not tested"] * len(claims.CLAIMS)
    assert all(c.n_seeds == 0 and np.isnan(c.effect) for c in results)


VOLUME = product(data__prompts=[100, 400, 1600], data__responses_per_prompt=[2, 8])


def volume_acc(slope):
    return lambda r: 0.7 + slope * L2(r[DATA_PROMPTS] * r[DATA_RPP] / 800)


def test_rm_data_volume_supported_refuted_flat_and_untested():
    up = claims.rm_data_volume(grid(VOLUME, {RM_PAIR_ACC: volume_acc(0.03)}))
    assert_tested(up, "supported", 0.03, 0.003)
    assert up.n_seeds == 4
    assert_tested(claims.rm_data_volume(grid(VOLUME, {RM_PAIR_ACC: volume_acc(-0.02)})), "not supported", -0.02, 0.003)
    flat = claims.rm_data_volume(grid(VOLUME, {RM_PAIR_ACC: volume_acc(0.0)}))
    assert flat.verdict == "not supported" and flat.ci_high < claims.SESOI["rm_data_volume"]
    bon_only = claims.rm_data_volume(grid(VOLUME, {BON_RM: volume_acc(0.03)}))
    assert bon_only.verdict == "supported" and "bon/rm@16" in bon_only.detail
    one_volume = grid(product(data__prompts=[400], data__responses_per_prompt=[4]), {RM_PAIR_ACC: volume_acc(0.03)})
    assert "holds 'data.volume' at one value" in claims.rm_data_volume(one_volume).detail


def test_rm_data_volume_one_seed_bootstraps_over_points():
    claim = claims.rm_data_volume(grid(VOLUME, {RM_PAIR_ACC: volume_acc(0.03)}, seeds=[0]))
    assert claim.n_seeds == 1 and "points of one seed" in claim.detail
    assert_tested(claim, "supported", 0.03, 0.005)


MATCHED = [{DATA_PROMPTS: p, DATA_RPP: 1600 // p} for p in (100, 400, 1600)]


def test_prompt_diversity_both_ways_and_untested():
    more_prompts = grid(MATCHED, {RM_PAIR_ACC: lambda r: 0.6 + 0.02 * L2(r[DATA_PROMPTS] / 100)})
    assert_tested(claims.prompt_diversity(more_prompts), "supported", 0.08, 0.005)
    more_responses = grid(MATCHED, {RM_PAIR_ACC: lambda r: 0.8 - 0.02 * L2(r[DATA_PROMPTS] / 100)})
    assert_tested(claims.prompt_diversity(more_responses), "not supported", -0.08, 0.005)
    unmatched = grid(product(data__prompts=[100, 400], data__responses_per_prompt=[3]), {RM_PAIR_ACC: lambda r: 0.7})
    assert "data.responses_per_prompt" in claims.prompt_diversity(unmatched).detail
    no_equal_budget = grid([{DATA_PROMPTS: 100, DATA_RPP: 2}, {DATA_PROMPTS: 400, DATA_RPP: 4}], {RM_PAIR_ACC: lambda r: 0.7})
    assert claims.prompt_diversity(no_equal_budget).verdict == "not tested"


def rl_against(kinds, sizes=(None,), **extra):
    """RL trials rewarded by each RM kind (rm.kind and rl.reward agree), at RM data ``extra`` and policy sizes."""
    return [{RM_KIND: k, "rl.reward": {k: 1.0}, **({POLICY_PARAMS: s} if s else {}), **extra}
            for k in kinds for s in sizes]


def rl_kind_metrics(target_edge, shifted_loss, shifted="eval/pass@1_ood"):
    prm = lambda r: r[RM_KIND] == "prm"  # noqa: E731
    return {PASS_BEFORE: lambda r: 0.3, PASS: lambda r: 0.4 + target_edge * prm(r), FLOPS_RL: lambda r: 1e12,
            shifted: lambda r: 0.25 - shifted_loss * prm(r), f"{shifted}_before": lambda r: 0.2}


KINDS = product(rm__kind=["prm", "orm"], data__prompts=[100, 400, 1600], data__responses_per_prompt=[4])


def test_prm_vs_orm_reads_the_policies_rl_trained_against_each_rm_on_both_tasks():
    both = grid(rl_against(["prm", "orm"]), rl_kind_metrics(0.05, 0.05))
    assert_tested(claims.prm_vs_orm(both), "supported", 0.05, 0.003)
    assert detail_value(claims.prm_vs_orm(both), "on the shifted task") == pytest.approx(0.05, abs=0.003)
    assert "scaling with RM data not measured" in claims.prm_vs_orm(both).detail
    generalizes = grid(rl_against(["prm", "orm"]), rl_kind_metrics(0.05, -0.05))  # better off-task too
    assert_tested(claims.prm_vs_orm(generalizes), "not supported", 0.05, 0.003)
    labelled = grid(rl_against(["prm", "orm"]), rl_kind_metrics(0.05, 0.05, shifted="eval/pass@1_shift"))
    assert "eval/pass@1_shift" in claims.prm_vs_orm(labelled).detail
    assert claims.prm_vs_orm(labelled).verdict == "supported"


def test_prm_vs_orm_adds_the_rm_data_slope_where_the_grid_has_it():
    rm_slope = {"prm": 0.04, "orm": 0.01}
    rm_rows = [dict(c, **{"rl.enabled": False}) for c in KINDS]
    metrics = rl_kind_metrics(0.05, 0.05) | {BON_RM: lambda r: 0.4 + rm_slope[r[RM_KIND]] * L2(r[DATA_PROMPTS] / 100)
                                             if r.get("rl.enabled") is False else np.nan}
    table = grid(rl_against(["prm", "orm"], **{DATA_PROMPTS: 100, DATA_RPP: 4}) + rm_rows, metrics)
    claim = claims.prm_vs_orm(table)
    assert claim.verdict == "supported" and "all 3 parts" in claim.detail
    assert detail_value(claim, "per doubling of labelled volume") == pytest.approx(0.03, abs=0.003)


def test_prm_vs_orm_untested_without_rl_against_each_rm_or_without_a_shifted_task():
    orm_only = grid(rl_against(["orm"]), rl_kind_metrics(0.05, 0.05))
    assert "rl.reward: {prm: 1.0}" in claims.prm_vs_orm(orm_only).detail
    no_shift = grid(rl_against(["prm", "orm"]), {PASS: lambda r: 0.4, FLOPS_RL: lambda r: 1e12})
    assert claims.prm_vs_orm(no_shift).verdict == "not tested"
    assert "eval.tasks" in claims.prm_vs_orm(no_shift).detail
    rm_only = grid(KINDS, {BON_RM: lambda r: 0.4})  # the old reading: RM Best-of-N alone no longer decides C3
    assert claims.prm_vs_orm(rm_only).verdict == "not tested"


def n_gain(curve):
    return {PASS_BEFORE: lambda r: 0.3, PASS: lambda r: 0.3 + curve[r[RL_N_SAMPLES]]}


def test_samples_plateau_both_ways_and_untested():
    ns = product(rl__n_samples=[1, 4, 16, 64])
    plateau = claims.samples_plateau(grid(ns, n_gain({1: 0.02, 4: 0.08, 16: 0.095, 64: 0.10})))
    assert_tested(plateau, "supported", (0.095 - 0.02) / 4 - (0.10 - 0.095) / 2, 0.003)
    accelerating = claims.samples_plateau(grid(ns, n_gain({1: 0.0, 4: 0.01, 16: 0.04, 64: 0.09})))
    assert_tested(accelerating, "not supported", 0.04 / 4 - 0.05 / 2, 0.003)
    two = grid(product(rl__n_samples=[1, 4]), n_gain({1: 0.0, 4: 0.05}))
    assert claims.samples_plateau(two).verdict == "not tested"


RM_SIZES = [{RM_SIZE: "small", RM_PARAMS: 1e6}, {RM_SIZE: "large", RM_PARAMS: 1e7}]


def rm_size_metrics(rl_gain):
    large = lambda r: r[RM_PARAMS] > 5e6  # noqa: E731
    return {PASS_BEFORE: lambda r: 0.3, PASS: lambda r: 0.35 + rl_gain * large(r), BON_RM: lambda r: 0.4 + 0.1 * large(r)}


def test_rm_size_modest_reports_bon_and_rl_gains():
    modest = claims.rm_size_modest(grid(RM_SIZES, rm_size_metrics(0.02)))
    assert_tested(modest, "supported", 0.02, 0.003)
    assert detail_value(modest, "bon/rm@16") == pytest.approx(0.1, abs=0.003)
    assert detail_value(modest, "BoN gain minus RL gain") == pytest.approx(0.08, abs=0.01)
    assert_tested(claims.rm_size_modest(grid(RM_SIZES, rm_size_metrics(0.12))), "not supported", 0.12, 0.003)
    # "modest" is a two-sided band (equivalence test): a small loss is within it, a large one is not
    assert_tested(claims.rm_size_modest(grid(RM_SIZES, rm_size_metrics(-0.03))), "supported", -0.03, 0.003)
    assert_tested(claims.rm_size_modest(grid(RM_SIZES, rm_size_metrics(-0.12))), "not supported", -0.12, 0.003)
    names_only = grid(product(rm__size=["small", "large"]), {PASS: lambda r: 0.5})
    assert "cannot be ordered" in claims.rm_size_modest(names_only).detail


SHARED_RM = {"rm.enabled": True, "data.source": "rm_base", "rl.reward": {"orm": 1.0}}
POLICIES = [dict(SHARED_RM, **{POLICY_PARAMS: p}) for p in (1e6, 1e7, 1e8)]


def policy_metrics(gains, pair_acc=lambda r: 0.7):
    before = {1e6: 0.2, 1e7: 0.4, 1e8: 0.6}
    return {PASS_BEFORE: lambda r: before[r[POLICY_PARAMS]], PASS: lambda r: before[r[POLICY_PARAMS]] + gains[r[POLICY_PARAMS]],
            FLOPS_RL: lambda r: 1e12, RM_PAIR_ACC: pair_acc}


def test_policy_size_absolute_and_relative_gain_with_one_shared_rm():
    shrinking = claims.policy_size(grid(POLICIES, policy_metrics({1e6: 0.10, 1e7: 0.06, 1e8: 0.02}), noise=0.001))
    assert_tested(shrinking, "supported", 0.08, 0.003)
    assert detail_value(shrinking, "(eval/gain_rel)") == pytest.approx(0.10 / 0.2 - 0.02 / 0.6, abs=0.02)
    growing = claims.policy_size(grid(POLICIES, policy_metrics({1e6: 0.02, 1e7: 0.06, 1e8: 0.10}), noise=0.001))
    assert_tested(growing, "not supported", -0.08, 0.003)
    one = [dict(SHARED_RM, **{POLICY_PARAMS: 1e6})]
    assert claims.policy_size(grid(one, policy_metrics({1e6: 0.1}))).verdict == "not tested"


def test_policy_size_a_larger_policy_that_collapses_against_the_rm_supports_nothing():
    """The smallest policy loses less than the largest (gap +0.58), but only because RL against the RM destroyed
    the largest one's start: that is no smaller benefit, so the verdict stays inconclusive."""
    collapse = claims.policy_size(grid(POLICIES, policy_metrics({1e6: -0.02, 1e7: -0.3, 1e8: -0.6}), noise=0.001))
    assert collapse.verdict == "inconclusive" and collapse.effect == pytest.approx(0.58, abs=0.01)
    assert detail_value(collapse, "the largest policy's own eval/gain") == pytest.approx(-0.6, abs=0.01)
    gaining = claims.policy_size(grid(POLICIES, policy_metrics({1e6: 0.3, 1e7: 0.2, 1e8: 0.05}), noise=0.001))
    assert gaining.verdict == "supported"  # both gain, the larger less: the paper's finding


def test_policy_size_untested_without_one_rm_shared_by_every_size():
    gains = policy_metrics({1e6: 0.10, 1e7: 0.06, 1e8: 0.02})
    rule = grid(product(policy__params=[1e6, 1e7, 1e8]), gains)  # the verifier as reward: no reward model
    assert "data.source: rm_base" in claims.policy_size(rule).detail
    own = [dict(c, **{"data.source": "policy"}) for c in POLICIES]  # each size's RM trained on its own samples
    assert claims.policy_size(grid(own, gains)).verdict == "not tested"
    unrecorded = [{k: v for k, v in c.items() if k != "data.source"} for c in POLICIES]
    per_size = policy_metrics({1e6: 0.10, 1e7: 0.06, 1e8: 0.02}, pair_acc=lambda r: 0.6 + r[POLICY_PARAMS] / 1e9)
    noiseless = {k: v for k, v in gains.items() if k != RM_PAIR_ACC}
    assert claims.policy_size(grid(unrecorded, noiseless, exact={RM_PAIR_ACC: per_size[RM_PAIR_ACC]})).verdict \
        == "not tested"  # its RM differs by size (pair accuracy)
    shared = grid(unrecorded, noiseless, exact={RM_PAIR_ACC: lambda r: 0.7})
    assert claims.policy_size(shared).verdict == "supported"


ALGOS = product(rl__algorithm=["ppo", "grpo"], rl__n_samples=[4, 8])


def algo_pass(ppo, grpo):
    return {PASS: lambda r: ppo if r[RL_ALGORITHM] == "ppo" else grpo}


def test_ppo_vs_grpo_equivalence_three_ways_and_untested():
    assert_tested(claims.ppo_vs_grpo(grid(ALGOS, algo_pass(0.50, 0.51))), "supported", -0.01, 0.003)
    assert_tested(claims.ppo_vs_grpo(grid(ALGOS, algo_pass(0.60, 0.40))), "not supported", 0.20, 0.003)
    noisy = claims.ppo_vs_grpo(grid(ALGOS, algo_pass(0.50, 0.51), seeds=range(3), noise=0.1))
    assert noisy.verdict == "inconclusive" and noisy.n_seeds == 3
    no_ppo = grid(product(rl__algorithm=["grpo", "rloo"]), algo_pass(0.5, 0.5))
    assert "needs ['grpo', 'ppo']" in claims.ppo_vs_grpo(no_ppo).detail


SHAPINGS = product(rl__shaping=["none", "normalize", "asymmetric"])


def shaping_metrics(shaped_pass, shaped_std):
    def shaped(r, value, baseline):
        return baseline if r[RL_SHAPING] == "none" else value

    return {
        PASS: lambda r: shaped(r, shaped_pass, 0.40),
        REWARD_STD: lambda r: shaped(r, shaped_std, 0.20),
    }


def test_shaping_stability_both_ways_and_untested():
    helps = claims.shaping_stability(grid(SHAPINGS, shaping_metrics(0.45, 0.10), exact={DIVERGED: lambda r: 0.0}))
    assert helps.verdict == "supported"
    assert helps.effect == pytest.approx(0.05, abs=0.003)
    assert detail_value(helps, f"log {REWARD_STD}, none minus shaped") == pytest.approx(np.log(2), abs=0.05)
    assert "divergence" not in helps.detail  # no run diverged
    hurts = claims.shaping_stability(grid(SHAPINGS, shaping_metrics(0.35, 0.40)))
    assert hurts.verdict == "not supported" and hurts.effect == pytest.approx(-0.05, abs=0.003)
    no_baseline = grid(product(rl__shaping=["normalize", "asymmetric"]), shaping_metrics(0.45, 0.1))
    assert claims.shaping_stability(no_baseline).verdict == "not tested"


def test_shaping_counts_divergences():
    table = grid(SHAPINGS, {PASS: lambda r: 0.4}, exact={DIVERGED: lambda r: float(r[RL_SHAPING] == "none")})
    claim = claims.shaping_stability(table)
    assert claim.verdict == "supported" and claim.effect == pytest.approx(1.0)
    assert detail_value(claim, "divergence rate, none minus shaped") == 1.0


SFT_BUDGETS = (250, 500, 1000)
CURVES = product(rl__n_samples=[4], policy__params=[1e6], sft__steps=SFT_BUDGETS)


def curve_metrics(rl_gain, sft_slope):
    """pass@1 along RL curves started from SFT runs of several lengths; SFT gains ``sft_slope`` per doubling."""
    def before(r):
        return 0.3 + sft_slope * L2(r["sft.steps"] / SFT_BUDGETS[-1])
    return {PASS_BEFORE: before, PASS: lambda r: before(r) + rl_gain(r["step"])}


FLOPS = {FLOPS_RL: lambda r: r["step"] * r[RL_N_SAMPLES] * 1e12, FLOPS_SFT: lambda r: r["sft.steps"] * 1e9}


def rl_slope(gain, steps):
    """Least-squares slope of the gain per doubling of steps (of RL compute), over the steps after the start."""
    return np.polyfit(np.log2(steps), gain(steps), 1)[0]


@pytest.mark.parametrize("seeds", [range(3), [0]], ids=["3 seeds", "1 seed"])
def test_diminishing_returns_compares_rl_with_sft_per_doubling(seeds):
    """With one seed the SFT curve is one cell of three continuous values: no interval, no verdict."""
    steps = np.arange(0, 9)
    for gain, sft, verdict in ((lambda s: 0.02 * L2(np.maximum(s, 1)), 0.06, "supported"),
                               (lambda s: 0.06 * L2(np.maximum(s, 1)), 0.02, "not supported")):
        table = grid(CURVES, curve_metrics(gain, sft), exact=FLOPS, seeds=seeds, steps=steps)
        table = table.drop(columns="sft.steps")  # not an axis: the SFT budget shows only in flops/sft
        claim = claims.diminishing_returns(table)
        assert claim.verdict == (verdict if len(seeds) > 1 else "inconclusive"), claim.detail
        assert claim.effect == pytest.approx(sft - rl_slope(gain, steps[1:]), abs=0.01)
        assert len(seeds) == 1 or claim.ci_low <= claim.effect <= claim.ci_high


def test_diminishing_returns_untested_without_rl_flops_or_an_sft_curve():
    table = grid(CURVES, {PASS: lambda r: 0.3 + 0.01 * r["step"]}, steps=range(5))
    assert "flops/rl" in claims.diminishing_returns(table).detail
    one_budget = [c for c in CURVES if c["sft.steps"] == SFT_BUDGETS[-1]]
    rl_only = grid(one_budget, curve_metrics(lambda s: 0.02 * s, 0.0), exact=FLOPS, steps=range(5))
    claim = claims.diminishing_returns(rl_only)
    assert claim.verdict == "not tested" and "sft.steps" in claim.detail and "early minus late" in claim.detail


def test_comparisons_are_paired_by_seed():
    seed_offset = {0: -0.15, 1: 0.1, 2: 0.0, 3: 0.12}
    paired = grid(ALGOS, {PASS: lambda r: 0.5 + seed_offset[r["seed"]] + 0.01 * (r[RL_ALGORITHM] == "ppo")}, noise=0.002)
    claim = claims.ppo_vs_grpo(paired)
    assert_tested(claim, "supported", 0.01, 0.003)  # unpaired, the seed offsets would swamp the margin


def test_one_seed_bootstraps_over_trials():
    claim = claims.ppo_vs_grpo(grid(product(rl__algorithm=["ppo", "grpo"], rl__n_samples=[2, 4, 8, 16]),
                                    algo_pass(0.50, 0.51), seeds=[0]))
    assert claim.n_seeds == 1 and "over 4 trials, one seed" in claim.detail
    assert_tested(claim, "supported", -0.01, 0.004)
