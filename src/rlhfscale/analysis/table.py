"""The tidy metrics table every analysis reads.

One row per trial x seed, and for RL curves one row per eval point. Column
names are the dotted config keys (axes) and the flat metric keys of
``summary.json`` (metrics). A grid that does not vary an axis, or a stage that
does not produce a metric, simply leaves that column absent or NaN.

Identifiers
    ``trial``  the trial's name or key. A study's ids end in ``,seed=<n>`` (or are
               ``seed=<n>`` for the base trial); ``config_of`` strips that, so the
               rows of one configuration under different seeds can be told apart
               from different configurations.
    ``seed``   the trial's seed (default 0); trials with equal seeds are paired.
    ``step``   the RL step of an eval point; the final point of a curve has the
               largest step; rows without RL have step 0 (the default). RL
               compute at a curve's step 0 is zero whatever the row says
               (``to_table`` sets it so: the pipeline's step-0 point can carry the
               run's final ``flops/rl``).

Axes
    ``data.prompts``               distinct RM-training prompts
    ``data.responses_per_prompt``  labelled responses per prompt
    ``data.volume``                prompts x responses (derived when absent)
    ``rm.kind``                    ``orm`` | ``prm`` | ``multitask`` | ``rule``
    ``rm.size`` / ``rm.params``    RM ladder size name / parameter count
    ``policy.size`` / ``policy.params``  the same for the policy
    ``rl.n_samples``               responses sampled per prompt during RL
    ``rl.algorithm``               ``ppo`` | ``grpo`` | ``rloo`` | ``reinforce++``
    ``rl.shaping``                 ``none`` | ``normalize`` | ``asymmetric``
    ``rl.lr``                      RL learning rate
    ``task.name``                  the task the RM and RL target

Evaluation sizes (optional; the claim checks infer them from the values' 1/N steps when absent)
    ``eval.n_prompts``             held-out prompts behind ``eval/pass@1`` and its kin
    ``bon.prompts``                held-out prompts behind ``bon/*@16``

Metrics
    ``rm/pair_acc``          held-out RM pair accuracy
    ``rm/step_f1``           PRM step-label F1
    ``bon/rm@16``            Best-of-16 accuracy choosing by the trial's RM
    ``bon/oracle@16``        Best-of-16 accuracy choosing by the verifier
    ``eval/pass@1_before``   pass@1 of the SFT starting policy
    ``eval/pass@1``          pass@1 at this eval point
    ``eval/gain``            pass@1 - before (derived when absent)
    ``eval/gain_rel``        gain / before (derived when absent)
    ``eval/pass@1_ood``      pass@1 on a task other than the one the RM targets
    ``rl/proxy_reward``      mean RM (proxy) reward of the policy's samples
    ``rl/gold_reward``       mean gold (verifier or gold-rater) reward
    ``rl/kl``                KL(policy || initial policy), nats per response
    ``rl/reward_std``        std of the mean proxy reward across training steps,
                             before shaping (higher = less stable)
    ``rl/diverged``          1 if the run diverged, else 0
    ``flops/total``          all compute up to this point: SFT + RM + RL
    ``flops/sft`` / ``flops/rm`` / ``flops/rl``  each stage's compute up to this
                             point (``flops/rl`` grows along an RL curve)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

TRIAL = "trial"
SEED = "seed"
STEP = "step"
IDENTIFIERS = (TRIAL, SEED, STEP)

DATA_PROMPTS = "data.prompts"
DATA_RPP = "data.responses_per_prompt"
DATA_VOLUME = "data.volume"
RM_KIND = "rm.kind"
RM_SIZE = "rm.size"
RM_PARAMS = "rm.params"
POLICY_SIZE = "policy.size"
POLICY_PARAMS = "policy.params"
RL_N_SAMPLES = "rl.n_samples"
RL_ALGORITHM = "rl.algorithm"
RL_SHAPING = "rl.shaping"
RL_LR = "rl.lr"
TASK = "task.name"
AXES = (
    DATA_PROMPTS, DATA_RPP, DATA_VOLUME, RM_KIND, RM_SIZE, RM_PARAMS,
    POLICY_SIZE, POLICY_PARAMS, RL_N_SAMPLES, RL_ALGORITHM, RL_SHAPING, RL_LR, TASK,
)
EVAL_N = "eval.n_prompts"
BON_N = "bon.prompts"
CATEGORICAL_AXES = (RM_KIND, RM_SIZE, POLICY_SIZE, RL_ALGORITHM, RL_SHAPING, TASK)

RM_PAIR_ACC = "rm/pair_acc"
RM_STEP_F1 = "rm/step_f1"
BON_RM = "bon/rm@16"
BON_ORACLE = "bon/oracle@16"
PASS_BEFORE = "eval/pass@1_before"
PASS = "eval/pass@1"
GAIN = "eval/gain"
GAIN_REL = "eval/gain_rel"
PASS_OOD = "eval/pass@1_ood"
PROXY_REWARD = "rl/proxy_reward"
GOLD_REWARD = "rl/gold_reward"
KL = "rl/kl"
REWARD_STD = "rl/reward_std"
DIVERGED = "rl/diverged"
FLOPS_TOTAL = "flops/total"
FLOPS_SFT = "flops/sft"
FLOPS_RM = "flops/rm"
FLOPS_RL = "flops/rl"
METRICS = (
    RM_PAIR_ACC, RM_STEP_F1, BON_RM, BON_ORACLE, PASS_BEFORE, PASS, GAIN, GAIN_REL,
    PASS_OOD, PROXY_REWARD, GOLD_REWARD, KL, REWARD_STD, DIVERGED,
    FLOPS_TOTAL, FLOPS_SFT, FLOPS_RM, FLOPS_RL,
)

KNOWN = IDENTIFIERS + AXES + (EVAL_N, BON_N) + METRICS
SEED_SUFFIX = r"(^|,)seed=[^,]*$"


def to_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build the tidy table from flat row dicts.

    Fills ``seed`` and ``step`` with 0 where absent, derives ``data.volume``,
    ``eval/gain`` and ``eval/gain_rel`` where their inputs exist, checks that
    numeric columns hold numbers, and orders columns identifiers, axes,
    metrics, then any others. Raises ValueError when ``trial`` is missing.
    """
    table = pd.DataFrame(list(rows))
    if table.empty or TRIAL not in table or table[TRIAL].isna().any():
        raise ValueError(f"every row needs a '{TRIAL}' identifier; columns found: {list(table.columns)}")
    for column in (SEED, STEP):
        table[column] = table[column].fillna(0).astype(int) if column in table else 0
    for column in KNOWN:
        if column in table and column not in CATEGORICAL_AXES + IDENTIFIERS:
            table[column] = _numeric(table[column], column)
    table = _zero_rl_flops_at_start(_derive(table))
    known = [c for c in KNOWN if c in table]
    table = table[known + [c for c in table.columns if c not in known]]
    return table.sort_values([TRIAL, SEED, STEP], kind="stable").reset_index(drop=True)


def _numeric(column: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(column).astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"column '{name}' must hold numbers: {err}") from err


def _derive(table: pd.DataFrame) -> pd.DataFrame:
    """Fill derived columns (where missing) from their inputs."""
    if DATA_PROMPTS in table and DATA_RPP in table:
        table = _fill(table, DATA_VOLUME, table[DATA_PROMPTS] * table[DATA_RPP])
    if PASS in table and PASS_BEFORE in table:
        table = _fill(table, GAIN, table[PASS] - table[PASS_BEFORE])
    if GAIN in table and PASS_BEFORE in table:
        before = table[PASS_BEFORE].where(table[PASS_BEFORE] > 0)
        table = _fill(table, GAIN_REL, table[GAIN] / before)
    return table


def _zero_rl_flops_at_start(table: pd.DataFrame) -> pd.DataFrame:
    """RL compute 0 at the step-0 point of every curve that goes on (``flops/total`` loses what that removes)."""
    if FLOPS_RL not in table or table[STEP].nunique() < 2:
        return table
    longest = table.groupby([TRIAL, SEED])[STEP].transform("max")
    start = (table[STEP] == 0) & (longest > 0)
    removed = table[FLOPS_RL].where(start, 0.0).fillna(0.0)
    table = table.assign(**{FLOPS_RL: table[FLOPS_RL].mask(start, 0.0)})
    if FLOPS_TOTAL in table:
        table = table.assign(**{FLOPS_TOTAL: table[FLOPS_TOTAL] - removed})
    return table


def _fill(table: pd.DataFrame, column: str, values: pd.Series) -> pd.DataFrame:
    filled = table[column].fillna(values) if column in table else values
    return table.assign(**{column: filled.astype(float)})


def to_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV (no index) and return the path."""
    path = Path(path)
    table.to_csv(path, index=False)
    return path


def has(table: pd.DataFrame, column: str) -> bool:
    """Whether the table has ``column`` with at least one value."""
    return column in table and bool(table[column].count() > 0)


def config_of(trials: pd.Series) -> pd.Series:
    """Each trial's configuration: its id without the seed (``'rl.n_samples=8,seed=1'`` -> ``'rl.n_samples=8'``)."""
    return trials.astype(str).str.replace(SEED_SUFFIX, "", regex=True)


def levels(table: pd.DataFrame, column: str) -> int:
    """How many distinct values ``column`` takes (0 when absent)."""
    return int(table[column].nunique()) if column in table else 0


def final_points(table: pd.DataFrame) -> pd.DataFrame:
    """The last eval point (largest step) of every trial x seed.

    A column that the last point lacks takes the run's latest recorded value,
    so metrics logged once per run (RM accuracy, Best-of-N) reach the final row.
    """
    ordered = table.sort_values([TRIAL, SEED, STEP], kind="stable")
    return ordered.groupby([TRIAL, SEED], sort=True).last().reset_index()
