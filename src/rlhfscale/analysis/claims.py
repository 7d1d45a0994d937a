"""Claim checks: each finding of Hou et al. 2024 tested on the user's grid.

Every check reads the tidy table (``table.to_table``) and returns a ``Claim``. Its effect is a
contrast computed in *cells* (the rows that share a seed and every other setting the check holds
fixed), so comparisons are paired by seed; ``effects.estimate`` averages cells, then seeds, and
``stats`` gives the interval: a binomial-aware noise model pooled over the whole grid, binomial
noise a soft floor for accuracies, clipped to the effect's range (see that module).

Each claim has a smallest effect of interest (``SESOI``, in its effect's units). A directional
claim is "not supported" when its 95 % interval lies below the SESOI (negligible or reversed),
"supported" when it lies above 0, else "inconclusive"; a "similar" / "modest" claim is supported
when the interval lies within +-SESOI and not supported when it lies wholly outside. Every tested
claim reports ``min_detectable``: the effect the grid finds 4 times in 5 at its standard error.
Verdicts never lean toward the paper.

Beyond Hou et al.'s eight findings: reward over-optimization as Gao et al. (2022) measured it
(``overoptimization_peak``, ``rl_kl_cost``: per-curve effects, ``analysis.overopt``), and the three
results about a PRM as the RL reward (``prm_reward``, ``prm_reward_samples``, ``prm_reward_training``:
RL trials rewarded by an ORM and by a PRM, dense or aggregated, compared within cells).

Finding 4 is checked twice: as the paper swept n (prompts per step fixed, so more n is more compute a step:
``samples_plateau``) and as its reviewers asked (samples per step fixed, with the paper's sweep at equal RL
FLOPs and per FLOP beside it: ``samples_fixed_compute``).

The checks are grouped by subject (``claims_rm``, ``claims_rl``, ``claims_samples``, ``claims_gao``, ``claims_prm``) and
share ``claim_base``; every public name stays importable from here.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import pandas as pd

from rlhfscale.analysis import claim_base
from rlhfscale.analysis.claim_base import (  # noqa: F401  (re-exported)
    EQUIVALENCE, ORDER, REWARD, RM_CONTEXT, SESOI, SIDE, TITLES, VERDICTS, Claim, both_hold, held_fixed,
    make_claim, not_tested, pick, untested_reason,
)
from rlhfscale.analysis.claims_gao import NO_CURVES, overoptimization_peak, rl_kl_cost  # noqa: F401
from rlhfscale.analysis.claims_prm import (  # noqa: F401
    late_slope, prm_minus_orm, prm_reward, prm_reward_samples, prm_reward_training, with_reward,
)
from rlhfscale.analysis.claims_rl import (  # noqa: F401
    LOG_STD, STABILITY, diminishing_returns, policy_size, ppo_vs_grpo, shaping_stability,
)
from rlhfscale.analysis.claims_samples import samples_fixed_compute, samples_plateau  # noqa: F401
from rlhfscale.analysis.claims_rm import (  # noqa: F401
    SHORTFALL, prm_vs_orm, prompt_diversity, rm_data_volume, rm_size_modest,
)

CLAIMS: dict[str, Callable[[pd.DataFrame], Claim]] = {
    "rm_data_volume": rm_data_volume,
    "prompt_diversity": prompt_diversity,
    "prm_vs_orm": prm_vs_orm,
    "samples_plateau": samples_plateau,
    "samples_fixed_compute": samples_fixed_compute,
    "rm_size_modest": rm_size_modest,
    "policy_size": policy_size,
    "ppo_vs_grpo": ppo_vs_grpo,
    "shaping_stability": shaping_stability,
    "diminishing_returns": diminishing_returns,
    "overoptimization_peak": overoptimization_peak,
    "rl_kl_cost": rl_kl_cost,
    "prm_reward": prm_reward,
    "prm_reward_samples": prm_reward_samples,
    "prm_reward_training": prm_reward_training,
}


def check(claim_id: str, table: pd.DataFrame) -> Claim:
    """Run one claim check by id; an unknown id lists the valid ones."""
    if claim_id not in CLAIMS:
        raise KeyError(f"unknown claim '{claim_id}'; valid: {', '.join(CLAIMS)}")
    return CLAIMS[claim_id](table)


def check_all(table: pd.DataFrame, ids: Iterable[str] | None = None) -> list[Claim]:
    """Every claim check (or those of ``ids``), in registry order; what several need is computed once."""
    wanted = set(CLAIMS if ids is None else ids)
    if unknown := wanted - set(CLAIMS):
        raise KeyError(f"unknown claim '{sorted(unknown)[0]}'; valid: {', '.join(CLAIMS)}")
    claim_base._SHARED[:] = [(weakref.ref(table), None, {})]
    try:
        return [check_one(table) for claim_id, check_one in CLAIMS.items() if claim_id in wanted]
    finally:
        claim_base._SHARED.clear()

