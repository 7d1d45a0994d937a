"""The rlhfscale pipeline as the study engine sees it: stage names, what each reads, what feeds it.

Only import paths and config keys live here (the study engine never imports torch); the
stage functions themselves are in `rlhfscale.stages.entry`.
"""

from __future__ import annotations

from rlhfscale.study.keys import StageDef

ENTRY = "rlhfscale.stages.entry"

PIPELINE: list[StageDef] = [
    StageDef(name="sft", fn=f"{ENTRY}:sft", config_keys=["seed", "device", "task", "policy", "sft", "eval"]),
    StageDef(name="rl", fn=f"{ENTRY}:rl", inputs=["sft"],
             config_keys=["seed", "device", "task", "policy", "sft", "sampling", "rl", "eval"]),
]
