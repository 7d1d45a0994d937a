"""Loaders for real preference and step-label data in JSON Lines files.

Each loader takes a path to a .jsonl file (one JSON object per line; blank lines are skipped) or
any iterable of row mappings, such as a Hugging Face `datasets.Dataset`
(`load_dataset("json", data_files=...)["train"]`), so `datasets` is never needed to read a file.
Every bad record raises `BadInput` with one line, ``<path> line <k>: <expected>, found <found>``
(``dataset row <k>`` for rows of an iterable, counted from 0).

Preference pairs (`load_preference_pairs`), one of:
- ``{"prompt": str, "chosen": str, "rejected": str}``;
- chat messages (UltraFeedback): ``"chosen"`` / ``"rejected"`` are lists of ``{"role", "content"}``
  ending with an assistant message; the prompt is the messages before it, rendered as
  ``role: content`` lines followed by ``assistant: ``, so prompt + response reads as the
  conversation. When no message precedes the assistant's, the ``"prompt"`` field is the prompt;
- HH-RLHF: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`` with no prompt:
  the dialogue up to and including the last ``\\n\\nAssistant:`` is the prompt, shared by both.

Step labels (`load_step_labels`, PRM800K / Math-Shepherd style):
``{"prompt": str, "steps": [str, ...], "labels": [...]}`` with one label per step, each a boolean,
0 / 1 or a number in [0, 1] (soft Monte-Carlo labels); labels are returned as floats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from rlhfscale.errors import BadInput

from .records import field as _field
from .records import json_lines
from .records import kind as _kind

HH_TURN = "\n\nAssistant:"

Source = str | os.PathLike | Iterable[Mapping[str, Any]]


class PreferencePair(NamedTuple):
    prompt: str
    chosen: str
    rejected: str


class StepExample(NamedTuple):
    prompt: str
    steps: list[str]
    labels: list[float]  # in [0, 1], one per step


def load_preference_pairs(source: Source) -> list[PreferencePair]:
    """Preference pairs from a .jsonl path or an iterable of rows (formats in the module docstring)."""
    return [_preference_pair(where, row) for where, row in _records(source)]


def load_step_labels(source: Source) -> list[StepExample]:
    """Step-labelled responses from a .jsonl path or an iterable of rows."""
    return [_step_example(where, row) for where, row in _records(source)]


def _records(source: Source) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(location, row) for every record; at least one record."""
    if isinstance(source, (str, os.PathLike)):
        rows = _jsonl_rows(Path(source))
        empty = f"{source}: expected at least one JSON line, found none"
    else:
        rows = ((f"dataset row {k}", row) for k, row in enumerate(source))
        empty = "dataset: expected at least one row, found none"
    n = 0
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise BadInput(f"{where}: expected a JSON object, found {_kind(row)}")
        n += 1
        yield where, row
    if n == 0:
        raise BadInput(empty)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        found = "a directory" if path.is_dir() else "no such file"
        raise BadInput(f"{path}: expected a jsonl file, found {found}")
    yield from json_lines(path)


def _string(where: str, row: Mapping[str, Any], name: str) -> str:
    value = _field(where, row, name)
    if not isinstance(value, str):
        raise BadInput(f"{where}: field {name!r}: expected a string, found {_kind(value)}")
    return value


def _messages(where: str, name: str, value: list) -> list[tuple[str, str]]:
    """(role, content) of each chat message of a field."""
    pairs = []
    for i, message in enumerate(value):
        fields = message if isinstance(message, Mapping) else {}
        role, content = fields.get("role"), fields.get("content")
        if not (isinstance(role, str) and isinstance(content, str)):
            raise BadInput(
                f"{where}: field {name!r} message {i}: expected an object with string 'role' and 'content', "
                f"found {_kind(message)}"
            )
        pairs.append((role, content))
    return pairs


def _render(messages: list[tuple[str, str]]) -> str:
    """A prompt from chat messages: `role: content` lines, then the assistant's cue."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


def _response(where: str, row: Mapping[str, Any], name: str) -> tuple[str | None, str]:
    """(prompt rendered from the preceding messages, or None; response text) of a chosen/rejected field."""
    value = _field(where, row, name)
    if isinstance(value, str):
        return None, value
    if not isinstance(value, list) or not value:
        expected = "expected a string or a list of messages"
        raise BadInput(f"{where}: field {name!r}: {expected}, found {_kind(value)}")
    *context, (role, content) = _messages(where, name, value)
    if role != "assistant":
        raise BadInput(f"{where}: field {name!r}: expected a final 'assistant' message, found {role!r}")
    return (_render(context) if context else None), content


def _preference_pair(where: str, row: Mapping[str, Any]) -> PreferencePair:
    prompt, chosen = _response(where, row, "chosen")
    rejected_prompt, rejected = _response(where, row, "rejected")
    if prompt != rejected_prompt:
        raise BadInput(
            f"{where}: expected 'chosen' and 'rejected' to share the messages before the final "
            "assistant message, found different ones"
        )
    if prompt is not None:
        return PreferencePair(prompt, chosen, rejected)
    if "prompt" in row:
        value = row["prompt"]
        if isinstance(value, list):
            return PreferencePair(_render(_messages(where, "prompt", value)), chosen, rejected)
        return PreferencePair(_string(where, row, "prompt"), chosen, rejected)
    return _split_hh(where, chosen, rejected)


def _split_hh(where: str, chosen: str, rejected: str) -> PreferencePair:
    """An HH-RLHF pair: the dialogue up to the last Assistant turn is the shared prompt."""
    cut = chosen.rfind(HH_TURN) + len(HH_TURN)
    if cut < len(HH_TURN):
        raise BadInput(
            f"{where}: expected a 'prompt' field, chat messages, or an HH-RLHF dialogue with a "
            "'\\n\\nAssistant:' turn, found none of these"
        )
    if rejected.rfind(HH_TURN) + len(HH_TURN) != cut or rejected[:cut] != chosen[:cut]:
        raise BadInput(
            f"{where}: expected 'chosen' and 'rejected' to share the dialogue before the last "
            "Assistant turn, found different dialogues"
        )
    return PreferencePair(chosen[:cut], chosen[cut:], rejected[cut:])


def _step_example(where: str, row: Mapping[str, Any]) -> StepExample:
    prompt = _string(where, row, "prompt")
    steps, labels = _field(where, row, "steps"), _field(where, row, "labels")
    if not isinstance(steps, list) or not steps:
        raise BadInput(f"{where}: field 'steps': expected a non-empty list of strings, found {_kind(steps)}")
    if not isinstance(labels, list):
        raise BadInput(f"{where}: field 'labels': expected a list, found {_kind(labels)}")
    if len(labels) != len(steps):
        raise BadInput(f"{where}: expected as many labels as steps ({len(steps)}), found {len(labels)}")
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise BadInput(f"{where}: field 'steps' item {i}: expected a string, found {_kind(step)}")
    values = []
    for i, label in enumerate(labels):
        if not isinstance(label, (bool, int, float)):
            expected = "expected a boolean or a number"
            raise BadInput(f"{where}: field 'labels' item {i}: {expected}, found {_kind(label)}")
        if not 0.0 <= label <= 1.0:
            raise BadInput(f"{where}: field 'labels' item {i}: expected a number in [0, 1], found {label}")
        values.append(float(label))
    return StepExample(prompt, steps, values)
