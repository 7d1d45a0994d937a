"""Chat prompts from preference files: the RL task of HH-RLHF / UltraFeedback-shaped data, without a verifier.

`PrefsTask(train, test)` reads preference pairs in any shape `tasks.jsonl` reads (HH-RLHF
``chosen`` / ``rejected`` dialogues, a ``prompt`` with ``chosen`` / ``rejected`` strings, or
UltraFeedback / TRL message lists) from JSON Lines files (``.jsonl``, ``.jsonl.gz``) or `datasets`
folders (`tasks.records`). Each distinct prompt becomes an `Example` whose solution is the chosen
response of its first pair (what SFT imitates); train prompts that also occur in the test file are
dropped, so the splits are disjoint. Bad rows raise `BadInput` naming the file and line.

Nothing here knows a right answer: the reward comes from a preference reward model trained on the
same kind of pairs (``rl.reward.orm``), and `rl.reward.rule` is refused for the task
(`checks.rl`). `verifiable` is False, so the stages log no gold score and no held-out pass@1 for
it; `score` returns NaN (never a number that could pass for one) should anything ask.
"""

from __future__ import annotations

import math

from . import records as rec
from .base import Example
from .jsonl import PreferencePair, _preference_pair

__all__ = ["PrefsTask", "load_pairs"]


def load_pairs(source: rec.Source, split: str | None = None) -> list[PreferencePair]:
    """The preference pairs of a file or `datasets` folder, in order (shapes in `tasks.jsonl`)."""
    return [_preference_pair(where, row) for where, row in rec.records(source, split)]


def _examples(pairs: list[PreferencePair]) -> list[Example]:
    """One example per distinct prompt, in order of first appearance, with its first chosen response."""
    first: dict[str, str] = {}
    for pair in pairs:
        first.setdefault(pair.prompt, pair.chosen)
    return [Example(prompt=prompt, solution=chosen) for prompt, chosen in first.items()]


class PrefsTask:
    """The prompts of preference files (see the module docstring); ``examples(split, n)`` is the first
    `n` distinct prompts of the split's file (all of them when it has fewer)."""

    verifiable = False

    def __init__(self, train: rec.Source, test: rec.Source, name: str = "prefs") -> None:
        self.name = name
        self._test = _examples(load_pairs(test, split="test"))
        held_out = {e.prompt for e in self._test}
        self._train = [e for e in _examples(load_pairs(train, split="train")) if e.prompt not in held_out]

    def examples(self, split: str, n: int) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', found {split!r}")
        return (self._train if split == "train" else self._test)[:n]

    def score(self, example: Example, response: str) -> float:
        """No verifier: NaN."""
        return math.nan

    def extract_answer(self, response: str) -> str | None:
        """Chat responses have no final answer to vote on."""
        return None

    def split_steps(self, response: str) -> list[str]:
        """The response's non-blank lines."""
        return [line.strip() for line in response.split("\n") if line.strip()]

    def step_labels(self, example: Example, response: str) -> list[bool]:
        raise ValueError("task prefs has no step labels: it has no verifier")

    def max_solution_chars(self) -> int:
        """The longest chosen response in characters (sizes the sampling budget)."""
        return max(len(e.solution) for e in self._train + self._test)
