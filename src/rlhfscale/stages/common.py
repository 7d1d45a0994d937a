"""What every stage does first: threads, seeds, the task, the policy, the sampling budget, a checkpointer."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers.utils import logging as hf_logging

from ..errors import BadInput
from ..models.checkpoint import Checkpointer
from ..models.io import DTYPES, load_policy, new_policy
from ..models.train import checkpoint_activations
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
    available(cfg.device, "device")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)


def available(device: str | None, setting: str) -> None:
    """BadInput when `device` (a config's device string) names an accelerator this machine lacks."""
    kind = (device or "cpu").partition(":")[0]
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
               "xpu": hasattr(torch, "xpu") and torch.xpu.is_available()}
    if not present[kind]:
        raise BadInput(f"{setting}={device}: expected a {kind} device on this machine, found none; use cpu")


def setup(cfg: Any) -> Task:
    """`start`, and the task the stage works on."""
    start(cfg)
    return make_task(cfg.task)


def fresh_policy(cfg: Any):
    """The policy SFT starts from: ``policy.path``, else a fresh ladder model of ``policy.size``."""
    if cfg.policy.path:
        model, tok = load_policy(cfg.policy.path, cfg.device, cfg.dtype)
    else:
        model, tok = new_policy(cfg.policy.size, cfg.seed, cfg.policy.max_len)
    return checkpoint_activations(model.to(cfg.device, DTYPES[cfg.dtype]), cfg.gradient_checkpointing), tok


def policy_folder(run: str | Path) -> Path:
    """The policy of an input: a run directory's ``policy/``, or the folder itself."""
    run = Path(run)
    return run / "policy" if (run / "policy" / "config.json").is_file() else run


def input_policy(cfg: Any, run: str | Path):
    """(model, tokenizer) of an input run's policy, on ``cfg.device`` in ``cfg.dtype``."""
    return load_policy(policy_folder(run), cfg.device, cfg.dtype)


def max_new_tokens(cfg: Any, task: Task) -> int:
    """``sampling.max_new_tokens``, or the task's longest gold solution plus EOS and a little slack."""
    if cfg.sampling.max_new_tokens:
        return cfg.sampling.max_new_tokens
    return task.max_solution_chars() + 4


def checkpointer(cfg: BaseModel, out_dir: str | Path, every: int) -> Checkpointer:
    """The stage's checkpointer under ``<out_dir>/checkpoint``, fingerprinted by every setting it read."""
    return Checkpointer(Path(out_dir) / "checkpoint", every, canonical_json(cfg.model_dump(mode="json")))
