"""Content-addressed stage keys: a pipeline definition and the keys of each trial's stages.

A stage's key is a short sha256 of the canonical JSON of its name, the part of the trial
config it depends on, the keys of its inputs and its code version. Two trials that agree on
everything a stage depends on get the same key, so they share one artifact.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

KEY_LENGTH = 16  # hex characters of sha256 kept in a key


class StageDef(BaseModel):
    """One stage of a pipeline. A `Pipeline` is a list of these in topological order.

    The stage function runs in a worker process as
    `fn(config: dict, inputs: dict[str, str], out_dir: str) -> dict[str, float]`: `config` is the
    full resolved trial config, `inputs` maps each input stage's name to its artifact directory,
    `out_dir` is an empty directory to write into; it returns flat metrics. It must read only
    the config keys listed in `config_keys`, since only those are part of its key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Stage name; also the artifact folder under the store root.")
    fn: str = Field(description="Import path of the stage function, 'module:function'.")
    config_keys: list[str] = Field(
        default_factory=list,
        description="Dotted prefixes of the trial config this stage depends on, e.g. ['task', 'seed'].",
    )
    inputs: list[str] = Field(default_factory=list, description="Names of upstream stages.")
    optional_inputs: list[str] = Field(
        default_factory=list, description="Upstream stages used when the trial runs them (enabled), else left out."
    )
    resources: dict[str, float] = Field(
        default_factory=lambda: {"num_cpus": 1, "num_gpus": 0},
        description="Resource request of one call, e.g. {'num_cpus': 1, 'num_gpus': 0} (used by Ray).",
    )
    enabled: str | None = Field(
        default=None,
        description="Dotted config key; where it is false the stage and its dependents are skipped.",
    )
    version: str = Field(
        default="1", description="Code version, part of the key: bump it to invalidate old artifacts."
    )

    @field_validator("fn")
    @classmethod
    def _import_path(cls, value: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"expected 'module:function', found {value!r}")
        return value


Pipeline = list[StageDef]


@dataclass(frozen=True)
class Node:
    """One unique unit of work: a stage at a key, with what its call needs."""

    stage: StageDef
    key: str
    config: dict[str, Any]  # the config of the first trial that needs this key
    input_keys: dict[str, str]  # input stage name -> key


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def get_dotted(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a nested dict; KeyError naming the key when absent."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"config has no key {dotted!r}")
        value = value[part]
    return value


def config_subset(config: dict[str, Any], prefixes: list[str]) -> dict[str, Any]:
    """The parts of `config` under the dotted `prefixes`, keyed by prefix."""
    return {prefix: get_dotted(config, prefix) for prefix in prefixes}


def stage_key(stage: str, config_subset: dict[str, Any], input_keys: dict[str, str], version: str) -> str:
    """Short sha256 of the canonical JSON of everything a stage's output depends on."""
    payload = {"stage": stage, "config": config_subset, "inputs": input_keys, "version": version}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def check_pipeline(pipeline: Pipeline) -> None:
    """Raise ValueError unless stage names are unique and every input comes earlier."""
    seen: set[str] = set()
    for stage in pipeline:
        if stage.name in seen:
            raise ValueError(f"pipeline: stage {stage.name!r} appears twice")
        missing = [name for name in stage.inputs + stage.optional_inputs if name not in seen]
        if missing:
            raise ValueError(f"pipeline: stage {stage.name!r} needs {missing} defined before it")
        seen.add(stage.name)


def trial_keys(config: dict[str, Any], pipeline: Pipeline) -> dict[str, str]:
    """Stage name -> key for one trial config; stages disabled (directly or upstream) are left out."""
    keys: dict[str, str] = {}
    for stage in pipeline:
        if stage.enabled is not None and not get_dotted(config, stage.enabled):
            continue
        if any(name not in keys for name in stage.inputs):
            continue
        inputs = {name: keys[name] for name in stage.inputs + stage.optional_inputs if name in keys}
        subset = config_subset(config, stage.config_keys)
        keys[stage.name] = stage_key(stage.name, subset, inputs, stage.version)
    return keys


def plan_nodes(configs: list[dict[str, Any]], pipeline: Pipeline) -> tuple[list[dict[str, str]], list[Node]]:
    """Each config's stage keys, and the unique nodes they need in topological order."""
    check_pipeline(pipeline)
    per_trial = [trial_keys(config, pipeline) for config in configs]
    nodes: dict[tuple[str, str], Node] = {}
    for stage in pipeline:
        for config, keys in zip(configs, per_trial):
            if stage.name in keys and (stage.name, keys[stage.name]) not in nodes:
                input_keys = {name: keys[name] for name in stage.inputs + stage.optional_inputs if name in keys}
                nodes[(stage.name, keys[stage.name])] = Node(stage, keys[stage.name], config, input_keys)
    return per_trial, list(nodes.values())
