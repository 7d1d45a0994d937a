"""Reward sources: what scores the policy's responses during RL, combined with weights.

A source maps a rollout to one score per response (``[B]``, an outcome reward)
or to a reward per response token (``[B, R]``, dense). `rl.reward` names the
sources and their weights, e.g. ``{rule: 1.0}`` or ``{orm: 1.0, rule: 0.5}``:

    rule  the task's verifier: 1 for a correct final answer, 0 otherwise (outcome)
    orm   an outcome reward model, the multi-task RM (it scores like one): its logit, or a generative
          verifier (`models.genrm`): log p(Yes) − log p(No), or a likelihood RM (`models.llrm`):
          β / |y| · log π(y | x) (outcome); the folder's config decides which
    prm   a process reward model: σ(step logits) aggregated into one score by `rl.prm_agg`
          (`rl.prm_mode=aggregate`, outcome), or σ(step logit) on each step's last token (`dense`)

The weighted outcome sources add up to the proxy score, the dense ones to the
dense rewards. The gold reward (the verifier) is computed beside the proxy every
time, whether or not `rule` is one of the sources, so that reward hacking shows;
a task without a verifier (`tasks.verifiable`, e.g. prefs) has no gold reward (NaN)
and no `rule` source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import RLConfig
from ..errors import BadInput
from ..models.ladder import count_non_embedding
from ..models.forward import input_device
from ..models.io import DTYPES
from ..models.reward import OUTCOME_KINDS, RewardModel, load_reward_model
from ..rollout.sampler import Rollout
from ..tasks import score_all, verifiable
from ..tasks.base import Example, Task

# score(examples, responses, rollout) -> [B] (outcome) or [B, R] (dense)
ScoreFn = Callable[[Sequence[Example], list[str], Rollout], Tensor]


@dataclass
class Rewards:
    """What the reward gives one rollout batch of B responses with R response columns."""

    scores: Tensor  # [B] proxy outcome score: the weighted outcome sources
    dense: Tensor  # [B, R] proxy per-token rewards: the weighted dense sources (0 where none)
    gold: Tensor  # [B] the task's verifier score; NaN for a task without a verifier
    parts: dict[str, float]  # "rl/reward_<source>": the batch mean of each source, unweighted


@dataclass
class Source:
    score: ScoreFn
    dense: bool = False  # True: score returns [B, R]
    params: int = 0  # non-embedding parameters of the model it runs (0 for a verifier), for FLOPs


def rule_source(task: Task) -> Source:
    """The task's verifier on the decoded responses."""

    def score(examples, responses, rollout):
        return torch.tensor(score_all(task, examples, responses), device=rollout.logprobs.device)

    return Source(score)


def orm_source(rm: RewardModel) -> Source:
    """An outcome (or multi-task) RM's score of each prompt + response."""

    @torch.no_grad()
    def score(examples, responses, rollout):
        return on_rm(rm, rm.score, rollout)[0].float()

    return Source(score, params=count_non_embedding(rm.model))


def on_rm(rm: RewardModel, fn, rollout) -> tuple[torch.Tensor, ...]:
    """fn(ids, attn, response_mask) of the rollout on the RM's device (rl.reward_device); its outputs back on the
    rollout's."""
    dev, home = input_device(rm.model), rollout.sequences.device
    out = fn(rollout.sequences.to(dev), rollout.attention_mask.to(dev), rollout.response_mask.to(dev))
    return tuple(t.to(home) for t in (out if isinstance(out, tuple) else (out,)))


def prm_source(rm: RewardModel, mode: str) -> Source:
    """A process RM: aggregated into one score per response, or σ(step logit) on each step-end token."""

    @torch.no_grad()
    def dense(examples, responses, rollout):
        logits, ends = on_rm(rm, rm.step_scores, rollout)
        return torch.where(ends, torch.sigmoid(logits.float()), 0.0)

    @torch.no_grad()
    def aggregate(examples, responses, rollout):
        return on_rm(rm, rm.score, rollout)[0].float()

    return Source(dense if mode == "dense" else aggregate, dense=mode == "dense", params=count_non_embedding(rm.model))


class Reward:
    """The proxy reward: a weighted sum of sources; the gold reward (the verifier) beside it."""

    def __init__(self, task: Task, sources: dict[str, tuple[float, Source]]):
        self.task, self.sources = task, sources

    @property
    def params(self) -> int:
        """Non-embedding parameters of every reward model it runs (one forward per token each)."""
        return sum(source.params for _, source in self.sources.values())

    def __call__(self, examples: Sequence[Example], responses: list[str], rollout: Rollout) -> Rewards:
        mask = rollout.response_mask
        scores = torch.zeros(mask.shape[0], device=mask.device)
        dense = torch.zeros(mask.shape, device=mask.device)
        if verifiable(self.task):
            gold = torch.tensor(score_all(self.task, examples, responses), device=mask.device)
        else:
            gold = torch.full((mask.shape[0],), math.nan, device=mask.device)
        parts = {}
        for name, (weight, source) in self.sources.items():
            value = gold if name == "rule" else source.score(examples, responses, rollout)
            if source.dense:
                dense = dense + weight * value
                parts[f"rl/reward_{name}"] = value.sum(-1).mean().item()
            else:
                scores = scores + weight * value
                parts[f"rl/reward_{name}"] = value.mean().item()
        return Rewards(scores, dense, gold, parts)


def rm_path(rl: RLConfig, kind: str, rm_run: str | None) -> Path:
    """The folder of the `kind` RM: ``rl.<kind>_path``, else the model of the `rm` input run (``<run>/rm``)."""
    path = rl.orm_path if kind == "orm" else rl.prm_path
    if path:
        return Path(path)
    if rm_run:
        return Path(rm_run) / "rm"
    raise BadInput(f"config: field 'rl.{kind}_path': expected an {kind.upper()} folder for rl.reward.{kind} "
                   f"(or an rm input run), found none")


def load_rm(rl: RLConfig, kind: str, tok, rm_run: str | None, device: str, dtype: str = "fp32") -> RewardModel:
    """Load the `kind` RM ("orm" also takes the multi-task RM, a generative verifier and a likelihood RM, which
    score one number per response); it must be of that kind and share the policy's tokenizer, since it scores the
    policy's token ids."""
    path = rm_path(rl, kind, rm_run)
    rm = load_reward_model(path, device, aggregation=rl.prm_agg)
    rm.model.to(DTYPES[dtype])
    if rm.kind != kind and not (kind == "orm" and rm.kind in OUTCOME_KINDS):
        raise BadInput(f"{path}: expected an {kind.upper()} for rl.reward.{kind}, found a {rm.kind.upper()}")
    if rm.tok.get_vocab() != tok.get_vocab():
        raise BadInput(f"{path}: expected the policy's tokenizer, found a different vocabulary")
    return rm


def build_reward(rl: RLConfig, task: Task, tok, device: str, rm_run: str | None = None, dtype: str = "fp32") -> Reward:
    """The reward `rl.reward` describes (sources with non-zero weights), its RMs loaded onto `device` in `dtype`."""
    sources = {}
    for name, weight in rl.reward.items():
        if weight == 0:
            continue
        if name == "rule":
            if not verifiable(task):
                raise BadInput(f"rl.reward.rule: task {task.name} has no verifier to reward with; use rl.reward.orm")
            sources[name] = (weight, rule_source(task))
        elif name == "orm":
            sources[name] = (weight, orm_source(load_rm(rl, "orm", tok, rm_run, device, dtype)))
        else:
            sources[name] = (weight, prm_source(load_rm(rl, "prm", tok, rm_run, device, dtype), rl.prm_mode))
    return Reward(task, sources)
