"""`rlhfscale demo`: SFT a small model to a weak start, then GRPO; print a before/after table."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..config import RunConfig
from . import rl, sft
from .rundir import RunDir


def run(cfg: RunConfig, out_dir: str | Path) -> dict[str, float]:
    out = Path(out_dir)
    t0 = time.perf_counter()
    sft_summary = sft.run(cfg, {}, out / "sft")
    rl_summary = rl.run(cfg, {"sft": str(out / "sft")}, out / "rl")
    summary = {**sft_summary, **rl_summary, "wall_s": time.perf_counter() - t0}
    RunDir(out, cfg).write_summary(summary)

    table = Table(title=f"held-out accuracy, {cfg.task.name} task, {cfg.policy.size} policy")
    for col in ("", "pass@1 (greedy)", "wall time"):
        table.add_column(col)
    table.add_row("after SFT", f"{summary['eval/pass@1_before']:.3f}", f"{sft_summary['wall_s']:.0f} s")
    table.add_row(f"after {cfg.rl.algorithm.upper()}", f"{summary['eval/pass@1_after']:.3f}", f"{rl_summary['wall_s']:.0f} s")
    console = Console()
    console.print(table)
    console.print(f"run directory: {out}  (summary.json, sft/, rl/)")
    return summary
