"""What every stage does first: threads, seeds, the task, the policy, the sampling budget."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..config import RunConfig
from ..models.io import load_policy, new_policy
from ..tasks import Task, make_task


def setup(cfg: RunConfig) -> Task:
    """Set torch threads (config, else ``RLHFSCALE_THREADS``, else all cores) and seeds; return the task."""
    threads = cfg.threads or int(os.environ.get("RLHFSCALE_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    return make_task(cfg.task)


def policy_from(cfg: RunConfig, checkpoint: str | Path | None = None):
    """The policy to start from: a checkpoint folder, else ``policy.path``, else a fresh ladder model."""
    path = checkpoint or cfg.policy.path
    if path:
        return load_policy(path, cfg.device)
    model, tok = new_policy(cfg.policy.size, cfg.seed, cfg.policy.max_len)
    return model.to(cfg.device), tok


def max_new_tokens(cfg: RunConfig, task: Task) -> int:
    """``sampling.max_new_tokens``, or the task's longest gold solution plus EOS and a little slack."""
    if cfg.sampling.max_new_tokens:
        return cfg.sampling.max_new_tokens
    return task.max_solution_chars() + 4
