"""Tasks by name (one `Registry`): prompts + gold solutions + verifier + step splitter.

``prefs`` (prompts of preference files) has no verifier: `UNVERIFIED` names such tasks for the
torch-free config checks, `verifiable(task)` tells a built one.

Each entry builds its task from a `TaskConfig` and imports its module only then, so this package
stays light (the config validates `task.name` against it without torch). `score_all` scores many
responses at once where a task can batch its verifier (code runs in one sandboxed process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..registry import Registry
from .base import Example, Task

__all__ = ["Example", "Task", "TASKS", "UNVERIFIED", "make_task", "score_all", "verifiable"]

TASKS: Registry[Callable[[Any], Task]] = Registry("task")


@TASKS.register("arithmetic")
def _arithmetic(cfg: Any) -> Task:
    from .arithmetic import ArithmeticTask

    return ArithmeticTask(n_ops=cfg.n_ops, first_digits=cfg.first_digits, digits=cfg.digits,
                          operators=cfg.operators, n_templates=cfg.n_templates, seed=cfg.seed)


@TASKS.register("chat")
def _chat(cfg: Any) -> Task:
    from .chat import ChatTask

    return ChatTask(seed=cfg.seed, n_templates=cfg.n_templates)


@TASKS.register("math")
def _math(cfg: Any) -> Task:
    from .math import MathTask

    return MathTask(cfg.train_path, cfg.test_path, step_split=cfg.step_split)


@TASKS.register("math-mini")
def _math_mini(cfg: Any) -> Task:
    from .math_mini import task

    return task(n_ops=cfg.n_ops, max_value=cfg.max_value, seed=cfg.seed, step_split=cfg.step_split)


@TASKS.register("code")
def _code(cfg: Any) -> Task:
    from .code import CodeTask

    return CodeTask(cfg.train_path, cfg.test_path, all_pass=cfg.all_pass)


@TASKS.register("code-mini")
def _code_mini(cfg: Any) -> Task:
    from .code_mini import MiniCodeTask

    return MiniCodeTask(seed=cfg.seed)


@TASKS.register("prefs")
def _prefs(cfg: Any) -> Task:
    from .prefs import PrefsTask

    return PrefsTask(cfg.train_path, cfg.test_path)


UNVERIFIED = frozenset({"prefs"})  # tasks without a verifier: no rule reward, no gold score, no pass@1


def verifiable(task: Task) -> bool:
    """Whether the task scores responses itself (a verifier, or the chat world's hidden gold rater)."""
    return getattr(task, "verifiable", True)


def make_task(cfg: Any) -> Task:
    """Build the task a `TaskConfig` names."""
    return TASKS.get(cfg.name)(cfg)


def score_all(task: Task, examples: Sequence[Example], responses: Sequence[str]) -> list[float]:
    """`task.score` of each (example, response) pair, batched when the task has `score_batch`."""
    batch = getattr(task, "score_batch", None)
    if batch is not None:
        return list(batch(examples, responses))
    return [task.score(e, r) for e, r in zip(examples, responses, strict=True)]
