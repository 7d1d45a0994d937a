"""Monte-Carlo process labels (Math-Shepherd, Wang et al. 2024).

The label of step s of a response is estimated by completing the response from the prefix that
ends at step s m times with the policy and checking the final answers:
soft label = the fraction of the m completions that reach the right answer (an estimate of the
prefix's value), hard label = whether any of them does.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def mc_labels(successes: Tensor, step_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Hard and soft step labels from completion outcomes.

    successes: [B, S, m] bool, whether completion j from the prefix ending at step s reached the
    right answer; step_mask: [B, S] bool, True at real steps. Returns (hard [B, S] bool,
    soft [B, S] float); both are False / 0 at masked steps.
    """
    mask = step_mask.bool()
    soft = torch.where(mask, successes.float().mean(dim=-1), 0.0)
    hard = successes.any(dim=-1) & mask
    return hard, soft


def step_prefixes(steps: list[str], joiner: str = "\n") -> list[str]:
    """The response text up to and including each step, each step followed by `joiner` (the task's step
    separator: a newline, or a blank line).

    ["a", "b"] -> ["a\\n", "a\\nb\\n"].
    """
    prefixes, text = [], ""
    for step in steps:
        text += step + joiner
        prefixes.append(text)
    return prefixes


def monte_carlo_step_labels(
    prompts: list[str],
    step_lists: list[list[str]],
    complete: Callable[[list[str], list[str], int], list[list[str]]],
    is_correct: Callable[[int, str], bool],
    m: int,
    joiner: str = "\n",
) -> tuple[list[list[float]], list[list[bool]]]:
    """Soft and hard Monte-Carlo labels for every step of every response.

    prompts: [B] prompt texts; step_lists: [B] lists of steps of one response each.
    complete(prompts, prefixes, m): for each prompt and response prefix, m completions of the
    response; prompt and prefix stay apart (a chat template wraps the prompt alone, the prefix is the
    start of the assistant's turn). It is called once, with the prefixes of all steps of all responses
    (the prefix of the last step is the whole response, so its completions are what the policy appends).
    is_correct(i, response): whether the full response text (prefix + completion) to example i
    is right. Returns (soft, hard), each shaped like step_lists.
    """
    if m < 1:
        raise ValueError(f"m must be at least 1, got {m}")
    if len(prompts) != len(step_lists):
        raise ValueError(f"{len(prompts)} prompts but {len(step_lists)} step lists")
    owners, prefixes = [], []
    for i, steps in enumerate(step_lists):
        for prefix in step_prefixes(steps, joiner):
            owners.append(i)
            prefixes.append(prefix)
    completions = complete([prompts[i] for i in owners], prefixes, m) if prefixes else []
    if len(completions) != len(prefixes) or any(len(c) != m for c in completions):
        raise ValueError(f"complete must return {m} completions for each of {len(prefixes)} texts")

    n_steps = [len(steps) for steps in step_lists]
    s_max = max(n_steps, default=0)
    successes = torch.zeros(len(step_lists), s_max, m, dtype=torch.bool)
    step_mask = torch.arange(s_max) < torch.tensor(n_steps, dtype=torch.long).unsqueeze(-1)  # [B, S]
    flat = torch.tensor(
        [[is_correct(i, p + c) for c in comps] for i, p, comps in zip(owners, prefixes, completions)],
        dtype=torch.bool,
    ).reshape(-1, m)
    successes[step_mask] = flat  # row-major over (b, s) matches the order of `prefixes`
    hard, soft = mc_labels(successes, step_mask)
    return (
        [soft[b, :n].tolist() for b, n in enumerate(n_steps)],
        [hard[b, :n].tolist() for b, n in enumerate(n_steps)],
    )
