"""Loading configs: an optional YAML file, then ``key=value`` overrides with dotted keys (``rl.lr=1e-3``),
parsed as YAML scalars, validated into a `config` model. Errors become `BadInput` with one line naming the
file, the key, what was expected and what was found. The knobs themselves live in `config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import BadInput


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
    if re.match(r"[a-z_]+(\.[a-z_]+)*[:=]", msg):  # a cross-field check names its setting itself
        return msg
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
