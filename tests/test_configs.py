"""Every shipped study config validates, passes its stages' checks and plans on a CPU, without running or writing
anything (`study run --dry-run`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlhfscale.pipeline import GRAPH
from rlhfscale.study.commands import validate
from rlhfscale.study.runner import plan_study

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda p: p.stem)
def test_a_shipped_study_plans_without_running(spec, tmp_path):
    stages, _ = plan_study(spec, validate=validate, pipeline=GRAPH, store=tmp_path / "store")
    assert stages and all(s.state == "missing" for s in stages)
    assert {"sft", "rl"} <= {s.stage for s in stages}
    assert not (tmp_path / "store").exists()


def test_the_real_model_grid_asks_a_gpu_for_every_stage_and_dry_runs_on_a_cpu(tmp_path):
    spec = Path(__file__).parents[1] / "configs" / "paper-grid-hf.yaml"
    stages, _ = plan_study(spec, validate=validate, pipeline=GRAPH, store=tmp_path / "store")
    assert all(s.resources["num_gpus"] >= 1 for s in stages)
    rl_trials = {t for s in stages if s.stage == "rl" for t in s.trials}
    assert any("Qwen/Qwen2.5-7B" in t for t in rl_trials) and any("rl.reward" in t for t in rl_trials)
    r = subprocess.run([sys.executable, "-m", "rlhfscale.cli", "study", "run", str(spec), "--dry-run", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{len(stages)} of {len(stages)} stage runs to do" in r.stdout and not (tmp_path / "out").exists()
