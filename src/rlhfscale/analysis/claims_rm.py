"""Claim checks on the reward model: its training data (volume, prompt diversity), process vs outcome
supervision, and its size under RL (findings 1, 2, 3 and 5 of Hou et al. 2024)."""

from __future__ import annotations

import pandas as pd

from rlhfscale.analysis.claim_base import (
    ORDER, RM_CONTEXT, SESOI, Claim, held_fixed, make_claim, not_tested, pick, shared_final_points,
    size_reason, untested_reason, with_size_order,
)
from rlhfscale.analysis.effects import Both, ByLevel, difference, estimate, last_minus_first, slope
from rlhfscale.analysis.stats import directional, equivalent
from rlhfscale.analysis.table import (
    BON_RM, DATA_PROMPTS, DATA_RPP, DATA_VOLUME, GAIN, PASS, PASS_OOD, RM_KIND, RM_PAIR_ACC, RM_PARAMS,
    RM_SIZE, has,
)

SHORTFALL = "_bon_minus_rl_gain"


def _rm_keys(table: pd.DataFrame, *extra: str) -> list[str]:
    """What an RM-quality cell holds fixed: the RM's kind, size and task (plus ``extra``)."""
    return [a for a in (*RM_CONTEXT, *extra) if has(table, a)]


def rm_data_volume(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_VOLUME], [metric]):
        return not_tested("rm_data_volume", reason)
    final = shared_final_points(table)
    est = estimate(final, _rm_keys(final), ByLevel(DATA_VOLUME, slope), metric, points=True)
    detail = f"slope of {metric} per doubling of labelled volume (prompts x responses): {est}"
    return make_claim("rm_data_volume", est, directional(est, SESOI["rm_data_volume"]), detail)


def prompt_diversity(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_PROMPTS, DATA_RPP], [metric]):
        return not_tested("prompt_diversity", reason)
    final = shared_final_points(table)
    est = estimate(final, _rm_keys(final, DATA_VOLUME), ByLevel(DATA_PROMPTS, last_minus_first), metric)
    detail = (f"{metric} with the most prompts minus with the fewest (more responses each), "
              f"at equal labelled volume: {est}")
    return make_claim("prompt_diversity", est, directional(est, SESOI["prompt_diversity"]), detail)


def prm_vs_orm(table: pd.DataFrame) -> Claim:
    metric = pick(table, BON_RM, RM_PAIR_ACC)
    if reason := untested_reason(table, [DATA_VOLUME, RM_KIND], [metric], {RM_KIND: {"prm", "orm"}}):
        return not_tested("prm_vs_orm", reason)
    final = shared_final_points(table)
    slope_gap = Both(ByLevel(DATA_VOLUME, slope, where=(RM_KIND, "prm")),
                     ByLevel(DATA_VOLUME, slope, -1.0, where=(RM_KIND, "orm")))
    est = estimate(final, [k for k in _rm_keys(final) if k != RM_KIND], slope_gap, metric)
    detail = f"PRM minus ORM slope of {metric} per doubling of labelled volume: {est}"
    fixed = held_fixed(final, (RM_KIND,))
    for label, column in (("targeted pass@1", PASS), ("other-task pass@1", PASS_OOD)):
        if has(final, column):
            side = estimate(final, fixed, ByLevel(RM_KIND, difference("prm", "orm")), column)
            detail += f"; PRM minus ORM {label}: {side}"
    return make_claim("prm_vs_orm", est, directional(est, SESOI["prm_vs_orm"]), detail)



def rm_size_modest(table: pd.DataFrame) -> Claim:
    metric = pick(table, GAIN, PASS)
    if reason := size_reason(table, RM_SIZE, RM_PARAMS, [metric]):
        return not_tested("rm_size_modest", reason)
    final = with_size_order(table, RM_SIZE, RM_PARAMS)
    fixed = held_fixed(final, (RM_SIZE, RM_PARAMS))
    rl = estimate(final, fixed, ByLevel(ORDER, last_minus_first), metric)
    margin = SESOI["rm_size_modest"]
    detail = f"RL: largest minus smallest RM, policy {metric}: {rl} (modest: within +-{margin:g})"
    if has(final, BON_RM):
        bon = estimate(final, fixed, ByLevel(ORDER, last_minus_first), BON_RM)
        final = final.assign(**{SHORTFALL: final[BON_RM] - final[metric]})
        shortfall = estimate(final, fixed, ByLevel(ORDER, last_minus_first), SHORTFALL,
                             bounds=(-1.0, 2.0 if metric == GAIN else 1.0))
        detail += f"; Best-of-16: largest minus smallest RM, {BON_RM}: {bon}; BoN gain minus RL gain: {shortfall}"
    return make_claim("rm_size_modest", rl, equivalent(rl, margin), detail)


