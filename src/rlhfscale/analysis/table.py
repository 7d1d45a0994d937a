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
               run's final ``flops/rl``); so is its KL, and its gold and proxy rewards are
               unknown (NaN) where they are copies of the run's final point, as the
               pipeline's step-0 point carries them.

Axes
    ``data.prompts``               distinct RM-training prompts
    ``data.responses_per_prompt``  labelled responses per prompt
    ``data.volume``                prompts x responses (derived when absent)
    ``rm.kind``                    ``orm`` | ``prm`` | ``multitask`` | ``generative`` | ``likelihood`` | ``rule``
    ``rm.size`` / ``rm.params``    RM ladder size name / parameter count
    ``policy.size`` / ``policy.params``  the same for the policy
    ``rl.n_samples``               responses sampled per prompt during RL
    ``rl.prompts_per_step``        distinct prompts in each RL step's batch
    ``rl.samples_per_step``        prompts per step x samples per prompt: the responses (and about the compute)
                                   of each RL step (derived when absent; not an axis the checks hold fixed:
                                   prompts and samples per step are)
    ``rl.algorithm``               ``ppo`` | ``grpo`` | ``rloo`` | ``reinforce++``
    ``rl.shaping``                 ``none`` | ``normalize`` | ``asymmetric``
    ``rl.lr``                      RL learning rate
    ``task.name``                  the task the RM and RL target
    ``rl.reward``                  RL reward sources and weights (a dict, e.g. ``{orm: 1.0}``); on final points
                                   ``rl.reward_kind`` (rule | orm | prm | mixed | none) is an axis the
                                   checks hold fixed, except those that compare rewards
    ``rl.prm_mode``                ``aggregate`` | ``dense``: how a PRM reward is given (default aggregate)

Evaluation sizes (optional; the claim checks infer them from the values' 1/N steps when absent)
    ``eval.n_prompts``             held-out prompts behind ``eval/pass@1`` and its kin
    ``bon.prompts``                held-out prompts behind ``bon/*@16``

Metrics
    ``rm/pair_acc``          held-out RM pair accuracy
    ``rm/step_f1``           PRM step-label F1
    ``bon/rm@16``            Best-of-16 accuracy choosing by the trial's RM
    ``bon/oracle@16``        Best-of-16 accuracy choosing by the verifier
    ``bon/<rm>@N``           Best-of-N gold value choosing by the trial's RM (``orm``, ``prm_<agg>``), N = 1, 2, 4, ...
    ``bon/<rm>_proxy@N``     the RM's own (proxy) score of that choice
    ``eval/pass@1_before``   pass@1 of the SFT starting policy
    ``eval/pass@1``          pass@1 at this eval point
    ``eval/gain``            pass@1 - before (derived when absent)
    ``eval/gain_rel``        gain / before (derived when absent)
    ``eval/pass@1_ood``      pass@1 on a task other than the one the RM targets
    ``rl/proxy_reward``      mean RM (proxy) reward of the policy's samples
    ``rl/reward_<source>``   the batch mean of each reward source (rule, orm, prm): which sources RL used
    ``rl/gold_reward``       mean gold (verifier or gold-rater) reward
    ``rl/kl``                KL(policy || initial policy), nats per response
    ``rl/reward_std``        std of the step-to-step change of the mean proxy reward
                             (before shaping) up to this point: how erratic training
                             is, a steady climb scores 0 (higher = less stable)
    ``rl/diverged``          1 if the run diverged, else 0
    ``flops/total``          all compute up to this point: SFT + RM + RL
    ``flops/sft`` / ``flops/rm`` / ``flops/rl``  each stage's compute up to this
                             point (``flops/rl`` grows along an RL curve)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
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
RL_PPS = "rl.prompts_per_step"
RL_SPS = "rl.samples_per_step"
RL_ALGORITHM = "rl.algorithm"
RL_SHAPING = "rl.shaping"
RL_LR = "rl.lr"
TASK = "task.name"
RL_REWARD = "rl.reward"
RL_REWARD_KIND = "rl.reward_kind"  # derived on final points: rule | orm | prm | mixed | none
RL_PRM_MODE = "rl.prm_mode"
AXES = (
    DATA_PROMPTS, DATA_RPP, DATA_VOLUME, RM_KIND, RM_SIZE, RM_PARAMS,
    POLICY_SIZE, POLICY_PARAMS, RL_N_SAMPLES, RL_PPS, RL_ALGORITHM, RL_SHAPING, RL_LR, TASK, RL_REWARD_KIND,
)
DERIVED_AXES = (RL_SPS,)
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

KNOWN = IDENTIFIERS + AXES + DERIVED_AXES + (EVAL_N, BON_N) + METRICS
SEED_SUFFIX = r"(^|,)seed=[^,]*$"


def to_table(rows: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build the tidy table from flat row dicts.

    Fills ``seed`` and ``step`` with 0 where absent, derives ``data.volume``,
    ``rl.samples_per_step``, ``eval/gain`` and ``eval/gain_rel`` where their inputs exist, checks that
    numeric columns hold numbers, and orders columns identifiers, axes,
    metrics, then any others. Raises ValueError when ``trial`` is missing.
    """
    raw = pd.DataFrame(list(rows))
    if raw.empty or TRIAL not in raw or raw[TRIAL].isna().any():
        raise ValueError(f"every row needs a '{TRIAL}' identifier; columns found: {list(raw.columns)}")
    cols: dict[str, object] = {c: raw[c] for c in raw.columns}
    for column in (SEED, STEP):
        cols[column] = raw[column].fillna(0).astype(int).to_numpy() if column in raw else np.zeros(len(raw), int)
    for column in KNOWN:
        if column in raw and column not in CATEGORICAL_AXES + IDENTIFIERS:
            cols[column] = _numeric(raw[column], column).to_numpy()
    _derive(cols)
    run, longest = _runs(raw[TRIAL], cols[SEED], cols[STEP])
    _zero_rl_flops_at_start(cols, longest)
    _start_of_curves(cols, run, longest)
    for column, values in cols.items():  # text as plain objects: the checks read it as numpy arrays, often
        if isinstance(values, pd.Series) and pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
            cols[column] = values.astype(object)
    known = [c for c in KNOWN if c in cols]
    table = pd.DataFrame({c: cols[c] for c in known + [c for c in cols if c not in known]})
    table.columns = pd.Index(table.columns, dtype=object)  # plain names: every column lookup reads one
    return table.sort_values([TRIAL, SEED, STEP], kind="stable").reset_index(drop=True)


def _numeric(column: pd.Series, name: str) -> pd.Series:
    if column.dtype == float:
        return column
    try:
        return pd.to_numeric(column).astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"column '{name}' must hold numbers: {err}") from err


def _derive(cols: dict) -> None:
    """Fill derived columns (where missing) from their inputs."""
    if DATA_PROMPTS in cols and DATA_RPP in cols:
        _fill(cols, DATA_VOLUME, cols[DATA_PROMPTS] * cols[DATA_RPP])
    if RL_PPS in cols and RL_N_SAMPLES in cols:
        _fill(cols, RL_SPS, cols[RL_PPS] * cols[RL_N_SAMPLES])
    if PASS in cols and PASS_BEFORE in cols:
        _fill(cols, GAIN, cols[PASS] - cols[PASS_BEFORE])
    if GAIN in cols and PASS_BEFORE in cols:
        before = np.where(cols[PASS_BEFORE] > 0, cols[PASS_BEFORE], np.nan)
        _fill(cols, GAIN_REL, cols[GAIN] / before)


def _fill(cols: dict, column: str, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=float)
    cols[column] = np.where(np.isnan(cols[column]), values, cols[column]) if column in cols else values


def _runs(trials: pd.Series, seed: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(run code of each row: its trial x seed, the run's largest step at each row)."""
    trial, seeds = pd.factorize(trials)[0], pd.factorize(seed)[0]
    run = trial * (seeds.max() + 1) + seeds
    longest = np.full(run.max() + 1, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(longest, run, step.astype(np.int64))
    return run, longest[run]


def _zero_rl_flops_at_start(cols: dict, longest: np.ndarray) -> None:
    """RL compute 0 at the step-0 point of every curve that goes on (``flops/total`` loses what that removes)."""
    if FLOPS_RL not in cols:
        return
    start = (cols[STEP] == 0) & (longest > 0)
    flops = cols[FLOPS_RL]
    if FLOPS_TOTAL in cols:
        cols[FLOPS_TOTAL] = cols[FLOPS_TOTAL] - np.nan_to_num(np.where(start, flops, 0.0))
    cols[FLOPS_RL] = np.where(start, 0.0, flops)


def _start_of_curves(cols: dict, run: np.ndarray, longest: np.ndarray) -> None:
    """At the step-0 point of every curve that goes on: KL 0, and gold and proxy rewards unknown where they
    equal the curve's last point's (the pipeline's step-0 point carries the run's final values)."""
    step = cols[STEP]
    start, last = (step == 0) & (longest > 0), step == longest
    for column in (c for c in (KL, GOLD_REWARD, PROXY_REWARD) if c in cols):
        values = cols[column].copy()
        if column == KL:
            values[start & ~np.isnan(values)] = 0.0
        else:
            final = np.full(run.max() + 1, np.nan)
            final[run[last]] = values[last]
            values[start & (values == final[run])] = np.nan
        cols[column] = values


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
    codes, uniques = pd.factorize(trials)
    stripped = np.array([re.sub(SEED_SUFFIX, "", str(u)) for u in uniques] + [""], dtype=object)
    return pd.Series(stripped[codes], index=trials.index, dtype=object)


def levels(table: pd.DataFrame, column: str) -> int:
    """How many distinct values ``column`` takes (0 when absent)."""
    return int(table[column].nunique()) if column in table else 0


def final_points(table: pd.DataFrame) -> pd.DataFrame:
    """The last eval point (largest step) of every trial x seed.

    A column that the last point lacks takes the run's latest recorded value,
    so metrics logged once per run (RM accuracy, Best-of-N) reach the final row.
    ``rl.reward_kind`` (`reward_kind`; ``none`` without RL) names what each run was rewarded by: an axis, so a
    comparison of algorithms, shaping or n never pairs a verifier-rewarded run with an RM-rewarded one.
    """
    ordered = table.sort_values([TRIAL, SEED, STEP], kind="stable")
    final = ordered.groupby([TRIAL, SEED], sort=True).last().reset_index()
    return final.assign(**{RL_REWARD_KIND: reward_kind(final).fillna("none")})


REWARD_SOURCES = ("rule", "orm", "prm")


def reward_kind(table: pd.DataFrame) -> pd.Series:
    """Each row's RL reward: ``rule``, ``orm`` or ``prm`` when one source has a non-zero weight, ``mixed`` for
    several, None for a row without RL (``rl.enabled`` false, or no RL metric). Read from ``rl.reward`` (a dict,
    its JSON text, or a source name), else from the ``rl/reward_<source>`` batch means an RL run records for
    each source it used."""
    n = len(table)
    used = np.zeros((n, len(REWARD_SOURCES)), dtype=bool)
    for i, source in enumerate(REWARD_SOURCES):
        if f"rl/reward_{source}" in table:
            used[:, i] = table[f"rl/reward_{source}"].notna().to_numpy()
    ran = np.ones(n, dtype=bool)
    if "rl.enabled" in table:
        ran &= ~table["rl.enabled"].isin([False, 0, "false", "False"]).to_numpy()
    rl_metrics = [c for c in (KL, FLOPS_RL, PROXY_REWARD, REWARD_STD, DIVERGED) if c in table]
    if rl_metrics:
        ran &= table[rl_metrics].notna().any(axis=1).to_numpy()
    declared = table[RL_REWARD].tolist() if RL_REWARD in table else [None] * n
    parsed: dict[str, frozenset[str] | None] = {}
    labels = []
    for value, row_used, row_ran in zip(declared, used, ran):
        key = value if isinstance(value, str) else repr(value)
        if key not in parsed:
            parsed[key] = _declared_sources(value)
        sources = parsed[key]
        if sources is None:
            sources = frozenset(s for s, u in zip(REWARD_SOURCES, row_used) if u)
        labels.append(None if not (row_ran and sources) else next(iter(sources)) if len(sources) == 1 else "mixed")
    return pd.Series(labels, index=table.index, dtype=object)


def _declared_sources(value: object) -> frozenset[str] | None:
    """The sources with a non-zero weight in one ``rl.reward`` value (None when it says nothing)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return frozenset([value]) if value in REWARD_SOURCES else None
    if isinstance(value, Mapping):
        return frozenset(k for k, w in value.items() if k in REWARD_SOURCES and w)
    return None
