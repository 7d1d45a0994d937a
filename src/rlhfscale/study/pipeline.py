"""The rlhfscale pipeline as the study engine sees it: stage names, what each reads, what feeds it.

    sft ──────────────┬──────────────────────────────┬─▶ rl (rule, ORM or PRM reward)
    rm_base (SFT at rm.size) ─┐                      │      ▲
    sft ─▶ sample ─▶ label ───┴─▶ rm ─▶ bon          └──────┘ (rm, when the trial trains one)

Only import paths and config keys live here (the study engine never imports torch); the
stage functions themselves are in `rlhfscale.stages.entry`. `rm.enabled` switches the
reward-model branch on for a trial, `rl.enabled` the policy optimization.
"""

from __future__ import annotations

from rlhfscale.study.keys import StageDef

ENTRY = "rlhfscale.stages.entry"
BASE = ["seed", "device", "task", "sft", "eval"]  # what every trained model depends on

PIPELINE: list[StageDef] = [
    StageDef(name="sft", fn=f"{ENTRY}:sft", config_keys=BASE + ["policy"]),
    StageDef(name="rm_base", fn=f"{ENTRY}:rm_base", config_keys=BASE + ["policy.max_len", "rm.size"],
             enabled="rm.enabled"),
    StageDef(name="sample", fn=f"{ENTRY}:sample", inputs=["sft"], enabled="rm.enabled",
             config_keys=BASE + ["policy", "sampling", "data"]),
    StageDef(name="label", fn=f"{ENTRY}:label", inputs=["sample", "sft"], enabled="rm.enabled",
             config_keys=BASE + ["policy", "sampling", "data"]),
    StageDef(name="rm", fn=f"{ENTRY}:rm", inputs=["label", "rm_base"], enabled="rm.enabled",
             config_keys=BASE + ["policy", "data", "rm"]),
    StageDef(name="bon", fn=f"{ENTRY}:bon", inputs=["sft", "rm"], enabled="rm.enabled",
             config_keys=BASE + ["policy", "sampling", "rm.aggregation", "bon"]),
    StageDef(name="rl", fn=f"{ENTRY}:rl", inputs=["sft"], optional_inputs=["rm"], enabled="rl.enabled",
             config_keys=BASE + ["policy", "sampling", "rl"]),
]
