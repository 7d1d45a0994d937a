"""A toy pipeline of cheap pure-Python stages for the study engine's tests.

Each stage writes a file and returns metrics computed deterministically from its config
section and its inputs' files, so tests can predict every number by hand.
The environment variable `TOY_SLEEP` (seconds) makes every stage slow enough for a kill to land
mid-way; it is timing only, so it is no setting of any stage (a stage sees only what it reads).
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from rlhfscale.study.keys import StageDef

RM_SIZES = {"micro": 1, "tiny": 2, "small": 3}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Section):
    n: int = 4  # number of items
    scale: int = 3  # item i is (7 * seed + scale * i) % 97


class SftConfig(_Section):
    lr: float = 0.5


class RmConfig(_Section):
    size: Literal["micro", "tiny", "small"] = "micro"
    fail: bool = False  # the rm stage raises
    crash: bool = False  # the rm stage kills the process running it


class RlConfig(_Section):
    steps: int = 3  # eval points written to curve.jsonl


class EvalConfig(_Section):
    enabled: bool = True


class ToyConfig(_Section):
    task: TaskConfig = TaskConfig()
    sft: SftConfig = SftConfig()
    rm: RmConfig = RmConfig()
    rl: RlConfig = RlConfig()
    eval: EvalConfig = EvalConfig()
    seed: int = 0


def validate(config: dict[str, Any]) -> dict[str, Any]:
    return ToyConfig.model_validate(config).model_dump()


def _read(inputs: dict[str, str], stage: str, name: str) -> Any:
    return json.loads((Path(inputs[stage]) / name).read_text())


def _write(out_dir: str, name: str, value: Any, config: dict[str, Any]) -> None:
    (Path(out_dir) / "partial.txt").write_text("work in progress")
    time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
    if os.environ.get("TOY_FULL_DISK") == name:  # the disk fills up while this file is written
        (Path(out_dir) / name).write_text(json.dumps(value)[:3])
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out_dir) / name))
    (Path(out_dir) / name).write_text(json.dumps(value))


def data(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    task = config["task"]
    items = [(7 * config["seed"] + task["scale"] * i) % 97 for i in range(task["n"])]
    _write(out_dir, "items.json", items, config)
    return {"data/n": len(items), "data/sum": sum(items)}


def sft(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    weight = sum(_read(inputs, "data", "items.json")) * config["sft"]["lr"] + config["seed"]
    _write(out_dir, "model.json", {"weight": weight}, config)
    return {"sft/weight": weight}


def rm(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    if config["rm"]["crash"]:
        os._exit(3)
    if config["rm"]["fail"]:
        raise ValueError(f"rm size {config['rm']['size']}\nrefused")
    quality = RM_SIZES[config["rm"]["size"]] * _read(inputs, "sft", "model.json")["weight"]
    _write(out_dir, "rm.json", {"quality": quality}, config)
    return {"rm/quality": quality, "rm/items": len(_read(inputs, "data", "items.json"))}


def rl(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    weight = _read(inputs, "sft", "model.json")["weight"]
    quality = _read(inputs, "rm", "rm.json")["quality"]
    curve = [{"step": step, "rl/reward": weight + quality * step} for step in range(1, config["rl"]["steps"] + 1)]
    _write(out_dir, "policy.json", {"reward": curve[-1]["rl/reward"]}, config)
    (Path(out_dir) / "curve.jsonl").write_text("".join(json.dumps(point) + "\n" for point in curve))
    return {"rl/reward": curve[-1]["rl/reward"]}


def evaluate(config: dict[str, Any], inputs: dict[str, str], out_dir: str) -> dict[str, float]:
    reward = _read(inputs, "rl", "policy.json")["reward"]
    _write(out_dir, "eval.json", {"score": reward / 10}, config)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {"eval/score": reward / 10} | ({"eval/gpus": float(len(gpus.split(",")))} if gpus else {})


PIPELINE = [
    StageDef(name="data", fn="toy_stages:data", reads=["task", "seed"]),
    StageDef(name="sft", fn="toy_stages:sft", reads=["sft", "seed"], inputs=["data"]),
    StageDef(name="rm", fn="toy_stages:rm", reads=["rm"], inputs=["data", "sft"]),
    StageDef(name="rl", fn="toy_stages:rl", reads=["rl"], inputs=["sft", "rm"]),
    StageDef(name="eval", fn="toy_stages:evaluate", reads=[], inputs=["rl"], enabled="eval.enabled"),
]


def expected_metrics(config: dict[str, Any]) -> dict[str, float]:
    """Every metric of one trial, computed directly (what the pipeline must report)."""
    items = [(7 * config["seed"] + config["task"]["scale"] * i) % 97 for i in range(config["task"]["n"])]
    weight = sum(items) * config["sft"]["lr"] + config["seed"]
    quality = RM_SIZES[config["rm"]["size"]] * weight
    reward = weight + quality * config["rl"]["steps"]
    return {
        "data/n": len(items), "data/sum": sum(items), "sft/weight": weight, "rm/quality": quality,
        "rm/items": len(items), "rl/reward": reward, "eval/score": reward / 10,
    }
