"""The stage contract: a stage's key holds exactly the settings it (or an upstream stage) reads, and a stage
cannot read a setting it did not declare."""

from __future__ import annotations

import types
import typing

import pytest
from pydantic import BaseModel, ValidationError

from rlhfscale.config import TASK_SETTINGS, RunConfig
from rlhfscale.contract import leaf_settings, view
from rlhfscale.pipeline import GRAPH, STAGES
from rlhfscale.study.keys import get_dotted, input_keys, plan_nodes, project, trial_keys

BASE = RunConfig.model_validate({"rm": {"enabled": True}, "rl": {"enabled": True}}).model_dump(mode="json")
SWITCHES = {"rm.enabled", "rl.enabled"}  # decide whether stages exist at all, not what they compute


def set_dotted(config: dict, dotted: str, value) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node[part] = dict(node[part])
        node = node[part]
    node[leaf] = value
    return out


def literal_choices(dotted: str) -> list:
    """The allowed values of a Literal-typed setting (also inside an Optional), else []."""
    model, *parents, leaf = [RunConfig, *dotted.split(".")]
    for part in parents:
        model = model.model_fields[part].annotation
    annotation = model.model_fields[leaf].annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    return [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]


def candidates(value, dotted: str):
    """Values to try in place of `value`, most natural first."""
    if choices := literal_choices(dotted):
        return choices
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, 1, 2]
    if isinstance(value, float):
        return [value * 0.5, value + 0.1, 0.5, 1.0]
    if isinstance(value, str):
        return ["micro", "tiny", "*", "+", "cuda", "rloo", "chat", "x"]
    if isinstance(value, dict):
        return [{**value, "orm": 0.5}, {"ood": {"name": "chat"}}]
    return [1, 0.5, True, "x", "token", "/tmp/x", 1e-2, "cuda"]


def base_for(dotted: str) -> dict:
    """BASE, on a task that reads `dotted` when it is a task setting (file paths set where the task needs them)."""
    readers = TASK_SETTINGS.get(dotted.removeprefix("task."), ("arithmetic",))
    if "arithmetic" in readers:
        return BASE
    task = {"name": readers[0], "train_path": "train.jsonl", "test_path": "test.jsonl"} if readers[0] in (
        "math", "code") else {"name": readers[0]}
    return RunConfig.model_validate({**BASE, "task": task}).model_dump(mode="json")


def changed(dotted: str) -> dict:
    """`base_for(dotted)` with `dotted` set to another valid value."""
    base = base_for(dotted)
    current = get_dotted(base, dotted)
    for value in candidates(current, dotted):
        if value == current:
            continue
        config = set_dotted(base, dotted, value)
        try:
            return RunConfig.model_validate(config).model_dump(mode="json")
        except ValidationError:
            continue
    raise AssertionError(f"no valid change of {dotted} found")


def reads_upstream(stage_name: str, keys: dict[str, str], config: dict) -> set[str]:
    """The declared reads of a stage and of every stage feeding it in this trial (``input_keys``: the optional
    inputs it runs and whose ``input_when`` holds)."""
    stage = STAGES[stage_name]
    found = set(stage.reads)
    for name in input_keys(stage, config, keys):
        found |= reads_upstream(name, keys, config)
    return found


def covered(setting: str, reads: set[str]) -> bool:
    return any(setting == r or setting.startswith(r + ".") for r in reads)


@pytest.mark.parametrize("setting", [s for s in leaf_settings() if s not in SWITCHES])
def test_a_setting_changes_exactly_the_keys_of_the_stages_that_read_it(setting):
    base_keys = trial_keys(base_for(setting), GRAPH)
    new_keys = trial_keys(changed(setting), GRAPH)
    assert set(base_keys) == set(new_keys)
    for stage, key in base_keys.items():
        reads = covered(setting, reads_upstream(stage, base_keys, base_for(setting)))
        assert (new_keys[stage] != key) == reads, f"{setting} -> {stage}: reads={reads}"


def test_every_setting_is_read_by_some_stage():
    reads = {r for stage in GRAPH for r in stage.reads} | SWITCHES | {"threads"}
    assert [s for s in leaf_settings() if not covered(s, reads)] == []


def test_a_stage_sees_only_its_settings():
    sft = view(STAGES["sft"], RunConfig())
    assert sft.sft.steps == RunConfig().sft.steps and sft.sampling.max_new_tokens == 0
    for undeclared in ("rl", "rm", "bon", "data", "threads"):
        with pytest.raises(AttributeError):
            getattr(sft, undeclared)
    with pytest.raises(AttributeError):
        sft.sampling.temperature  # noqa: B018  (a section the stage reads one field of)
    with pytest.raises(ValidationError):
        sft.sft.steps = 3  # inputs are frozen


def test_what_a_stage_is_called_with_is_what_its_key_holds():
    _, nodes = plan_nodes([BASE], GRAPH)
    for node in nodes:
        assert node.config == project(BASE, node.stage.reads)
        assert view(node.stage, node.config).model_dump(mode="json") == node.config


def test_input_types_keep_the_config_types_and_defaults():
    rl = view(STAGES["rl"], {**project(BASE, STAGES["rl"].reads)})
    assert isinstance(rl.rl, BaseModel) and rl.rl.lr == RunConfig().rl.lr
    hints = typing.get_type_hints(type(rl))
    assert set(hints) == {"seed", "device", "dtype", "gradient_checkpointing", "task", "sampling", "rl", "eval"}
