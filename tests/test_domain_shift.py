"""A trial evaluates its policy on other tasks too (eval.tasks): generalization across task variants and domains."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfscale.config import RunConfig, load_config
from rlhfscale.errors import BadInput
from rlhfscale.stages import rl, sft
from rlhfscale.tasks import TASKS, make_task, score_all

TINY = {"policy": {"size": "nano", "max_len": 96}, "eval": {"n_prompts": 8, "k": 1},
        "sft": {"steps": 3, "batch_size": 8, "n_examples": 32, "warmup": 1}}


def test_rl_reports_pass_at_1_on_every_shifted_task_before_and_after(tmp_path):
    cfg = RunConfig.model_validate({**TINY, "eval": {**TINY["eval"], "tasks": {
        "ood": {"name": "arithmetic", "n_ops": 3}, "code": {"name": "code-mini"}}},
        "rl": {"steps": 1, "prompts_per_step": 4, "n_samples": 2, "eval_every": 0}})
    sft.run(cfg, {}, tmp_path / "sft")
    summary = rl.run(cfg, {"sft": str(tmp_path / "sft")}, tmp_path / "rl")
    for label in ("ood", "code"):
        for when in ("before", "after"):
            assert 0.0 <= summary[f"eval/pass@1_{label}_{when}"] <= 1.0


def test_every_registered_task_builds_scores_its_gold_solutions_and_refuses_settings_it_ignores(tmp_path):
    folder = Path(__file__).parent / "data"
    data = {"math": str(folder / "gsm8k_sample.jsonl"), "code": str(folder / "humaneval_sample.jsonl"),
            "prefs": str(tmp_path / "pairs.jsonl")}
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "say hi", "chosen": "hi", "rejected": "no"}\n')
    for name in TASKS:
        paths = {"train_path": data[name], "test_path": data[name]} if name in data else {}
        cfg = RunConfig.model_validate({"task": {"name": name, **paths}}).task
        task = make_task(cfg)
        examples = task.examples("test", 4) or task.examples("train", 4)
        if name not in ("chat", "code", "prefs"):  # chat's gold is a rating; file code problems carry their own
            # solutions; prefs has no verifier
            assert score_all(task, examples, [e.solution for e in examples]) == [1.0] * len(examples), name
    with pytest.raises(BadInput, match="task.first_digits=3: does nothing with task code-mini"):
        load_config(RunConfig, overrides=["task.name=code-mini", "task.first_digits=3"])
    with pytest.raises(BadInput, match="eval.tasks: expected labels of lowercase letters, digits and _, found .Bad."):
        load_config(RunConfig, overrides=["eval.tasks.Bad.name=chat"])
