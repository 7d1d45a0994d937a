"""The stage functions the pipeline graph names: ``fn(config: dict, inputs, out_dir) -> metrics``.

`config` holds exactly the settings the stage declares in `rlhfscale.pipeline.GRAPH`; each
function hands it to its stage module (which turns it into the stage's typed input) and adds the
names the analysis table reads (``policy.params``, ``bon/rm@16``, ...); `rl` also writes
``curve.jsonl`` (one row per held-out evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..contract import view
from ..models.reward import OUTCOME_KINDS
from ..pipeline import STAGES
from .rundir import in_study
from . import bon as bon_stage
from . import eval as eval_stage
from . import label as label_stage
from . import rl as rl_stage
from . import rm as rm_stage
from . import sample as sample_stage
from . import sft as sft_stage

CURVE_KEYS = ("step", "eval/pass@1", "flops/rl", "rl/kl", "rl/gold_reward", "rl/proxy_reward", "rl/reward",
              "rl/reward_std")
BON_N = 16


def sft(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = sft_stage.run(config, inputs, out_dir)
    return {**summary, "policy.params": summary["policy/params"]}


def rm_base(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    """SFT at the reward model's size (from ``rm.init_path`` when set): the backbone the RM starts from."""
    cfg = view(STAGES["rm_base"], config)
    policy = {"size": cfg.rm.size, "path": cfg.rm.init_path, "max_len": cfg.policy.max_len}
    as_sft = {**cfg.model_dump(mode="json", exclude={"rm"}), "policy": policy}
    summary = sft_stage.run(as_sft, inputs, out_dir)
    return {**summary, "rm.params": summary["policy/params"], "rm_base/pass@1": summary["eval/pass@1"]}


def data_policy(inputs: dict[str, str]) -> dict[str, str]:
    """The inputs with the policy that samples the RM's data as ``sft``: rm_base's where the pipeline gave it
    (``data.source: rm_base``; ``pipeline.RM_DATA_POLICY``), else the trial's own."""
    return {**inputs, "sft": inputs["rm_base"]} if "rm_base" in inputs and "sft" not in inputs else inputs


def sample(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    return sample_stage.run(config, data_policy(inputs), out_dir)


def label(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    return label_stage.run(config, data_policy(inputs), out_dir)


def rm(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = rm_stage.run(config, inputs, out_dir)
    base = json.loads((Path(inputs["rm_base"]) / "summary.json").read_text()) if "rm_base" in inputs else {}
    return {**summary, "flops/rm": summary["flops/rm"] + base.get("flops/sft", 0.0)}  # the RM's own SFT included


def bon(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    summary = bon_stage.run(config, inputs, out_dir)
    rms = [kind for kind in (*OUTCOME_KINDS.values(), "prm") if f"{kind}/pair_acc" in summary]
    own = rms[0] if len(rms) == 1 and rms[0] != "prm" else "orm"
    if rms == ["prm"]:
        own = f"prm_{view(STAGES['bon'], config).rm.aggregation}"
    extra = {"bon/rm@16": summary.get(f"bon/{own}@{BON_N}"), "rm/step_f1": summary.get("prm/step_f1"),
             "eval/pass@1_sft": summary.get("eval/pass@1")}
    summary = {k: v for k, v in summary.items() if k != "eval/pass@1" and isinstance(v, (int, float))}
    return {**summary, **{k: v for k, v in extra.items() if v is not None}}


def rl(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    """RL, with each ``eval/pass@1*_after`` figure also under its plain name (``eval/pass@1``,
    ``eval/pass@1_<label>`` of eval.tasks); in a study a diverged run is a data point (``rl/diverged``)."""
    summary = rl_stage.run(config, inputs, out_dir, record_divergence=in_study())
    write_curve(Path(out_dir))
    finals = {k.removesuffix("_after"): v for k, v in summary.items() if k.startswith("eval/pass@1") and
              k.endswith("_after")}
    return {**summary, **finals}


def eval(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:  # noqa: A001
    return eval_stage.run(config, inputs, out_dir)


def write_curve(run_dir: Path) -> None:
    """Keep the metrics.jsonl rows that carry a held-out evaluation, as curve.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [{k: r[k] for k in CURVE_KEYS if k in r} for r in rows if "eval/pass@1" in r]
    (run_dir / "curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
