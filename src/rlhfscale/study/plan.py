"""A study's plan: its trials expanded and validated, each trial's stages keyed, every stage's check run; and
the state of a stage key's artifact in the store. What `study.runner` runs and what its queries read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfscale.errors import BadInput
from rlhfscale.study.executors import resolve
from rlhfscale.study.keys import Node, Pipeline, plan_nodes
from rlhfscale.study.spec import StudySpec, Trial, Validate, expand, load_spec
from rlhfscale.study.store import Store
from rlhfscale.version import describe

NodeId = tuple[str, str]  # (stage, key)


@dataclass(frozen=True)
class Plan:
    """A study, expanded and keyed (`make_plan`)."""

    spec: StudySpec
    trials: list[Trial]
    keys: list[dict[str, str]]  # per trial: stage -> key
    nodes: list[Node]  # unique stage keys, topological order
    store: Store
    warnings: list[str]  # what the stages' checks found surprising but legitimate


def _with_resources(spec: StudySpec, pipeline: Pipeline) -> Pipeline:
    """The pipeline with the spec's per-stage resource requests merged in."""
    names = [stage.name for stage in pipeline]
    for name, request in spec.resources.items():
        if name not in names:
            raise spec.error(("resources", name), f"resources.{name}", f"a stage name ({', '.join(names)})", repr(name))
        for what, amount in request.items():
            if amount < 0 or (what == "num_cpus" and amount < 1):
                raise spec.error(("resources", name, what), f"resources.{name}.{what}", "a count of at least "
                                 f"{1 if what == 'num_cpus' else 0}", repr(amount))
    return [s.model_copy(update={"resources": {**s.resources, **spec.resources[s.name]}}) if s.name in spec.resources
            else s for s in pipeline]


def _check_nodes(spec: StudySpec, trials: list[Trial], keys: list[dict[str, str]], nodes: list[Node]) -> list[str]:
    """Refuse a stage on a CUDA device without a GPU, and what each stage's check refuses; return its warnings."""
    trial_of: dict[NodeId, Trial] = {}
    for trial, trial_keys in zip(trials, keys):
        for stage_key in trial_keys.items():
            trial_of.setdefault(stage_key, trial)
    warnings: list[str] = []
    for node in nodes:
        trial, name = trial_of[id_of(node)], node.stage.name
        device = node.config.get("device")
        if isinstance(device, str) and device.startswith("cuda") and node.stage.resources.get("num_gpus", 0) <= 0:
            raise spec.error(("resources",), f"resources.{name}.num_gpus",
                             f"at least 1 for device {device!r} (trial {trial.id})", "0 GPUs requested")
        if node.stage.check:
            try:
                found = resolve(node.stage.check)(node.config)
            except BadInput as err:
                raise BadInput(f"{spec.path}: trial {trial.id}: {err}") from None
            warnings += [f"{name}: {w}" for w in found if f"{name}: {w}" not in warnings]
    return warnings


def make_plan(spec_path: str | Path, validate: Validate | None, pipeline: Pipeline,
              store: str | Path | None = None) -> Plan:
    """Expand, check and key the study; `store` overrides the spec's store directory."""
    spec = load_spec(spec_path)
    trials = expand(spec, validate)
    pipeline = _with_resources(spec, pipeline)
    try:
        keys, nodes = plan_nodes([trial.config for trial in trials], pipeline)
    except KeyError as err:
        raise BadInput(f"{spec.path}: expected every config key the pipeline reads, found {err.args[0]}") from None
    warnings = _check_nodes(spec, trials, keys, nodes)
    return Plan(spec, trials, keys, nodes, Store(store or spec.store_root), warnings)


def id_of(node: Node) -> NodeId:
    """(stage, key) of a stage run."""
    return (node.stage.name, node.key)


def input_ids(node: Node) -> list[NodeId]:
    """(stage, key) of each stage run whose artifact this one reads."""
    return list(node.input_keys.items())


def artifact_state(store: Store, node_id: NodeId, code: dict[str, Any]) -> tuple[str, str]:
    """("missing" | "damaged" | "stale" | "done", why) of the artifact at a stage key."""
    if not store.has_artifact(*node_id):
        return "missing", ""
    if problem := store.verify(*node_id):
        return "damaged", problem
    made_by = store.read_meta(*node_id).get("code", {})
    if made_by.get("source") != code["source"]:
        return "stale", f"made by {describe(made_by)}; this code is {describe(code)}"
    return "done", ""
