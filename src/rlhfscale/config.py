"""Every knob of every stage: typed, documented and defaulted in one place.

A config is loaded from an optional YAML file, then ``key=value`` overrides
with dotted keys (``rl.lr=1e-3``) are applied; values are parsed as YAML
scalars. Errors become `BadInput` with one line naming the file, the key,
what was expected and what was found. Nothing reads a raw dict after this
module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadInput
from .models.ladder import LADDER


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    """The task the policy is trained and evaluated on."""

    name: Literal["arithmetic", "chat"] = "arithmetic"
    n_ops: int = Field(2, ge=1, le=8, description="operations per arithmetic problem")
    first_digits: int = Field(2, ge=1, le=4, description="digits of the first operand")
    digits: int = Field(1, ge=1, le=4, description="digits of every later operand")
    operators: str = Field("+-", description="operator set, a subset of '+-*'")
    n_templates: int = Field(4, ge=1, le=8, description="surface phrasings of a question")
    seed: int = Field(0, description="seed of the problem generator (not of training)")

    @field_validator("operators")
    @classmethod
    def _ops(cls, v: str) -> str:
        if not v or set(v) - set("+-*"):
            raise ValueError(f"expected a non-empty subset of '+-*', found {v!r}")
        return v


class PolicyConfig(Section):
    """The policy model: a ladder size trained from scratch, or an HF checkpoint folder."""

    size: str = Field("micro", description=f"ladder size: {', '.join(LADDER)}")
    path: str | None = Field(None, description="HF checkpoint folder (overrides size)")
    max_len: int = Field(128, ge=16, le=8192, description="max sequence length (prompt + response)")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if v not in LADDER:
            raise ValueError(f"expected one of {', '.join(LADDER)}, found {v!r}")
        return v


class SFTConfig(Section):
    """Supervised fine-tuning on gold solutions (loss on response tokens only)."""

    steps: int = Field(600, ge=0, description="optimizer steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW, linear warm-up, cosine decay)")
    warmup: int = Field(30, ge=0, description="warm-up steps")
    weight_decay: float = Field(0.0, ge=0)
    n_examples: int = Field(4000, ge=1, description="distinct training problems")


class SamplingConfig(Section):
    """How responses are sampled (RL rollouts, pass@k, Best-of-N)."""

    temperature: float = Field(1.0, ge=0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    max_new_tokens: int = Field(0, ge=0, description="0 sizes it from the task's longest gold solution")


class RLConfig(Section):
    """Policy optimization (the GRPO family; PPO with a critic)."""

    algorithm: Literal["grpo", "rloo", "reinforce++", "ppo"] = "grpo"
    steps: int = Field(200, ge=0, description="rollout batches")
    prompts_per_step: int = Field(32, ge=1)
    n_samples: int = Field(8, ge=1, description="responses per prompt (n)")
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(1, ge=1, description="optimizer steps per epoch")
    clip_coef: float = Field(0.2, gt=0)
    loss_agg: Literal["token", "sequence", "group"] = "token"
    norm_std: bool = Field(True, description="divide group advantages by the group std (GRPO)")
    kl_coef: float = Field(0.0, ge=0, description="KL(pi || pi_ref) coefficient; 0 skips the reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(50, ge=0, description="held-out pass@1 every this many steps (0: only at the end)")
    n_train_prompts: int = Field(4000, ge=1, description="distinct training prompts the sampler draws from")


class EvalConfig(Section):
    """Held-out evaluation."""

    n_prompts: int = Field(200, ge=1)
    k: int = Field(8, ge=1, description="samples per prompt for pass@k and maj@k")


class DataConfig(Section):
    """Reward-model training data: the two data axes of the study."""

    prompts: int = Field(256, ge=1, description="distinct prompts (diversity axis)")
    responses_per_prompt: int = Field(8, ge=1, description="sampled responses per prompt (volume axis)")


class RMConfig(Section):
    """The reward model: outcome (ORM), process (PRM) or multi-task."""

    kind: Literal["orm", "prm", "multitask"] = "orm"
    size: str = Field("tiny", description=f"ladder size: {', '.join(LADDER)}")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        return PolicyConfig._size(v)


class RunConfig(Section):
    """One pipeline run: every stage's section, a seed and the device."""

    seed: int = 0
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ...")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")
    task: TaskConfig = TaskConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    sampling: SamplingConfig = SamplingConfig()
    data: DataConfig = DataConfig()
    rm: RMConfig = RMConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()


# ---- loading --------------------------------------------------------------------


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["rl.lr=1e-3", "task.n_ops=3"]`` -> nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"override {item!r}: expected key=value, found no '='")
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BadInput(f"override {item!r}: {p} is set both as a value and as a section")
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `extra` wins."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as 'key: expected ..., found ...'."""
    key = ".".join(str(p) for p in err["loc"])
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (found {found!r})"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("expected"):
        return f"{key}: {msg}"
    return f"{key}: expected {msg[0].lower() + msg[1:]}, found {found!r}"


def validate(model: type[BaseModel], data: dict[str, Any], source: str) -> BaseModel:
    """Validate `data` against `model`; the first error becomes a one-line `BadInput`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInput(f"{source}: {describe_error(e.errors()[0])}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BadInput(f"{p}{where}: expected valid YAML, found a syntax error") from None
    if not isinstance(data, dict):
        raise BadInput(f"{p}: expected a mapping of config keys, found {type(data).__name__}")
    return data


def load_config(
    model: type[BaseModel], path: str | Path | None = None, overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Any:
    """`defaults` < YAML file < ``key=value`` overrides, validated into `model`."""
    data = merge(defaults or {}, read_yaml(path) if path else {})
    data = merge(data, parse_overrides(overrides or []))
    source = str(path) if path else "config"
    if overrides:
        source += " + overrides" if path else " overrides"
    return validate(model, data, source)


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
