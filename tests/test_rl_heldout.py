"""Held-out learning for the algorithms the demo does not run: from the demo's SFT start (constant schedule),
20 steps of PPO, RLOO, REINFORCE++ or Dr. GRPO at the demo's settings raise held-out greedy pass@1 (GRPO:
test_demo.py).

Measured with 2 threads, 30 steps from the demo's 0.50 start (held-out pass@1 at steps 15 and 30): PPO 0.62, 0.75;
RLOO 0.585, 0.715; REINFORCE++ 0.665, 0.665."""

import pytest

from rlhfscale.cli import DEMO_DEFAULTS
from rlhfscale.config import RunConfig, merge
from rlhfscale.stages import rl, sft

EVAL = {"n_prompts": 100, "k": 1}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    sft.run(RunConfig.model_validate({"eval": EVAL}), {}, out)
    return out


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "reinforce++", "dr_grpo"])
def test_algorithm_raises_held_out_pass_at_1(start, tmp_path, algorithm):
    cfg = RunConfig.model_validate(merge(DEMO_DEFAULTS, {"rl": {"algorithm": algorithm, "steps": 20, "eval_every": 0},
                                                         "eval": EVAL}))
    summary = rl.run(cfg, {"sft": str(start)}, tmp_path)
    before, after = summary["eval/pass@1_before"], summary["eval/pass@1_after"]
    assert after > before + 0.05, (algorithm, before, after)
