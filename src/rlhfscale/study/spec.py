"""Study specs: a YAML file naming a base config, the axes to vary and the seeds; expanded to trials.

Every error names the spec file, the YAML line and the dotted key, as one `BadInput` line. The
spec does not know the pipeline's config classes: `expand` takes a `validate(config) -> config`
callable and maps the pydantic errors it raises back to the line that set the offending key.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from rlhfscale.errors import BadInput
from rlhfscale.study.keys import canonical_json

YamlPath = tuple[str | int, ...]
Validate = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SpecSource:
    """Where a spec came from: its file and the line of every key and list item in it."""

    path: Path
    lines: dict[YamlPath, int]

    def line_of(self, yaml_path: YamlPath) -> int:
        """The line of the deepest node of `yaml_path` present in the file (1 for the document)."""
        for end in range(len(yaml_path), 0, -1):
            if yaml_path[:end] in self.lines:
                return self.lines[yaml_path[:end]]
        return 1

    def error(self, yaml_path: YamlPath, key: str, expected: str, found: str) -> BadInput:
        """A one-line BadInput naming the file, the line of `yaml_path` and `key`."""
        return BadInput(f"{self.path} line {self.line_of(yaml_path)}: {key}: expected {expected}, found {found}")


class StudySpec(BaseModel):
    """A study: the trials to run and where and how to run them. Load it with `load_spec`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Study name, recorded with its trials in the store index.")
    base: dict[str, Any] = Field(default_factory=dict, description="Base pipeline config (nested).")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted config key -> values to try, e.g. {'rm.size': ['micro', 'tiny']}."
    )
    mode: Literal["grid", "zip"] = Field(
        default="grid", description="grid: every combination of axis values; zip: the i-th value of every axis."
    )
    trials: list[dict[str, Any]] = Field(
        default_factory=list, description="Explicit override dicts, run in addition to the axis points."
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="Every trial runs once per seed (config key `seed`)."
    )
    store: str = Field(default="store", description="Store directory; relative paths are relative to the spec file.")
    executor: Literal["local", "ray"] = Field(default="local", description="Where stages run.")
    max_workers: int | None = Field(
        default=None, ge=1, description="Stages run at once; default: the CPU cores (local), unlimited (ray)."
    )
    resources: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Stage name -> resource request of each of its calls, e.g. {'rl': {'num_cpus': 2, 'num_gpus': 1}}; "
        "num_cpus is also the stage's thread count (default 1 CPU, no GPU).",
    )

    _source: SpecSource = PrivateAttr(default_factory=lambda: SpecSource(Path("study.yaml"), {}))

    @property
    def path(self) -> Path:
        """The spec file."""
        return self._source.path

    @property
    def store_root(self) -> Path:
        """The store directory, resolved against the spec file's folder."""
        store = Path(self.store).expanduser()
        return store if store.is_absolute() else self.path.parent / store

    def error(self, yaml_path: YamlPath, key: str, expected: str, found: str) -> BadInput:
        """A one-line BadInput naming the spec file, the line of `yaml_path` and `key`."""
        return self._source.error(yaml_path, key, expected, found)


@dataclass(frozen=True)
class Trial:
    """One run of the pipeline: a validated config made from the base, the overrides and a seed."""

    id: str
    seed: int
    overrides: dict[str, Any]  # dotted key -> value, in spec order (the seed not included)
    config: dict[str, Any]


@dataclass
class _Point:
    """One set of overrides, with the YAML path that set each dotted key."""

    overrides: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, YamlPath] = field(default_factory=dict)


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study spec; BadInput names the file, line and key of any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise BadInput(f"{path}: expected a readable study spec, found {err.strerror or err}") from None
    data, lines = _compose(path, text)
    if not isinstance(data, dict):
        raise BadInput(f"{path} line 1: expected a mapping of study settings, found {type(data).__name__}")
    source = SpecSource(path, lines)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise _spec_error(source, err) from None
    spec._source = source
    return spec


def _compose(path: Path, text: str) -> tuple[Any, dict[YamlPath, int]]:
    """The YAML document's value and the line of every key and list item in it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{path}{where}: expected valid YAML, found {getattr(err, 'problem', err)}") from None
    finally:
        loader.dispose()
    lines: dict[YamlPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def _index_lines(node: yaml.Node, prefix: YamlPath, lines: dict[YamlPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines[prefix + (key_node.value,)] = key_node.start_mark.line + 1
            _index_lines(value_node, prefix + (key_node.value,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            _index_lines(item, prefix + (index,), lines)


def _dotted(loc: YamlPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """(expected, found) for one pydantic error."""
    if error["type"] == "extra_forbidden":
        return "a known key", f"unknown key {error['loc'][-1]!r}"
    if error["type"] == "missing":
        return "a value", "nothing"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Input should be ")
    found = repr(error.get("input"))
    return message.removeprefix("expected "), found if len(found) <= 60 else found[:57] + "..."


def _spec_error(source: SpecSource, err: ValidationError) -> BadInput:
    first = err.errors()[0]
    expected, found = _describe(first)
    if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
        expected = f"one of {', '.join(StudySpec.model_fields)}"
    return source.error(tuple(first["loc"]), _dotted(tuple(first["loc"])), expected, found)


def _flatten(value: dict[str, Any], yaml_path: YamlPath, prefix: str, point: _Point) -> None:
    """Add a nested override dict to `point` as dotted keys."""
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            _flatten(item, yaml_path + (key,), dotted + ".", point)
        else:
            point.overrides[dotted] = item
            point.sources[dotted] = yaml_path + (key,)


def _axis_points(spec: StudySpec) -> list[_Point]:
    if not spec.axes:
        return []
    names = list(spec.axes)
    if spec.mode == "zip":
        length = len(spec.axes[names[0]])
        for name in names[1:]:
            if len(spec.axes[name]) != length:
                expected = f"{length} values (as many as axes.{names[0]}, mode zip)"
                raise spec.error(("axes", name), f"axes.{name}", expected, str(len(spec.axes[name])))
        combos = [(i,) * len(names) for i in range(length)]
    else:
        combos = list(itertools.product(*(range(len(spec.axes[name])) for name in names)))
    return [
        _Point({n: spec.axes[n][i] for n, i in zip(names, combo)}, {n: ("axes", n, i) for n, i in zip(names, combo)})
        for combo in combos
    ]


def _points(spec: StudySpec) -> list[_Point]:
    points = _axis_points(spec)
    for index, overrides in enumerate(spec.trials):
        point = _Point()
        _flatten(overrides, ("trials", index), "", point)
        points.append(point)
    for point in points:
        if "seed" in point.overrides:
            raise spec.error(point.sources["seed"], "seed", "seeds in the `seeds` list", "a seed override")
    return points or [_Point()]


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else canonical_json(value)


def trial_id(overrides: dict[str, Any], seed: int) -> str:
    """A readable, stable id: 'rm.size=tiny,policy.size=micro,seed=0'."""
    return ",".join([f"{key}={_format_value(value)}" for key, value in overrides.items()] + [f"seed={seed}"])


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with each dotted key set (dict values are merged into dicts)."""
    config = copy.deepcopy(base)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = apply_overrides(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return config


def _source_of(key: str, sources: dict[str, YamlPath]) -> YamlPath:
    """The YAML path that set dotted config `key`: the override touching it, else the base."""
    for dotted, source in sources.items():
        if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
            return source
    return ("base",) + tuple(key.split("."))


def _validated(spec: StudySpec, point: _Point, seed_index: int, validate: Validate | None) -> dict[str, Any]:
    seed = spec.seeds[seed_index]
    config = apply_overrides(spec.base, {**point.overrides, "seed": seed})
    if validate is None:
        return config
    try:
        return validate(config)
    except BadInput as err:
        raise BadInput(f"{spec.path}: trial {trial_id(point.overrides, seed)}: {err}") from None
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        sources = {**point.sources, "seed": ("seeds", seed_index)}
        expected, found = _describe(first)
        raise spec.error(_source_of(key, sources), key, expected, found) from None


def expand(spec: StudySpec, validate: Validate | None = None) -> list[Trial]:
    """The spec's trials: each axis point and explicit trial, once per seed, validated."""
    trials: list[Trial] = []
    seen: set[str] = set()
    for point in _points(spec):
        for seed_index, seed in enumerate(spec.seeds):
            tid = trial_id(point.overrides, seed)
            if tid in seen:
                where = next(iter(point.sources.values()), ("seeds", seed_index))
                raise spec.error(where[:2], _dotted(where[:2]), "a trial unlike the others", f"a duplicate of {tid!r}")
            seen.add(tid)
            config = _validated(spec, point, seed_index, validate)
            trials.append(Trial(tid, seed, dict(point.overrides), config))
    return trials
