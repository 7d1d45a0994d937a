"""Every run directory's numbers go to TensorBoard by default; MLflow / W&B when asked; bad names are bad input."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.stages import sft
from rlhfscale.stages.rundir import RunDir
from rlhfscale.stages.tracking import flat

TINY = {"policy": {"size": "nano", "max_len": 64}, "eval": {"n_prompts": 4},
        "sft": {"steps": 20, "batch_size": 8, "n_examples": 32, "warmup": 1}}


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_stage_writes_tensorboard_events_that_match_its_metrics_log(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHFSCALE_TRACKING", raising=False)
    sft.run(RunConfig.model_validate(TINY), {}, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], r["sft/loss"]) for r in rows if "sft/loss" in r]
    assert [s for s, _ in scalars(tmp_path, "sft/loss")] == [s for s, _ in logged] == [10, 20]
    assert [v for _, v in scalars(tmp_path, "sft/loss")] == pytest.approx([v for _, v in logged])


def test_tracking_none_writes_no_event_files_and_unknown_or_missing_trackers_are_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFSCALE_TRACKING", "none")
    run = RunDir(tmp_path / "quiet")
    run.log(1, loss=0.5)
    run.close()
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    monkeypatch.setenv("RLHFSCALE_TRACKING", "tensorboard,neptune")
    with pytest.raises(BadInput, match="RLHFSCALE_TRACKING: expected names from tensorboard, mlflow, wandb or none, "
                                       "found 'neptune'"):
        RunDir(tmp_path / "bad")
    for name in ("mlflow", "wandb"):
        try:
            __import__(name)
        except ImportError:
            monkeypatch.setenv("RLHFSCALE_TRACKING", name)
            with pytest.raises(BadInput, match=f"{name}: expected the {name} package, found it not installed"):
                RunDir(tmp_path / name).log(1, loss=0.5)


def test_mlflow_logs_params_and_metrics_to_a_local_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    monkeypatch.setenv("RLHFSCALE_TRACKING", "mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = RunDir(tmp_path / "run", RunConfig.model_validate(TINY))
    run.log(3, **{"sft/loss": 0.25})
    run.close()
    client = mlflow.tracking.MlflowClient((tmp_path / "run" / "mlruns").resolve().as_uri())
    (found,) = client.search_runs(client.search_experiments()[0].experiment_id)
    assert found.data.metrics["sft/loss"] == 0.25 and found.data.params["sft.steps"] == "20"


def test_flat_keys():
    assert flat({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
