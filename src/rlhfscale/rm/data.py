"""Reward-model data: labelled responses in JSON Lines files, and the same in tokens.

File formats (one JSON object per line; bad lines raise `BadInput` naming the file and line):
- responses (written by `sample`): ``{"prompt", "solution", "answer", "meta", "responses": [str]}``,
  one prompt with its task fields and its sampled responses;
- outcomes: ``{"prompt", "response", "label"}``, a response and its correctness label in [0, 1];
- preference pairs and step labels: the formats of `tasks.jsonl`.

In tokens a sequence is prompt + response + EOS (`models.train.encode_pairs`: the prompt through the
chat template when the tokenizer has one); a step-labelled response is its steps joined by a newline
(``step_split="line"``) or a blank line (``"paragraph"``), and its step ends are found in that text and
mapped to tokens (`models.steps`, any tokenizer), one per label.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import BadInput
from ..models.steps import step_end_mask
from ..models.train import encode_pairs
from ..tasks import score_all
from ..tasks.base import Example, Task
from ..tasks.chat import make_preference_pairs
from ..tasks.jsonl import PreferencePair, StepExample, _field, _kind, _records, _string


class Outcome(NamedTuple):
    prompt: str
    response: str
    label: float  # in [0, 1]


class Sampled(NamedTuple):
    example: Example
    responses: list[str]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    n = 0
    with Path(path).open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def sampled_row(example: Example, responses: list[str]) -> dict:
    """The responses-file row of one prompt."""
    return {"prompt": example.prompt, "solution": example.solution, "answer": example.answer,
            "meta": example.meta, "responses": responses}


def load_sampled(path: str | Path) -> list[Sampled]:
    """Prompts (as task `Example`s) with their responses, from a responses file."""
    out = []
    for where, row in _records(path):
        responses = _field(where, row, "responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise BadInput(f"{where}: field 'responses': expected a list of strings, found {_kind(responses)}")
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise BadInput(f"{where}: field 'meta': expected an object, found {_kind(meta)}")
        example = Example(_string(where, row, "prompt"), row.get("solution", ""), row.get("answer", ""), meta)
        out.append(Sampled(example, responses))
    return out


def load_outcomes(path: str | Path) -> list[Outcome]:
    """Responses with correctness labels, from an outcomes file."""
    out = []
    for where, row in _records(path):
        label = _field(where, row, "label")
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0 <= label <= 1:
            raise BadInput(f"{where}: field 'label': expected a number in [0, 1], found {label!r}")
        out.append(Outcome(_string(where, row, "prompt"), _string(where, row, "response"), float(label)))
    return out


def encode_preferences(tok: PreTrainedTokenizerBase, pairs: list[PreferencePair]) -> list[tuple[list[int], list[int]]]:
    """(chosen, rejected) token sequences of preference pairs."""
    return [(pc + rc, pr + rr) for (pc, rc), (pr, rr) in encode_split_pairs(tok, pairs)]


def encode_split_pairs(tok: PreTrainedTokenizerBase, pairs: list[PreferencePair]):
    """((prompt, chosen), (prompt, rejected)) token lists of preference pairs: the prompt apart from each response
    (EOS appended), for a score over the response tokens alone."""
    prompts = [p.prompt for p in pairs]
    chosen = encode_pairs(tok, prompts, [p.chosen for p in pairs])
    rejected = encode_pairs(tok, prompts, [p.rejected for p in pairs])
    return list(zip(chosen, rejected))


def encode_outcomes(tok: PreTrainedTokenizerBase, outcomes: list[Outcome]) -> list[tuple[list[int], float, int]]:
    """(token sequence, label, prompt length) of labelled responses."""
    seqs = encode_pairs(tok, [o.prompt for o in outcomes], [o.response for o in outcomes])
    return [(p + r, o.label, len(p)) for (p, r), o in zip(seqs, outcomes)]


def encode_steps(
    tok: PreTrainedTokenizerBase, examples: list[StepExample], source: str, step_split: str = "line"
) -> list[tuple[list[int], list[int], list[float]]]:
    """(token sequence, step-end indices, labels) of step-labelled responses.

    A step must be one non-empty line ("line") or block without a blank line ("paragraph"), so that it
    has exactly one step end; `source` names the data in the error raised otherwise.
    """
    joiner = "\n" if step_split == "line" else "\n\n"
    seqs = encode_pairs(tok, [e.prompt for e in examples], [joiner.join(e.steps) for e in examples])
    shape = "one-line" if step_split == "line" else "blank-line separated"
    out = []
    for i, ((p, r), example) in enumerate(zip(seqs, examples)):
        ends = step_end_mask(tok, torch.tensor([r]), torch.ones(1, len(r)), step_split)[0].nonzero().squeeze(1)
        if len(ends) != len(example.labels):
            raise BadInput(f"{source} record {i + 1}: expected {len(example.labels)} {shape}, non-empty steps, "
                           f"found {len(ends)} step ends")
        out.append((p + r, (ends + len(p)).tolist(), example.labels))
    return out


def count_tokens(tok: PreTrainedTokenizerBase, responses: Iterable[str]) -> int:
    """Tokens of the responses, each with its EOS (for the 2·N·tokens generation FLOPs)."""
    texts = list(responses)
    return sum(len(ids) + 1 for ids in tok(texts, add_special_tokens=False).input_ids) if texts else 0


def preference_pairs(task: Task, sampled: list[Sampled], temperature: float,
                     generator: torch.Generator | None = None) -> list[PreferencePair]:
    """Pairs of responses to the same prompt whose gold scores differ, each rated once by simulated
    raters (`tasks.chat.make_preference_pairs`; temperature 0: the gold preference). On a task with
    a verifier these are the (correct, incorrect) pairs."""
    gold = [score_all(task, [s.example] * len(s.responses), s.responses) for s in sampled]
    pairs = make_preference_pairs([s.example.prompt for s in sampled], [s.responses for s in sampled], gold,
                                  temperature=temperature, generator=generator)
    score = {(s.example.prompt, r): g for s, row in zip(sampled, gold) for r, g in zip(s.responses, row)}
    return [p for p in pairs if score[p.prompt, p.chosen] != score[p.prompt, p.rejected]]
