"""A PRM as the RL reward, the seed's three results: PRM- beats ORM-rewarded RL (more so for larger
policies), more samples per prompt keep helping under a PRM reward, and a PRM-rewarded policy keeps
improving along training; RL trials rewarded by an ORM and by a PRM (dense or aggregated) are
compared within cells."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhfscale.analysis.claim_base import (
    ORDER, REWARD, SESOI, SIDE, Claim, both_hold, cached, held_fixed, make_claim, not_tested, pick,
    shared_final_points,
)
from rlhfscale.analysis.effects import Both, ByLevel, difference, estimate, last_minus_first
from rlhfscale.analysis.stats import directional
from rlhfscale.analysis.table import (
    GAIN, PASS, POLICY_PARAMS, POLICY_SIZE, RL_LR, RL_N_SAMPLES, RL_PRM_MODE, RM_KIND, RM_PARAMS, SEED, STEP,
    RL_REWARD_KIND, TRIAL, has, levels, reward_kind,
)


def with_reward(frame: pd.DataFrame, kind: pd.Series | None = None) -> pd.DataFrame:
    """The RL rows rewarded by one learned RM, with ``_reward`` (orm, prm_aggregate, prm_dense) and
    ``_reward_side`` (``kind``: ``table.reward_kind(frame)``, when known)."""
    kind = reward_kind(frame) if kind is None else kind
    keep = kind.isin(["orm", "prm"]).to_numpy()
    mode = (frame[RL_PRM_MODE].fillna("aggregate").astype(str) if RL_PRM_MODE in frame
            else pd.Series("aggregate", index=frame.index))
    reward = np.where(kind == "prm", "prm_" + mode, kind.astype(object))
    return frame.assign(**{REWARD: reward, SIDE: kind})[keep]


def learned_rm_final(table: pd.DataFrame) -> pd.DataFrame:
    """``with_reward`` of the final points: the runs rewarded by one learned RM (an ORM or a PRM)."""
    kind = cached(table, "reward_kind", lambda: reward_kind(table))

    def of_final() -> pd.DataFrame:
        points = shared_final_points(table)
        by_run = dict(zip(zip(table[TRIAL], table[SEED]), kind))  # a run's reward is the same at every point
        return with_reward(points, pd.Series([by_run.get(k) for k in zip(points[TRIAL], points[SEED])],
                                             index=points.index, dtype=object))
    return cached(table, "rewarded_final", of_final)


def rewarded(table: pd.DataFrame, final: bool) -> pd.DataFrame:
    """``with_reward`` of the final points (or of every row), empty unless both an ORM and a PRM rewarded RL."""
    kind = cached(table, "reward_kind", lambda: reward_kind(table))
    if not {"orm", "prm"} <= set(kind.dropna()):
        return pd.DataFrame(columns=[SIDE, REWARD, STEP])
    if not final:
        return cached(table, "rewarded_rows", lambda: with_reward(table, kind))
    return learned_rm_final(table)


def prm_reason(rows: pd.DataFrame, table: pd.DataFrame, metric: str) -> str | None:
    if not has(table, metric):
        return f"metric '{metric}' was not recorded"
    if not {"orm", "prm"} <= set(rows[SIDE]):
        found = sorted(set(cached(table, "reward_kind", lambda: reward_kind(table)).dropna()))
        return (f"needs RL trials rewarded by an ORM and by a PRM (rl.reward {{orm: 1.0}} and {{prm: 1.0}}, "
                f"rl.prm_mode aggregate or dense); the grid's RL rewards: {found or 'none'}")
    return None


def prm_minus_orm(levels: np.ndarray) -> np.ndarray | None:
    """The mean over PRM rewards (prm_aggregate, prm_dense) minus the ORM reward."""
    found = list(levels)
    prm = [i for i, level in enumerate(found) if str(level).startswith("prm")]
    if "orm" not in found or not prm:
        return None
    out = np.zeros(len(found))
    out[found.index("orm")], out[prm] = -1.0, 1.0 / len(prm)
    return out


def late_slope(levels: np.ndarray) -> np.ndarray | None:
    """Least-squares slope per doubling over the upper half of the levels (the middle one included when
    their number is odd; both of two)."""
    if len(levels) < 2:
        return None
    start = min(len(levels) // 2, len(levels) - 2)
    x = np.log2(levels[start:].astype(float))
    out = np.zeros(len(levels))
    out[start:] = (x - x.mean()) / ((x - x.mean()) @ (x - x.mean()))
    return out


def _prm_vs_orm(factor: str, combine, sign_orm: float = -1.0) -> Both:
    return Both(ByLevel(factor, combine, where=(SIDE, "prm")),
                ByLevel(factor, combine, sign_orm, where=(SIDE, "orm")))


def _mode_details(rows: pd.DataFrame, fixed: list[str], metric: str) -> str:
    """Each PRM reward mode against the ORM, when the grid has both modes."""
    modes = sorted(m for m in rows[REWARD].unique() if str(m).startswith("prm"))
    if len(modes) < 2:
        return ""
    ests = [(mode, estimate(rows[rows[REWARD].isin([mode, "orm"])], fixed, ByLevel(REWARD, difference(mode, "orm")),
                            metric)) for mode in modes]
    return "".join(f"; {mode} minus orm final {metric}: {est}" for mode, est in ests)


def prm_reward(table: pd.DataFrame) -> Claim:
    """PRM- minus ORM-rewarded final pass@1; where policy sizes vary, that gap at the largest minus the smallest
    policy as well (supported when both are positive, not supported when either is below its SESOI)."""
    metric = pick(table, GAIN, PASS)
    final = rewarded(table, final=True)
    if reason := prm_reason(final, table, metric):
        return not_tested("prm_reward", reason)
    fixed = held_fixed(final, (RM_KIND, RM_PARAMS, RL_REWARD_KIND))
    main = estimate(final, fixed, ByLevel(REWARD, prm_minus_orm), metric)
    sesoi = SESOI["prm_reward"]
    detail = f"PRM- minus ORM-rewarded final {metric} (PRM modes averaged): {main}"
    detail += _mode_details(final, fixed, metric)
    outcome = directional(main, sesoi)
    axis = POLICY_PARAMS if has(final, POLICY_PARAMS) else POLICY_SIZE
    if levels(final, axis) >= 2:
        order = (final[POLICY_PARAMS] if axis == POLICY_PARAMS
                 else pd.to_numeric(final[POLICY_SIZE], errors="coerce"))
        sized = final.assign(**{ORDER: order})
        size_fixed = held_fixed(sized, (RM_KIND, RM_PARAMS, RL_REWARD_KIND, POLICY_SIZE, POLICY_PARAMS, RL_LR))
        bigger = estimate(sized, size_fixed, _prm_vs_orm(ORDER, last_minus_first), metric)
        if bigger.n_seeds:
            outcome = both_hold(outcome, directional(bigger, sesoi))
            detail += (f"; that gap at the largest minus at the smallest policy: {bigger}; supported when both are "
                       f"positive, not supported when either is below {sesoi:g}")
        else:
            detail += f"; the policy sizes share no cell with both rewards: {bigger.basis}"
    else:
        detail += "; one policy size: 'more so for larger policies' not tested"
    return make_claim("prm_reward", main, outcome, detail)


def prm_reward_samples(table: pd.DataFrame) -> Claim:
    """How much more the gain rises per doubling of n, from the middle to the largest n, under a PRM reward
    than under an ORM reward; supported when that and the PRM's own rise are positive."""
    metric = pick(table, GAIN, PASS)
    final = rewarded(table, final=True)
    if reason := prm_reason(final, table, metric):
        return not_tested("prm_reward_samples", reason)
    sides = final.groupby(SIDE)[RL_N_SAMPLES].nunique() if has(final, RL_N_SAMPLES) else pd.Series(dtype=int)
    if not (sides.get("prm", 0) >= 2 and sides.get("orm", 0) >= 2):
        return not_tested("prm_reward_samples", f"needs two or more values of '{RL_N_SAMPLES}' under each of the "
                          "ORM and the PRM reward")
    fixed = held_fixed(final, (RM_KIND, RM_PARAMS, RL_REWARD_KIND, RL_N_SAMPLES, RL_LR))
    gap = estimate(final, fixed, _prm_vs_orm(RL_N_SAMPLES, late_slope), metric)
    prm_late, orm_late = (estimate(final, fixed, ByLevel(RL_N_SAMPLES, late_slope, where=(SIDE, side)), metric)
                          for side in ("prm", "orm"))
    sesoi = SESOI["prm_reward_samples"]
    outcome = both_hold(directional(gap, sesoi), directional(prm_late, sesoi))
    detail = (f"{metric} per doubling of n over the upper half of the n values (middle to largest), PRM minus ORM "
              f"reward (effect): {gap}; under the PRM reward: {prm_late}; under the ORM reward: {orm_late}; "
              f"supported when the effect and the PRM's rise are positive, not supported when either is below "
              f"{sesoi:g}")
    if has(final, RL_LR):
        detail += f"; pooled over {RL_LR} {sorted(final[RL_LR].dropna().unique())}"
    return make_claim("prm_reward_samples", gap, outcome, detail)


def prm_reward_training(table: pd.DataFrame) -> Claim:
    """Along RL curves: the slope per doubling of steps over the later half of training, PRM minus ORM reward;
    supported when that and the PRM-rewarded curve's own late slope are positive."""
    metric = pick(table, GAIN, PASS)
    points = rewarded(table, final=False)
    points = points[(points[STEP] > 0) & points[metric].notna()] if metric in points else points.iloc[:0]
    if reason := prm_reason(points, table, metric):
        return not_tested("prm_reward_training", reason)
    if levels(points, STEP) < 2:
        return not_tested("prm_reward_training", "RL curves need two or more eval points after the start")
    fixed = held_fixed(points, (RM_KIND, RM_PARAMS, RL_REWARD_KIND))
    gap = estimate(points, fixed, _prm_vs_orm(STEP, late_slope), metric, curves=True, points=True)
    prm_late, orm_late = (estimate(points, fixed, ByLevel(STEP, late_slope, where=(SIDE, side)), metric, curves=True,
                                   points=True) for side in ("prm", "orm"))
    sesoi = SESOI["prm_reward_training"]
    outcome = both_hold(directional(gap, sesoi), directional(prm_late, sesoi))
    steps = sorted(points[STEP].unique())
    later = steps[min(len(steps) // 2, len(steps) - 2)]
    detail = (f"{metric} per doubling of RL steps over the later half of training (steps {later}-{steps[-1]}), "
              f"PRM minus ORM reward (effect): {gap}; PRM-rewarded: {prm_late}; ORM-rewarded: "
              f"{orm_late}; supported when the effect and the PRM-rewarded slope are positive, not supported when "
              f"either is below {sesoi:g}")
    return make_claim("prm_reward_training", gap, outcome, detail)

