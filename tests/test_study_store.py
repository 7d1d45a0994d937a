"""Content-addressed keys, atomic artifact publication, the SQLite index and the run lock."""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3

import pytest
from toy_stages import PIPELINE, validate

from rlhfscale.errors import BadInput
from rlhfscale.study.keys import StageDef, plan_nodes, project, stage_key, trial_keys
from rlhfscale.study.store import Store, publish


def test_stage_key_is_sha256_of_canonical_json():
    text = '{"config":{"rm":{"size":"tiny"},"seed":1},"inputs":{"sft":"abc"},"stage":"rm","threads":1,"version":"2"}'
    expected = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert stage_key("rm", {"seed": 1, "rm": {"size": "tiny"}}, {"sft": "abc"}, "2") == expected
    assert stage_key("rm", {"rm": {"size": "tiny"}, "seed": 1}, {"sft": "abc"}, "2") == expected
    assert stage_key("rm", {"rm": {"size": "tiny"}, "seed": 1}, {"sft": "abd"}, "2") != expected
    assert stage_key("rm", {"rm": {"size": "tiny"}, "seed": 1}, {"sft": "abc"}, "3") != expected
    assert stage_key("rm", {"rm": {"size": "tiny"}, "seed": 1}, {"sft": "abc"}, "2", threads=2) != expected


def test_project_keeps_exactly_the_settings_read_nested():
    config = {"rm": {"size": "tiny", "lr": 0.1}, "sft": {"lr": 0.2, "steps": 3}, "seed": 4}
    assert project(config, ["rm.size", "seed"]) == {"rm": {"size": "tiny"}, "seed": 4}
    assert project(config, ["sft.lr", "sft"]) == {"sft": {"lr": 0.2, "steps": 3}}  # the section wins
    with pytest.raises(KeyError, match="rm.depth"):
        project(config, ["rm.depth"])


def test_changing_upstream_config_changes_exactly_the_downstream_keys():
    base = trial_keys(validate({}), PIPELINE)
    rm_changed = trial_keys(validate({"rm": {"size": "tiny"}}), PIPELINE)
    sft_changed = trial_keys(validate({"sft": {"lr": 0.25}}), PIPELINE)
    assert list(base) == ["data", "sft", "rm", "rl", "eval"]
    assert base == trial_keys(validate({}), PIPELINE)
    assert [s for s in base if rm_changed[s] != base[s]] == ["rm", "rl", "eval"]
    assert [s for s in base if sft_changed[s] != base[s]] == ["sft", "rm", "rl", "eval"]


def test_disabled_stage_is_left_out_and_shared_keys_are_planned_once():
    configs = [validate({"rm": {"size": size}, "eval": {"enabled": size != "small"}}) for size in ("micro", "small")]
    per_trial, nodes = plan_nodes(configs, PIPELINE)
    assert "eval" in per_trial[0] and "eval" not in per_trial[1]
    assert [node.stage.name for node in nodes] == ["data", "sft", "rm", "rm", "rl", "rl", "eval"]
    assert nodes[2].input_keys == {"data": per_trial[0]["data"], "sft": per_trial[0]["sft"]}


def test_pipeline_order_is_checked():
    late = [StageDef(name="rm", fn="m:f", inputs=["sft"]), StageDef(name="sft", fn="m:f")]
    with pytest.raises(ValueError, match="'rm' needs \\['sft'\\]"):
        plan_nodes([{}], late)
    with pytest.raises(ValueError, match="module:function"):
        StageDef(name="x", fn="no_colon")


def test_publish_is_all_or_nothing(tmp_path):
    store = Store(tmp_path)
    tmp = store.new_tmp_dir("sft", "k1")
    (tmp / "model.json").write_text("1")
    assert not store.has_artifact("sft", "k1")
    assert publish(tmp, store.artifact_dir("sft", "k1"))
    assert (store.artifact_dir("sft", "k1") / "model.json").read_text() == "1"
    again = store.new_tmp_dir("sft", "k1")
    (again / "model.json").write_text("2")
    assert not publish(again, store.artifact_dir("sft", "k1"))
    assert (store.artifact_dir("sft", "k1") / "model.json").read_text() == "1"
    assert not again.exists()
    store.new_tmp_dir("rm", "k2")
    assert store.remove_stale_tmp() == 1
    assert list(tmp_path.glob("*/.tmp-*")) == []


def test_index_counts_attempts_and_completions(tmp_path):
    store = Store(tmp_path)
    store.record_trials("s", [("t1", {"seed": 0}, {"data": "d1", "sft": "s1"}), ("t2", {"seed": 1}, {"data": "d1"})])
    store.mark_running("sft", "s1")
    store.mark_ended("sft", "s1", "failed", "ValueError: boom", 0.5)
    store.mark_running("sft", "s1")
    store.mark_done("sft", "s1", {"sft/loss": 0.25}, 1.5, completed=True)
    store.mark_running("data", "d1")
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        linked = db.execute("SELECT trial, stage, key FROM trial_stages ORDER BY trial, stage").fetchall()
        assert linked == [("t1", "data", "d1"), ("t1", "sft", "s1"), ("t2", "data", "d1")]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    rows = store.stage_rows()
    assert set(rows) == {("data", "d1"), ("sft", "s1")}
    sft = rows["sft", "s1"]
    assert (sft["status"], sft["attempts"], sft["completions"]) == ("done", 2, 1)
    assert sft["error"] is None and sft["wall_s"] == 1.5
    assert store.metrics() == {("sft", "s1"): {"sft/loss": 0.25}}
    store.reset_running()
    assert store.stage_rows()["data", "d1"]["status"] == "pending"
    # killed between publishing and indexing: the artifact found later counts as its one completion
    store.record_done("data", "d1", {}, None)
    store.record_done("data", "d1", {}, None)
    store.record_done("sft", "s1", {"sft/loss": 0.25}, 1.5)
    rows = store.stage_rows()
    assert (rows["data", "d1"]["completions"], rows["sft", "s1"]["completions"]) == (1, 1)


def _hammer(root: str, worker: int) -> None:
    store = Store(root)
    for i in range(40):
        store.mark_running("rm", "k")
        store.mark_done("rm", f"k{worker}-{i}", {"x": float(i)}, 0.0, completed=True)


def test_index_is_safe_across_processes(tmp_path):
    Store(tmp_path).record_trials("s", [("t", {}, {"rm": "k"})])
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_hammer, args=(str(tmp_path), w)) for w in range(2)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(60)
    assert [proc.exitcode for proc in workers] == [0, 0]
    assert Store(tmp_path).stage_rows()["rm", "k"]["attempts"] == 80
    assert len(Store(tmp_path).metrics()) == 80


def test_run_lock_admits_one_run(tmp_path):
    store = Store(tmp_path)
    assert not store.run_active()
    with store.run_lock():
        assert Store(tmp_path).run_active()
        with pytest.raises(BadInput, match="another study run"), Store(tmp_path).run_lock():
            pass
    assert not store.run_active()
