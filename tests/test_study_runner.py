"""The study runner on a toy pipeline: sharing, idempotence, failures, a SIGKILL mid-study, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_stages import PIPELINE, expected_metrics, validate

from rlhfscale.study.runner import collect_metrics, run_study, study_status
from rlhfscale.study.store import Store

TESTS_DIR = Path(__file__).parent


def write_spec(folder: Path, axes: dict, *, seeds=(0,), base: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "toy", "base": base or {}, "axes": axes, "seeds": list(seeds)}
    path = folder / "study.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run(path: Path, **kwargs):
    return run_study(path, validate=validate, pipeline=PIPELINE, progress=False, **kwargs)


def completions(path: Path) -> dict[tuple[str, str], int]:
    rows = Store(path.parent / "store").stage_rows()
    return {node: row["completions"] for node, row in rows.items()}


def metrics_of(path: Path) -> list[dict]:
    return collect_metrics(path, validate=validate, pipeline=PIPELINE)


def test_shared_upstream_runs_once_and_metrics_are_right(tmp_path):
    path = write_spec(tmp_path, {"rm.size": ["micro", "tiny", "small"]}, seeds=(0, 1))
    result = run(path, max_workers=1)
    assert result.ok and result.skipped == 0
    # per seed: data, sft shared by the three rm sizes; rm, rl, eval one per size
    ran = sorted(stage for stage, _ in result.ran)
    assert ran == ["data"] * 2 + ["eval"] * 6 + ["rl"] * 6 + ["rm"] * 6 + ["sft"] * 2
    assert set(completions(path).values()) == {1} and len(completions(path)) == 22
    rows = metrics_of(path)
    assert len(rows) == 6
    for row, trial in zip(rows, result.trials):
        expected = expected_metrics(trial.config)
        assert row == {"trial": trial.id, "seed": trial.seed, "rm.size": trial.config["rm"]["size"], **expected}
    # by hand: seed 0 items 0,3,6,9 -> weight 18 * 0.5 = 9; small rm quality 27; reward 9 + 3 * 27
    assert (rows[4]["trial"], rows[4]["rl/reward"], rows[4]["eval/score"]) == ("rm.size=small,seed=0", 90.0, 9.0)
    # seed 1 items 7,10,13,16 -> weight 46 * 0.5 + 1 = 24; micro rm quality 24; reward 24 + 3 * 24
    assert (rows[1]["trial"], rows[1]["sft/weight"], rows[1]["rl/reward"]) == ("rm.size=micro,seed=1", 24.0, 96.0)


def test_finished_study_runs_nothing(tmp_path):
    path = write_spec(tmp_path, {"rm.size": ["micro", "tiny"]})
    first = run(path, max_workers=1)
    before = completions(path)
    again = run(path, max_workers=2)
    assert len(first.ran) == 8 and again.ran == [] and again.skipped == 8
    assert completions(path) == before


def test_failure_blocks_dependents_only(tmp_path, capsys):
    path = write_spec(tmp_path, {"rm.fail": [False, True]})
    result = run_study(path, validate=validate, pipeline=PIPELINE, max_workers=1, progress=True)
    store = Store(tmp_path / "store")
    (failed_id, error), = result.failed.items()
    assert failed_id[0] == "rm" and error == "ValueError: rm size micro refused"
    assert not store.has_artifact(*failed_id) and list(tmp_path.glob("store/*/.tmp-*")) == []
    log = store.error_log(*failed_id).read_text()
    assert "Traceback" in log and "refused" in log
    assert sorted(stage for stage, _ in result.blocked) == ["eval", "rl"]
    assert sorted(stage for stage, _ in result.ran) == ["data", "eval", "rl", "rm", "sft"]
    lines = capsys.readouterr().out.strip().splitlines()  # plain lines: stdout is not a terminal
    assert len(lines) == 8 and lines[-1].startswith("[8/8] ")
    assert sum("FAILED: ValueError: rm size micro refused" in line for line in lines) == 1
    assert sum(" blocked: input " in line for line in lines) == 2
    status = study_status(path, validate=validate, pipeline=PIPELINE)
    assert status.counts == {"done": 7, "failed": 1, "blocked": 2}
    failing = [row for row in status.rows if row.trial == "rm.fail=true,seed=0"]
    assert [(r.stage, r.status) for r in failing] == [
        ("data", "done"), ("sft", "done"), ("rm", "failed"), ("rl", "blocked"), ("eval", "blocked"),
    ]
    assert failing[2].reason == "ValueError: rm size micro refused"
    assert failing[3].reason == f"input rm {failed_id[1]} failed"


def test_a_dying_worker_fails_its_stage_not_the_study(tmp_path):
    path = write_spec(tmp_path, {}, base={"rm": {"crash": True}})
    result = run(path, max_workers=2)
    (failed_id, error), = result.failed.items()
    assert failed_id[0] == "rm" and error.startswith("BrokenProcessPool: ")
    assert sorted(stage for stage, _ in result.ran) == ["data", "sft"]
    assert sorted(stage for stage, _ in result.blocked) == ["eval", "rl"]
    assert "BrokenProcessPool" in Store(tmp_path / "store").error_log(*failed_id).read_text()


def test_study_engine_does_not_import_torch():
    code = "import sys, rlhfscale.study.runner; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_disabled_stage_is_skipped_and_curves_expand(tmp_path):
    path = write_spec(tmp_path, {"eval.enabled": [True, False]})
    assert run(path, max_workers=1).ok
    status = study_status(path, validate=validate, pipeline=PIPELINE)
    assert status.counts == {"done": 9, "skipped": 1}
    assert [r.reason for r in status.rows if r.status == "skipped"] == ["disabled (eval.enabled is false)"]
    rows = metrics_of(path)
    assert "eval/score" in rows[0] and "eval/score" not in rows[1]
    points = collect_metrics(path, validate=validate, pipeline=PIPELINE, curves=True)
    trial_ids = (rows[0]["trial"], rows[1]["trial"])
    assert [(p["trial"], p["step"]) for p in points] == [(t, s) for t in trial_ids for s in (1, 2, 3)]
    weight, quality = rows[0]["sft/weight"], rows[0]["rm/quality"]
    assert [p["rl/reward"] for p in points[:3]] == [weight + quality * s for s in (1, 2, 3)]
    assert {p["curve"] for p in points} == {"rl"}


KILL_AXES = {"rm.size": ["micro", "tiny", "small"], "sft.lr": [0.1, 0.2]}  # 1 data, 2 sft, 6 rm, 6 rl, 6 eval
KILL_TOTAL = 21


def artifacts(store: Path) -> set[Path]:
    return {p for p in store.glob("*/*") if p.is_dir() and not p.name.startswith(".")}


def test_sigkill_mid_study_then_resume_matches_uninterrupted_run(tmp_path):
    path = write_spec(tmp_path / "killed", KILL_AXES)
    store = path.parent / "store"
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import toy_stages as t; "
        f"from rlhfscale.study.runner import run_study; "
        f"run_study({str(path)!r}, validate=t.validate, pipeline=t.PIPELINE, max_workers=2, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TOY_SLEEP": "0.25"})
    deadline = time.monotonic() + 60
    while len(artifacts(store)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = artifacts(store)
    assert 0 < len(at_kill) < KILL_TOTAL
    time.sleep(1.0)  # longer than any stage: an orphaned worker would have published by now
    assert artifacts(store) == at_kill

    resumed = run(path, max_workers=2)
    assert resumed.ok and len(resumed.ran) == KILL_TOTAL - len(at_kill)
    counts = completions(path)
    assert len(counts) == KILL_TOTAL and set(counts.values()) == {1}
    assert list(store.glob("*/.tmp-*")) == list(store.glob("*/.partial-*")) == []

    fresh = write_spec(tmp_path / "fresh", KILL_AXES)
    assert run(fresh, max_workers=1).ok
    assert metrics_of(path) == metrics_of(fresh)


def test_ray_executor_gives_the_local_results(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install 'rlhfscale[ray]')")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    on_ray = write_spec(tmp_path / "ray", {"rm.size": ["micro", "tiny"]})
    local = write_spec(tmp_path / "local", {"rm.size": ["micro", "tiny"]})
    assert run(on_ray, executor="ray").ok
    assert run(local, max_workers=1).ok
    assert metrics_of(on_ray) == metrics_of(local)
    assert set(completions(on_ray).values()) == {1}


def test_a_trial_that_keeps_the_base_value_still_sits_on_the_axis(tmp_path):
    """Explicit trials: the base trial `{}` gets the resolved value of every key another trial overrides,
    so an analysis sees three RM sizes (and the base SFT lr), not two and a gap."""
    tmp_path.mkdir(exist_ok=True)
    spec = {"name": "toy", "base": {"rm": {"size": "tiny"}}, "seeds": [0],
            "trials": [{}, {"rm.size": "micro"}, {"rm.size": "small", "sft.lr": 0.25}]}
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(spec))
    rows = collect_metrics(path, validate=validate, pipeline=PIPELINE)
    assert [r["rm.size"] for r in rows] == ["tiny", "micro", "small"]
    assert [r["sft.lr"] for r in rows] == [0.5, 0.5, 0.25]
