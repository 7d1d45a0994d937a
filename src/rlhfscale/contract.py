"""The stage contract: a stage sees exactly the settings its key holds.

Each stage of `rlhfscale.pipeline.GRAPH` declares the settings it reads, as dotted paths into
`RunConfig` (``"task"`` for a whole section, ``"sampling.max_new_tokens"`` for one field). From
that list this module builds the stage's input type: a frozen pydantic model holding those
settings, typed and documented as in `RunConfig`, and nothing else. A stage converts whatever it
is given (a `RunConfig`, a dict, its own input) with `view`, so reading an undeclared setting is
an `AttributeError` in the stage, and the study engine hashes that same list into the stage's key.
Torch-free.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .config import RunConfig
from .study.keys import StageDef, project


class StageInput(BaseModel):
    """Base of every stage's input type: frozen, unknown settings refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _fields(model: type[BaseModel], reads: list[str], name: str) -> dict[str, Any]:
    """Field definitions of `model` restricted to `reads` (paths relative to `model`)."""
    wanted: dict[str, list[str] | None] = {}
    for dotted in reads:
        head, _, rest = dotted.partition(".")
        if head not in model.model_fields:
            raise KeyError(f"{name}: {model.__name__} has no setting {head!r}")
        if not rest or wanted.get(head, []) is None:
            wanted[head] = None
        else:
            wanted.setdefault(head, []).append(rest)
    fields: dict[str, Any] = {}
    for head, rest in wanted.items():
        info = model.model_fields[head]
        section = info.annotation
        if rest is None and isinstance(section, type) and issubclass(section, BaseModel):
            frozen = type(f"{name}_{head}", (section,), {"model_config": {**section.model_config, "frozen": True}})
            fields[head] = (frozen, Field(default_factory=frozen, description=info.description))
        elif rest is None:
            fields[head] = (info.annotation, info)
        else:
            sub = create_model(f"{name}_{head}", __base__=StageInput, **_fields(section, rest, f"{name}.{head}"))
            fields[head] = (sub, sub.model_validate(project(info.get_default(call_default_factory=True)
                                                             .model_dump(), rest)))
    return fields


def input_model(stage: StageDef) -> type[StageInput]:
    """The input type of `stage`: the settings it reads, nothing more."""
    return _input_model(stage.name, tuple(stage.reads))


@functools.cache
def _input_model(name: str, reads: tuple[str, ...]) -> type[StageInput]:
    title = "".join(part.title() for part in name.split("_")) + "Input"
    return create_model(title, __base__=StageInput, **_fields(RunConfig, list(reads), name))


def view(stage: StageDef, cfg: BaseModel | dict[str, Any]) -> StageInput:
    """`cfg` (a RunConfig, a dict of settings or an input of this stage) as the stage's input."""
    model = input_model(stage)
    if isinstance(cfg, model):
        return cfg
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    return model.model_validate(project(data, stage.reads))


def leaf_settings(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every leaf setting of a config model as a dotted path (a section's fields, recursively)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += leaf_settings(annotation, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out
