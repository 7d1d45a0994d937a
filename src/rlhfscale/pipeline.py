"""The rlhfscale pipeline, declared once: each stage, what it reads, what feeds it.

    sft ───────────────┬─────────────────────────────┬─▶ rl (rule, ORM or PRM reward) ─▶ eval
    rm_base (SFT at rm.size) ─┐                      │      ▲
    sft ─▶ sample ─▶ label ───┴─▶ rm ─▶ bon          └──────┘ (rm, when the trial trains one)

The study engine runs this graph over a grid (`rm.enabled` switches the reward-model branch on
for a trial, `rl.enabled` the policy optimization); the CLI commands, `rlhfscale demo` and the
benchmarks run the same graph with some inputs pinned (`study.local.run_targets`). A stage is
called with exactly the settings in `reads` (`contract.view`), which are also what its key
holds; `check` refuses settings that would do nothing in the stage. An optional input joins when
the trial runs it (or a command pins it) and its `input_when` holds: `sample` needs no policy for
corrupted chat responses, `label` writes Monte-Carlo step labels only with one; with
`data.source: rm_base` both take the RM's own SFT start (rm_base) in place of the trial's policy, so
the RM's key does not depend on `policy` and RL runs of every policy size share one RM; with `rm.init: sft` the RM
starts from the trial's own SFT policy and no rm_base runs (`enabled_when`). Bump a stage's `version` to
invalidate its artifacts on purpose. Torch-free: the stage code lives in `rlhfscale.stages`.
"""

from __future__ import annotations

from rlhfscale.registry import Registry
from rlhfscale.study.keys import Pipeline, StageDef

ENTRY = "rlhfscale.stages.entry"
CHECKS = "rlhfscale.checks"
START = ["seed", "device", "dtype", "task"]  # what every stage that builds or runs a model reads
TRAINS = ["gradient_checkpointing"]  # what every stage that trains a model reads
BUDGET = "sampling.max_new_tokens"  # the generation budget of any evaluation
SAMPLING = ["sampling.temperature", "sampling.top_p", "sampling.top_k", BUDGET]  # all but the RL rollout engine
RM_DATA_POLICY = {  # which policy samples (and Monte-Carlo labels) the RM's data: data.source rm_base keys the RM
    "sft": ("data.source", ["policy", "corrupt"]),  # branch free of the trial's policy, so one RM serves every size
    "rm_base": ("data.source", ["rm_base"]),
}

RM_BASE_INITS = ["auto", "policy", "scratch"]  # rm.init=sft starts the RM from the trial's own SFT: no rm_base run

GRAPH: Pipeline = [
    StageDef(name="sft", fn=f"{ENTRY}:sft", reads=START + TRAINS + ["policy", "sft", "eval.n_prompts", BUDGET]),
    StageDef(name="rm_base", fn=f"{ENTRY}:rm_base", enabled="rm.enabled", enabled_when=("rm.init", RM_BASE_INITS),
             reads=START + TRAINS + ["rm.size", "rm.init_path", "policy.max_len", "sft", "eval.n_prompts", BUDGET]),
    StageDef(name="sample", fn=f"{ENTRY}:sample", optional_inputs=["sft", "rm_base"], input_when=RM_DATA_POLICY,
             enabled="rm.enabled", reads=START + [*SAMPLING, "data.prompts", "data.responses_per_prompt", "data.source",
                                                  "data.heldout_prompts"]),
    StageDef(name="label", fn=f"{ENTRY}:label", inputs=["sample"], optional_inputs=["sft", "rm_base"],
             input_when=RM_DATA_POLICY, enabled="rm.enabled",
             reads=START + [*SAMPLING, "data.rater_temperature", "data.mc_rollouts"], check=f"{CHECKS}:label"),
    StageDef(name="rm", fn=f"{ENTRY}:rm", optional_inputs=["label", "rm_base", "sft"], enabled="rm.enabled",
             input_when={"sft": ("rm.init", ["sft"])},
             reads=["seed", "device", "dtype", *TRAINS, "policy.max_len", "task.step_split", "rm"],
             check=f"{CHECKS}:rm"),
    StageDef(name="bon", fn=f"{ENTRY}:bon", inputs=["sft", "rm"], enabled="rm.enabled",
             reads=START + [*SAMPLING, "rm.aggregation", "bon"]),
    StageDef(name="rl", fn=f"{ENTRY}:rl", inputs=["sft"], optional_inputs=["rm"], enabled="rl.enabled",
             reads=START + TRAINS + ["sampling", "rl", "eval.n_prompts", "eval.k", "eval.tasks"], check=f"{CHECKS}:rl"),
    StageDef(name="eval", fn=f"{ENTRY}:eval", inputs=["rl"], enabled=False,
             reads=START + [*SAMPLING, "eval"], check=f"{CHECKS}:evaluation"),
]
STAGES: Registry[StageDef] = Registry.of("stage", {stage.name: stage for stage in GRAPH})
