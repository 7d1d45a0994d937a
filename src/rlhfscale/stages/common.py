"""What every stage does first: threads, seeds, the task, the policy, the sampling budget, a checkpointer."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers.utils import logging as hf_logging

from ..models.checkpoint import Checkpointer
from ..models.io import load_policy, new_policy
from ..study.keys import canonical_json
from ..tasks import Task, make_task
from .rundir import in_study


def start(cfg: Any) -> None:
    """Set torch threads (``RLHFSCALE_THREADS``, which the study sets per stage, else all cores) and seeds; in a
    study, silence transformers' own progress bars (the runner prints one line per stage)."""
    if in_study():
        hf_logging.disable_progress_bar()
    threads = int(os.environ.get("RLHFSCALE_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)


def setup(cfg: Any) -> Task:
    """`start`, and the task the stage works on."""
    start(cfg)
    return make_task(cfg.task)


def fresh_policy(cfg: Any):
    """The policy SFT starts from: ``policy.path``, else a fresh ladder model of ``policy.size``."""
    if cfg.policy.path:
        return load_policy(cfg.policy.path, cfg.device)
    model, tok = new_policy(cfg.policy.size, cfg.seed, cfg.policy.max_len)
    return model.to(cfg.device), tok


def policy_folder(run: str | Path) -> Path:
    """The policy of an input: a run directory's ``policy/``, or the folder itself."""
    run = Path(run)
    return run / "policy" if (run / "policy" / "config.json").is_file() else run


def input_policy(cfg: Any, run: str | Path):
    """(model, tokenizer) of an input run's policy, on ``cfg.device``."""
    return load_policy(policy_folder(run), cfg.device)


def max_new_tokens(cfg: Any, task: Task) -> int:
    """``sampling.max_new_tokens``, or the task's longest gold solution plus EOS and a little slack."""
    if cfg.sampling.max_new_tokens:
        return cfg.sampling.max_new_tokens
    return task.max_solution_chars() + 4


def checkpointer(cfg: BaseModel, out_dir: str | Path, every: int) -> Checkpointer:
    """The stage's checkpointer under ``<out_dir>/checkpoint``, fingerprinted by every setting it read."""
    return Checkpointer(Path(out_dir) / "checkpoint", every, canonical_json(cfg.model_dump(mode="json")))
