"""The stage functions the study engine calls: ``fn(config: dict, inputs, out_dir) -> metrics``.

Each validates the trial config into a `RunConfig` and runs its stage; `rl` also
writes ``curve.jsonl`` (one row per held-out evaluation) for the analysis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from . import rl as rl_stage
from . import sft as sft_stage

CURVE_KEYS = ("step", "eval/pass@1", "flops/rl", "rl/kl", "rl/gold_reward", "rl/proxy_reward", "rl/reward")


def sft(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = sft_stage.run(RunConfig.model_validate(config), inputs, out_dir)
    return {**summary, "eval/pass@1_sft": summary["eval/pass@1"], "policy.params": summary["policy/params"]}


def rl(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = rl_stage.run(RunConfig.model_validate(config), inputs, out_dir)
    write_curve(Path(out_dir))
    return {**summary, "eval/pass@1": summary["eval/pass@1_after"]}


def write_curve(run_dir: Path) -> None:
    """Keep the metrics.jsonl rows that carry a held-out evaluation, as curve.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows if "eval/pass@1" in r]
    (run_dir / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
