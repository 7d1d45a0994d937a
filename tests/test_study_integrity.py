"""A store that cannot lie: metrics live in the artifacts, the index is a cache rebuilt from them, damaged
artifacts are found and re-run, a full disk leaves nothing half-written, stale code is reported."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from toy_stages import PIPELINE, validate

from rlhfscale.analysis.report import write_report
from rlhfscale.errors import BadInput
from rlhfscale.study import runner
from rlhfscale.study.runner import collect_metrics, run_study, study_status
from rlhfscale.study.store import Store

AXES = {"rm.size": ["micro", "tiny"]}  # 1 data, 1 sft, 2 rm, 2 rl, 2 eval


def spec(folder: Path, axes: dict = AXES, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(json.dumps({"name": "toy", "axes": axes, "seeds": [0, 1], **extra}))
    return path


def run(path: Path, **kwargs):
    return run_study(path, validate=validate, pipeline=PIPELINE, progress=False, max_workers=1, **kwargs)


def table(path: Path, curves: bool = False) -> list[dict]:
    return collect_metrics(path, validate=validate, pipeline=PIPELINE, curves=curves)


def artifact(path: Path, stage: str, seed: int = 0, size: str = "micro") -> Path:
    rows = {r.stage: r.key for r in study_status(path, validate=validate, pipeline=PIPELINE).rows
            if r.trial == f"rm.size={size},seed={seed}"}
    return path.parent / "store" / stage / rows[stage]


@pytest.fixture
def reference(tmp_path) -> list[dict]:
    path = spec(tmp_path / "reference")
    assert run(path).ok
    return table(path)


def test_a_deleted_index_is_rebuilt_from_the_artifacts(tmp_path, reference):
    path = spec(tmp_path / "study")
    assert run(path).ok
    (path.parent / "store" / "index.sqlite").unlink()
    again = run(path)
    assert again.ok and again.ran == [] and table(path) == reference == table(spec(tmp_path / "reference"))
    reports = [write_report(table(p), p.parent / "report", spec_text="", version="0", title="t").parent
               for p in (path, tmp_path / "reference" / "study.yaml")]
    for name in ("claims.json", "metrics.csv"):
        assert (reports[0] / name).read_bytes() == (reports[1] / name).read_bytes()
    assert Store(path.parent / "store").metrics() == {k: v for k, v in Store(tmp_path / "reference" / "store")
                                                      .metrics().items()}


def test_a_kill_between_publishing_and_indexing_loses_nothing(tmp_path, reference, monkeypatch):
    path = spec(tmp_path / "study")
    calls = {"n": 0}
    mark_done = Store.mark_done

    def killed_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the driver dies after the 4th artifact is published, before indexing it
        return mark_done(self, *args, **kwargs)

    monkeypatch.setattr(Store, "mark_done", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        run(path)
    monkeypatch.setattr(Store, "mark_done", mark_done)
    resumed = run(path)
    assert resumed.ok and resumed.skipped == 4 and table(path) == reference


def test_a_truncated_file_is_found_set_aside_and_rerun(tmp_path, reference):
    path = spec(tmp_path / "study")
    assert run(path).ok
    model = artifact(path, "sft") / "model.json"
    model.write_text(model.read_text()[:5])
    again = run(path)
    assert again.ok and again.ran == [("sft", model.parent.name)] and len(again.damaged) == 1
    (note,) = again.notes
    assert "model.json: expected" in note and "bytes" in note and "\n" not in note
    assert table(path) == reference
    assert len(list((path.parent / "store" / "sft").glob(".damaged-*"))) == 1  # kept for inspection


def test_a_damaged_curve_is_named_and_rerun(tmp_path, reference):
    path = spec(tmp_path / "study")
    assert run(path).ok
    curve = artifact(path, "rl", seed=1) / "curve.jsonl"
    text = curve.read_text()
    curve.write_text(text[:12] + "#" * (len(text) - 12))  # same size, other bytes
    again = run(path)
    assert again.ok and "curve.jsonl: expected sha256" in again.notes[0]
    assert table(path, curves=True) == table(spec(tmp_path / "reference"), curves=True)


def test_a_damaged_curve_line_is_one_bad_input_line(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "rl" / "k").mkdir(parents=True)
    (tmp_path / "rl" / "k" / "curve.jsonl").write_text('{"step": 1}\n[1, 2\n')
    with pytest.raises(BadInput, match=r"rl/k/curve.jsonl line 2: expected a JSON object"):
        store.read_curve("rl", "k")


def test_a_damaged_index_heals_itself(tmp_path, reference):
    path = spec(tmp_path / "study")
    assert run(path).ok
    for suffix in ("-wal", "-shm"):
        Path(f"{path.parent / 'store' / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (path.parent / "store" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    again = run(path)
    assert again.ok and again.ran == [] and table(path) == reference
    assert any("index.sqlite: damaged" in n and "rebuilt from the artifacts" in n for n in again.notes)
    assert study_status(path, validate=validate, pipeline=PIPELINE).counts == {"done": 20}


def test_a_full_disk_fails_the_stage_in_one_line_and_leaves_nothing_half_written(tmp_path, reference, monkeypatch):
    path = spec(tmp_path / "study")
    monkeypatch.setenv("TOY_FULL_DISK", "rm.json")
    first = run(path)
    assert len(first.failed) == 4 and all("No space left on device" in e and "\n" not in e
                                          for e in first.failed.values())
    store = path.parent / "store"
    assert all(p.name.endswith(".error.log") for p in (store / "rm").iterdir())  # no artifact, no partial folder
    monkeypatch.delenv("TOY_FULL_DISK")
    assert run(path).ok and table(path) == reference


def fake_version(source: str) -> dict:
    return {"package": "0", "commit": "c0ffee", "dirty": False, "source": source}


def test_stale_artifacts_are_reported_and_rerun_exactly(tmp_path, monkeypatch):
    path = spec(tmp_path / "study")
    monkeypatch.setattr(runner, "code_version", lambda: fake_version("old"))
    assert run(path).ok
    old = {(r.stage, r.key) for r in study_status(path, validate=validate, pipeline=PIPELINE).rows}
    path = spec(tmp_path / "study", axes={"rm.size": ["micro", "tiny", "small"]})
    monkeypatch.setattr(runner, "code_version", lambda: fake_version("new"))
    grown = run(path)
    assert grown.ok and len(grown.ran) == 6 and set(grown.stale) == old  # the new trials run, the old are reported
    status = study_status(path, validate=validate, pipeline=PIPELINE)
    stale = {(r.stage, r.key) for r in status.rows if r.status == "stale"}
    assert stale == old and all("made by 0 @ c0ffee src old" in r.reason for r in status.rows if r.status == "stale")
    assert runner.code_versions(path, validate=validate, pipeline=PIPELINE) == {
        "0 @ c0ffee src old": len(old), "0 @ c0ffee src new": 6}
    rerun = run(path, rerun_stale=True)
    assert rerun.ok and set(rerun.ran) == old
    assert study_status(path, validate=validate, pipeline=PIPELINE).counts == {"done": 30}


def test_a_stage_asking_for_a_gpu_gets_one_on_ray(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'rlhfscale[ray]')")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    path = spec(tmp_path / "study", axes={"rm.size": ["micro"]}, resources={"eval": {"num_gpus": 1}})
    with pytest.raises(BadInput, match="resources.eval.num_gpus: expected executor ray, or max_workers 1"):
        run_study(path, validate=validate, pipeline=PIPELINE, progress=False, max_workers=2)
    ray.init(num_gpus=1, num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    try:
        assert run_study(path, validate=validate, pipeline=PIPELINE, progress=False, executor="ray").ok
    finally:
        ray.shutdown()
    assert {row["eval/gpus"] for row in table(path)} == {1.0}


def test_a_cuda_stage_without_a_gpu_request_is_refused(tmp_path):
    from rlhfscale.pipeline import GRAPH
    from rlhfscale.study.commands import validate as run_config

    path = tmp_path / "study.yaml"
    path.write_text(json.dumps({"name": "gpu", "base": {"device": "cuda"}, "resources": {"rl": {"num_gpus": 1}}}))
    with pytest.raises(BadInput, match=r"resources.sft.num_gpus: expected at least 1 for device 'cuda'"):
        run_study(path, validate=run_config, pipeline=GRAPH, progress=False)
    assert not (tmp_path / "store").exists()


def test_index_rows_match_the_artifacts(tmp_path):
    path = spec(tmp_path / "study")
    assert run(path).ok
    store = Store(path.parent / "store")
    with sqlite3.connect(store.index_path) as db:
        indexed = {(s, k) for s, k in db.execute("SELECT stage, key FROM stages WHERE status = 'done'")}
    on_disk = {(p.parent.name, p.name) for p in store.root.glob("*/*") if p.is_dir() and not p.name.startswith(".")}
    assert indexed == on_disk and all(store.verify(*node) is None for node in on_disk)
