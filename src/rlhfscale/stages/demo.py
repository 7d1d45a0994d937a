"""`rlhfscale demo`: SFT a small model to a weak start, then GRPO; print a before/after table.

`run` runs the pipeline graph's `sft` and `rl` stages into ``<out>/sft`` and ``<out>/rl``; `finish`
adds the combined ``summary.json`` (and ``config.yaml``) before the run directory appears, `show`
prints the table from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..config import RunConfig, dump_config
from ..pipeline import GRAPH
from ..study.targets import run_targets
from .rundir import RunDir


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """SFT, then RL from it, into `out_dir`; print the table; return the combined summary."""
    run_targets(GRAPH, cfg.model_dump(mode="json"), ["sft", "rl"], out_dir, finish=finish(cfg))
    return show(Path(out_dir))


def finish(cfg: RunConfig) -> Callable[[Path, dict[str, dict[str, float]]], None]:
    """Write the demo's summary.json: both stages' metrics and the wall time of each."""
    def write(folder: Path, results: dict[str, dict[str, float]]) -> None:
        summary = {**results["sft"], **results["rl"], "sft/wall_s": results["sft"]["wall_s"],
                   "rl/wall_s": results["rl"]["wall_s"], "wall_s": results["sft"]["wall_s"] + results["rl"]["wall_s"],
                   "task": cfg.task.name, "policy/size": cfg.policy.size, "rl/algorithm": cfg.rl.algorithm}
        RunDir(folder).write_summary(summary)
        dump_config(cfg, folder / "config.yaml")
    return write


def show(run_dir: Path) -> dict:
    """Print the before/after table of a finished demo run directory."""
    s = json.loads((run_dir / "summary.json").read_text())
    table = Table(title=f"held-out accuracy, {s['task']} task, {s['policy/size']} policy")
    for col in ("", "pass@1 (greedy)", "wall time"):
        table.add_column(col)
    table.add_row("after SFT", f"{s['eval/pass@1_before']:.3f}", f"{s['sft/wall_s']:.0f} s")
    table.add_row(f"after {s['rl/algorithm'].upper()}", f"{s['eval/pass@1_after']:.3f}", f"{s['rl/wall_s']:.0f} s")
    console = Console()
    console.print(table)
    console.print(f"run directory: {run_dir}  (summary.json, sft/, rl/)")
    return s
