"""Tasks by name: prompts + gold solutions + verifier + step splitter."""

from __future__ import annotations

from .base import Example, Task

__all__ = ["Example", "Task", "make_task"]


def make_task(cfg) -> Task:
    """Build the task a `TaskConfig` names."""
    if cfg.name == "arithmetic":
        from .arithmetic import ArithmeticTask

        return ArithmeticTask(n_ops=cfg.n_ops, first_digits=cfg.first_digits, digits=cfg.digits,
                              operators=cfg.operators, n_templates=cfg.n_templates, seed=cfg.seed)
    if cfg.name == "chat":
        from .chat import ChatTask

        return ChatTask(seed=cfg.seed, n_templates=cfg.n_templates)
    raise KeyError(f"unknown task {cfg.name!r}; valid tasks: arithmetic, chat")
