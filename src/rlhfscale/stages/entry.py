"""The stage functions the study engine calls: ``fn(config: dict, inputs, out_dir) -> metrics``.

Each validates the trial config into a `RunConfig`, runs its stage and adds the
names the analysis table reads (``policy.params``, ``bon/rm@16``, ...); `rl`
also writes ``curve.jsonl`` (one row per held-out evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import RunConfig
from . import bon as bon_stage
from . import label as label_stage
from . import rl as rl_stage
from . import rm as rm_stage
from . import sample as sample_stage
from . import sft as sft_stage

CURVE_KEYS = ("step", "eval/pass@1", "flops/rl", "rl/kl", "rl/gold_reward", "rl/proxy_reward", "rl/reward")
BON_N = 16


def sft(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = sft_stage.run(RunConfig.model_validate(config), inputs, out_dir)
    return {**summary, "policy.params": summary["policy/params"]}


def rm_base(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    """SFT at the reward model's size: the backbone the RM starts from."""
    cfg = RunConfig.model_validate(config)
    cfg.policy.size = cfg.rm.size
    summary = sft_stage.run(cfg, inputs, out_dir)
    return {"rm.params": summary["policy/params"], "rm_base/pass@1": summary["eval/pass@1"]}


def sample(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    return sample_stage.run(RunConfig.model_validate(config), inputs, out_dir)


def label(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    return label_stage.run(RunConfig.model_validate(config), inputs, out_dir)


def rm(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    cfg = RunConfig.model_validate(config)
    cfg.rm.init_path = str(Path(inputs["rm_base"]) / "policy")
    summary = rm_stage.run(cfg, {k: v for k, v in inputs.items() if k != "rm_base"}, out_dir)
    base = json.loads((Path(inputs["rm_base"]) / "summary.json").read_text())
    return {**summary, "flops/rm": summary["flops/rm"] + base["flops/sft"]}  # the RM's own SFT included


def bon(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    cfg = RunConfig.model_validate(config)
    summary = bon_stage.run(cfg, inputs, out_dir)
    own = "orm" if cfg.rm.kind != "prm" else f"prm_{cfg.rm.aggregation}"
    extra = {"bon/rm@16": summary.get(f"bon/{own}@{BON_N}"), "rm/step_f1": summary.get("prm/step_f1"),
             "eval/pass@1_sft": summary.get("eval/pass@1")}
    summary = {k: v for k, v in summary.items() if k != "eval/pass@1" and isinstance(v, (int, float))}
    return {**summary, **{k: v for k, v in extra.items() if v is not None}}


def rl(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = rl_stage.run(RunConfig.model_validate(config), inputs, out_dir)
    write_curve(Path(out_dir))
    return {**summary, "eval/pass@1": summary["eval/pass@1_after"]}


def write_curve(run_dir: Path) -> None:
    """Keep the metrics.jsonl rows that carry a held-out evaluation, as curve.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows if "eval/pass@1" in r]
    (run_dir / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
