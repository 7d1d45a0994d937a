"""The Task interface: prompts + gold solutions + verifier + step splitter (+ gold step checker / rater).

A task produces deterministic train and test splits (disjoint by construction)
of `Example`s. Responses are plain strings without the EOS token. For tasks
with a verifiable answer `score` is 1.0 (correct) or 0.0; for the preference
task it is the hidden gold rater's score in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Example:
    prompt: str  # the text the policy is conditioned on (ends with a newline)
    solution: str  # a gold response, one step per line, without EOS
    answer: str = ""  # the final answer ("" when the task has none)
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task(Protocol):
    name: str

    def examples(self, split: str, n: int) -> list[Example]:
        """`n` examples of split "train" or "test"; the same arguments give the same list."""

    def score(self, example: Example, response: str) -> float:
        """Gold score of a response: 1.0 / 0.0 for verifiable tasks, a rating in [0, 1] otherwise."""

    def extract_answer(self, response: str) -> str | None:
        """The final answer in a response (for majority vote), or None."""

    def split_steps(self, response: str) -> list[str]:
        """The response's steps, in order (one per line for the built-in tasks)."""

    def step_labels(self, example: Example, response: str) -> list[bool]:
        """Gold process labels, one per step: True while every step so far is correct."""
