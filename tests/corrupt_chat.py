"""The chat world without a policy, for end-to-end reward-model tests: corrupted gold responses (sample, no
policy) labelled by the gold rater (label), and a scratch nano RM of a given kind trained on them."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfscale.config import RunConfig
from rlhfscale.stages import label, sample

BASE = {"threads": 1, "task": {"name": "chat"}, "policy": {"size": "nano", "max_len": 128},
        "sampling": {"max_new_tokens": 40},
        "data": {"source": "corrupt", "prompts": 64, "responses_per_prompt": 4, "heldout_prompts": 48},
        "rm": {"size": "nano", "init": "scratch", "steps": 150, "lr": 3e-3, "warmup": 5},
        "bon": {"prompts": 8, "n_max": 4, "draws": 2}}


def config(kind: str, **rm_settings) -> RunConfig:
    """BASE with ``rm.kind`` and any other rm settings."""
    data = json.loads(json.dumps(BASE))
    data["rm"] |= {"kind": kind, **rm_settings}
    return RunConfig.model_validate(data)


def labelled(root: Path) -> Path:
    """Run sample -> label into ``root`` (neither reads the rm settings, so every RM kind shares them)."""
    sample.run(config("orm"), {}, root / "sample")
    label.run(config("orm"), {"sample": str(root / "sample")}, root / "label")
    return root
