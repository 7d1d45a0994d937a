"""The prefs task: chat prompts from HH-RLHF / UltraFeedback-shaped preference files, with no verifier."""

import gzip
import json
import math

import pytest

from rlhfscale import checks
from rlhfscale.config import RunConfig, load_config
from rlhfscale.errors import BadInput
from rlhfscale.tasks import make_task, verifiable
from rlhfscale.tasks.prefs import PrefsTask

HH = [
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: apple",
     "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: no"},
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: a pear",
     "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant: rock"},
    {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
]
ULTRAFEEDBACK = [
    {"prompt": "say hi", "chosen": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}],
     "rejected": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "no"}]},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
]


def write(path, rows, compress=False):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_prompts_of_hh_and_ultrafeedback_files_one_per_distinct_prompt_disjoint_splits(tmp_path):
    task = PrefsTask(write(tmp_path / "hh.jsonl.gz", HH, compress=True), write(tmp_path / "uf.jsonl", ULTRAFEEDBACK))
    train = task.examples("train", 10)
    # HH: the dialogue up to the last Assistant turn is the prompt; two pairs share the first one
    assert [e.prompt for e in train] == ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: name a fruit\n\nAssistant:",
                                         "\n\nHuman: 2+2?\n\nAssistant:"]
    assert [e.solution for e in train] == [" apple", " 4"]  # the first pair's chosen response
    test = task.examples("test", 10)
    assert [(e.prompt, e.solution) for e in test] == [("user: say hi\nassistant: ", "hi"), ("2+2?", "4")]
    assert task.examples("train", 1) == train[:1]
    assert task.max_solution_chars() == len(" apple")
    # a train prompt that is also a test prompt is dropped from train
    both = PrefsTask(write(tmp_path / "a.jsonl", ULTRAFEEDBACK + [{"prompt": "new", "chosen": "x", "rejected": "y"}]),
                     tmp_path / "uf.jsonl")
    assert [e.prompt for e in both.examples("train", 10)] == ["new"]


def test_no_verifier_no_score(tmp_path):
    path = write(tmp_path / "uf.jsonl", ULTRAFEEDBACK)
    task = make_task(RunConfig.model_validate({"task": {"name": "prefs", "train_path": str(path),
                                                        "test_path": str(path)}}).task)
    assert not verifiable(task) and verifiable(make_task(RunConfig().task))
    example = task.examples("test", 1)[0]
    assert math.isnan(task.score(example, example.solution))  # never a number that could pass for a gold score
    assert task.extract_answer("4") is None


def test_bad_input_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ULTRAFEEDBACK[1]) + "\n" + json.dumps({"chosen": "no dialogue", "rejected": "x"}) + "\n")
    with pytest.raises(BadInput, match=r"bad.jsonl line 2: expected a 'prompt' field, chat messages, or an HH-RLHF"):
        PrefsTask(path, path)
    with pytest.raises(BadInput, match=r"task.train_path: expected the problem files of task prefs"):
        load_config(RunConfig, overrides=["task.name=prefs"])
    with pytest.raises(BadInput, match=r"task.train_path=x: does nothing with task chat"):
        load_config(RunConfig, overrides=["task.name=chat", "task.train_path=x"])


def test_rule_reward_and_verifierless_eval_tasks_are_refused(tmp_path):
    paths = {"train_path": "train.jsonl", "test_path": "test.jsonl"}
    prefs = {"task": {"name": "prefs", **paths}}
    with pytest.raises(BadInput, match=r"^rl.reward.rule: task prefs has no verifier to reward with; .*"
                                       r"rl.reward.rule=0 rl.reward.orm=1$"):
        checks.rl(RunConfig.model_validate(prefs).model_dump(mode="json"))
    assert checks.rl(RunConfig.model_validate({**prefs, "rl": {"reward": {"rule": 0, "orm": 1}}}).model_dump()) == []
    with pytest.raises(BadInput, match=r"^eval.tasks.p: task prefs has no verifier to score pass@1 with"):
        checks.rl(RunConfig.model_validate({"eval": {"tasks": {"p": {"name": "prefs", **paths}}}}).model_dump())


def test_a_study_cannot_label_samples_of_a_task_without_a_verifier():
    """rm.enabled would sample the policy and label its responses with the verifier prefs does not have."""
    prefs = RunConfig.model_validate({"task": {"name": "prefs", "train_path": "t.jsonl", "test_path": "t.jsonl"}})
    with pytest.raises(BadInput, match=r"^task.name=prefs: rm.enabled labels sampled responses with the task's "
                                       r"verifier and this task has none; .*rlhfscale train-rm --data"):
        checks.label(prefs.model_dump(mode="json"))
    assert checks.label(RunConfig().model_dump(mode="json")) == []
