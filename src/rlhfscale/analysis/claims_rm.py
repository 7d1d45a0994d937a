"""Claim checks on the reward model: its training data (volume, prompt diversity), process vs outcome
supervision, and its size under RL (findings 1, 2, 3 and 5 of Hou et al. 2024)."""

from __future__ import annotations

import pandas as pd

from rlhfscale.analysis.claim_base import (
    ORDER, PART_SESOI, REWARD, RM_CONTEXT, SESOI, Claim, all_parts, held_fixed, make_claim, not_tested, pick,
    shared_final_points, size_reason, untested_reason, with_size_order,
)
from rlhfscale.analysis.claims_prm import prm_minus_orm, prm_reason, rewarded
from rlhfscale.analysis.effects import Both, ByLevel, estimate, last_minus_first, slope
from rlhfscale.analysis.stats import Estimate, directional, equivalent
from rlhfscale.analysis.table import (
    BON_RM, DATA_PROMPTS, DATA_RPP, DATA_VOLUME, GAIN, PASS, PASS_OOD, RM_KIND, RM_PAIR_ACC, RM_PARAMS,
    RL_REWARD_KIND, RM_SIZE, has,
)

SHORTFALL = "_bon_minus_rl_gain"
HELDOUT_PAIRS = "rm/heldout_pairs"


def pairs_note(final: pd.DataFrame, metric: str) -> str:
    """How many held-out pairs each RM's accuracy rests on (when the rm stage logged it)."""
    if metric != RM_PAIR_ACC or not has(final, HELDOUT_PAIRS):
        return ""
    n = final[HELDOUT_PAIRS].dropna()
    return f"; each RM's accuracy on {int(n.min())}-{int(n.max())} held-out pairs" if len(n) else ""


def _rm_keys(table: pd.DataFrame, *extra: str) -> list[str]:
    """What an RM-quality cell holds fixed: the RM's kind, size and task (plus ``extra``)."""
    return [a for a in (*RM_CONTEXT, *extra) if has(table, a)]


def rm_data_volume(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_VOLUME], [metric]):
        return not_tested("rm_data_volume", reason)
    final = shared_final_points(table)
    est = estimate(final, _rm_keys(final), ByLevel(DATA_VOLUME, slope), metric, points=True)
    detail = f"slope of {metric} per doubling of labelled volume (prompts x responses): {est}{pairs_note(final, metric)}"
    return make_claim("rm_data_volume", est, directional(est, SESOI["rm_data_volume"]), detail)


def prompt_diversity(table: pd.DataFrame) -> Claim:
    metric = pick(table, RM_PAIR_ACC, BON_RM)
    if reason := untested_reason(table, [DATA_PROMPTS, DATA_RPP], [metric]):
        return not_tested("prompt_diversity", reason)
    final = shared_final_points(table)
    est = estimate(final, _rm_keys(final, DATA_VOLUME), ByLevel(DATA_PROMPTS, last_minus_first), metric)
    detail = (f"{metric} with the most prompts minus with the fewest (more responses each), "
              f"at equal labelled volume: {est}{pairs_note(final, metric)}")
    return make_claim("prompt_diversity", est, directional(est, SESOI["prompt_diversity"]), detail)


SHIFT_TRIALS = ("{rm.enabled: true, rm.kind: orm, rl.reward: {orm: 1.0}, eval.tasks: {ood: <a shifted task>}} and "
                "the same with rm.kind: prm, rl.reward: {prm: 1.0}")
PASS_SHIFT = PASS_OOD  # the shifted task's pass@1, copied here from eval/pass@1_<label> when that is what was logged


def shifted_metric(table: pd.DataFrame) -> str | None:
    """The column of pass@1 on a shifted task: ``eval/pass@1_ood``, else the first ``eval/pass@1_<label>`` of
    ``eval.tasks`` (a label whose ``_before`` the RL stage also logged)."""
    if has(table, PASS_OOD):
        return PASS_OOD
    labelled = sorted(c for c in table.columns if isinstance(c, str) and c.startswith(f"{PASS}_")
                      and has(table, f"{c}_before") and not c.endswith(("_before", "_after")))
    return next((c for c in labelled if has(table, c)), None)


def _scaling_part(table: pd.DataFrame) -> tuple[Estimate, str]:
    """PRM minus ORM slope of the RM's own Best-of-16 (else pair accuracy) per doubling of labelled volume."""
    metric = pick(table, BON_RM, RM_PAIR_ACC)
    if untested_reason(table, [DATA_VOLUME, RM_KIND], [metric], {RM_KIND: {"prm", "orm"}}):
        return Estimate.missing("no RM trials of both kinds at two data volumes"), metric
    final = shared_final_points(table)
    slope_gap = Both(ByLevel(DATA_VOLUME, slope, where=(RM_KIND, "prm")),
                     ByLevel(DATA_VOLUME, slope, -1.0, where=(RM_KIND, "orm")))
    return estimate(final, [k for k in _rm_keys(final) if k != RM_KIND], slope_gap, metric), metric


def prm_vs_orm(table: pd.DataFrame) -> Claim:
    """Finding 3 on the policies RL trained against each RM kind (rl.reward {orm: 1} vs {prm: 1}), compared
    within cells (seed and every other axis): the PRM-rewarded minus the ORM-rewarded final pass@1 on the
    targeted task (effect; stronger: > 0) and the ORM- minus the PRM-rewarded pass@1 on a shifted task
    (``eval.tasks``; generalizes worse: > 0); where the grid trains both RM kinds at several data volumes, also
    the PRM minus ORM Best-of-16 slope per doubling of labelled volume (scales better with data). Supported when
    every part is; not supported when any part lies below its SESOI (``all_parts``)."""
    final = rewarded(table, final=True)
    if reason := prm_reason(final, table, PASS):
        return not_tested("prm_vs_orm", f"{reason}; C3 needs {SHIFT_TRIALS}")
    if (shifted := shifted_metric(final)) is None:
        return not_tested("prm_vs_orm", "the RL trials against an ORM and a PRM record no pass@1 on a shifted task: "
                          f"evaluate them on another task variant with eval.tasks ({SHIFT_TRIALS})")
    final = final.assign(**{PASS_SHIFT: final[shifted]})
    fixed = held_fixed(final, (RM_KIND, RM_PARAMS, RL_REWARD_KIND))
    target = estimate(final, fixed, ByLevel(REWARD, prm_minus_orm), PASS)
    shift = estimate(final, fixed, ByLevel(REWARD, prm_minus_orm, -1.0), PASS_SHIFT)
    scaling, scaling_metric = _scaling_part(table)
    parts = [(target, SESOI["prm_vs_orm"]), (shift, PART_SESOI["prm_vs_orm_shifted"])]
    detail = (f"RL against each RM kind: PRM- minus ORM-rewarded final {PASS} on the targeted task (effect): {target}; "
              f"ORM- minus PRM-rewarded {shifted} on the shifted task: {shift}")
    if scaling.n_seeds:
        parts.append((scaling, PART_SESOI["prm_vs_orm_slope"]))
        detail += f"; PRM minus ORM slope of {scaling_metric} per doubling of labelled volume: {scaling}"
    else:
        detail += f"; scaling with RM data not measured ({scaling.basis})"
    if not shift.n_seeds:
        return not_tested("prm_vs_orm", f"no cell holds both RM kinds' shifted-task pass@1; {detail}")
    detail += (f"; supported when all {len(parts)} parts exceed 0, not supported when one lies below its smallest "
               f"effect of interest ({', '.join(f'{s:g}' for _, s in parts)}; Bonferroni over the parts)")
    return make_claim("prm_vs_orm", target, all_parts(parts), detail)


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


