"""Content-addressed stage keys: a pipeline definition and the keys of each trial's stages.

A stage declares the settings it reads (`StageDef.reads`, dotted paths into the trial config).
It is called with exactly those settings (`project`) and nothing else, and its key is a short
sha256 of the canonical JSON of its name, those settings, the keys of its inputs, its version
and its thread count. So a stage cannot read a setting its key leaves out, and two trials that
agree on everything a stage reads share one artifact.
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
    `fn(config: dict, inputs: dict[str, str], out_dir: str) -> dict[str, float]`: `config` holds
    only the settings named in `reads` (nested as in the trial config), `inputs` maps each input
    stage's name to its artifact directory, `out_dir` is the directory to write into (it may hold
    a `checkpoint/` of an interrupted attempt); it returns flat metrics.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Stage name; also the artifact folder under the store root.")
    fn: str = Field(description="Import path of the stage function, 'module:function'.")
    reads: list[str] = Field(
        default_factory=list,
        description="Dotted settings the stage reads, whole sections or single fields, e.g. ['task', 'sampling.top_p'].",
    )
    inputs: list[str] = Field(default_factory=list, description="Names of upstream stages.")
    optional_inputs: list[str] = Field(
        default_factory=list, description="Upstream stages used when the trial runs them (enabled), else left out."
    )
    input_when: dict[str, tuple[str, list[Any]]] = Field(
        default_factory=dict,
        description="Optional input -> (dotted config key, values): the input joins (its key and its artifact) only "
        "where the key takes one of the values, e.g. sample's policy: {'rm_base': ('data.source', ['rm_base'])}.",
    )
    resources: dict[str, float] = Field(
        default_factory=lambda: {"num_cpus": 1, "num_gpus": 0},
        description="Resource request of one call, e.g. {'num_cpus': 1, 'num_gpus': 0} (used by Ray).",
    )
    enabled: str | bool | None = Field(
        default=None,
        description="Dotted config key; where it is false the stage and its dependents are skipped. "
        "False: never part of a study (a stage only commands run, pinned by hand).",
    )
    enabled_when: tuple[str, list[Any]] | None = Field(
        default=None,
        description="(dotted config key, values): besides `enabled`, the stage runs only where the key takes one of "
        "the values, e.g. rm_base: ('rm.init', ['auto', 'policy', 'scratch']) (an RM that starts from the trial's "
        "own SFT needs none).",
    )
    check: str | None = Field(
        default=None,
        description="Import path 'module:function' of `check(config) -> list[str]`: refuses (raises) settings "
        "that would do nothing in this stage, returns one-line warnings; `config` as the stage receives it.",
    )
    version: str = Field(
        default="1", description="Code version, part of the key: bump it to invalidate old artifacts."
    )

    @field_validator("fn", "check")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"expected 'module:function', found {value!r}")
        return value

    @property
    def threads(self) -> int:
        """CPU threads the stage runs with: its `num_cpus`, whatever else runs beside it (part of its key)."""
        return max(1, int(self.resources.get("num_cpus", 1)))


Pipeline = list[StageDef]


@dataclass(frozen=True)
class Node:
    """One unique unit of work: a stage at a key, with what its call needs."""

    stage: StageDef
    key: str
    config: dict[str, Any]  # the settings the stage reads (`project` of a trial config that needs this key)
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


def project(config: dict[str, Any], reads: list[str]) -> dict[str, Any]:
    """The settings `reads` names, nested as in `config`: ``project(c, ["seed", "rl.lr"])`` ->
    ``{"seed": .., "rl": {"lr": ..}}``. A whole section wins over single fields of it."""
    out: dict[str, Any] = {}
    for dotted in sorted(reads, key=lambda d: d.count(".")):
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            if leaf not in node:
                node[leaf] = get_dotted(config, dotted)
    return out


def stage_key(stage: str, settings: dict[str, Any], input_keys: dict[str, str], version: str, threads: int = 1) -> str:
    """Short sha256 of the canonical JSON of everything a stage's output depends on."""
    payload = {"stage": stage, "config": settings, "inputs": input_keys, "version": version, "threads": threads}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:KEY_LENGTH]


def disabled_reason(stage: StageDef, config: dict[str, Any]) -> str | None:
    """Why a study trial does not run `stage` (its `enabled` key false, or its `enabled_when` key off its values);
    None where it runs."""
    if stage.enabled is False:
        return "run by commands only"
    if isinstance(stage.enabled, str) and not get_dotted(config, stage.enabled):
        return f"{stage.enabled} is false"
    if stage.enabled_when is not None:
        dotted, values = stage.enabled_when
        if (value := get_dotted(config, dotted)) not in values:
            return f"{dotted} is {value}, not one of {values}"
    return None


def is_enabled(stage: StageDef, config: dict[str, Any]) -> bool:
    """Whether a study trial runs `stage` (its `enabled` key true, or no key, and its `enabled_when` holds)."""
    return disabled_reason(stage, config) is None


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


def input_keys(stage: StageDef, config: dict[str, Any], keys: dict[str, str]) -> dict[str, str]:
    """The keys of the inputs `stage` takes in this config: required ones, and optional ones the trial runs
    whose `input_when` condition (if any) holds."""
    def joins(name: str) -> bool:
        if name not in stage.input_when:
            return True
        dotted, values = stage.input_when[name]
        return get_dotted(config, dotted) in values
    return {name: keys[name] for name in stage.inputs + stage.optional_inputs if name in keys and joins(name)}


def trial_keys(config: dict[str, Any], pipeline: Pipeline) -> dict[str, str]:
    """Stage name -> key for one trial config; stages disabled (directly or upstream) are left out."""
    keys: dict[str, str] = {}
    for stage in pipeline:
        if not is_enabled(stage, config) or any(name not in keys for name in stage.inputs):
            continue
        inputs = input_keys(stage, config, keys)
        keys[stage.name] = stage_key(stage.name, project(config, stage.reads), inputs, stage.version, stage.threads)
    return keys


def plan_nodes(configs: list[dict[str, Any]], pipeline: Pipeline) -> tuple[list[dict[str, str]], list[Node]]:
    """Each config's stage keys, and the unique nodes they need in topological order."""
    check_pipeline(pipeline)
    per_trial = [trial_keys(config, pipeline) for config in configs]
    nodes: dict[tuple[str, str], Node] = {}
    for stage in pipeline:
        for config, keys in zip(configs, per_trial):
            if stage.name in keys and (stage.name, keys[stage.name]) not in nodes:
                settings = project(config, stage.reads)
                nodes[(stage.name, keys[stage.name])] = Node(stage, keys[stage.name], settings,
                                                             input_keys(stage, config, keys))
    return per_trial, list(nodes.values())
