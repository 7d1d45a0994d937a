"""`train-rm`, `label-steps` and `bon` on the command line: bad input is one line and exit 2."""

import json
import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rlhfscale.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def bad_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good, bad = {"prompt": "q\n", "chosen": "a", "rejected": "b"}, {"prompt": "q\n", "chosen": None, "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train-rm", "rm.kindd=orm"], "rm.kindd: unknown key"),
        (["label-steps", "data.mc_rollouts=many"], "data.mc_rollouts: expected"),
        (["bon", "rm.aggregation=median"], "rm.aggregation: expected"),
        (["train-rm", "--pairs", "missing.jsonl"], "missing.jsonl: expected a jsonl file, found no such file"),
        (["train-rm", "--pairs", "BAD_PAIRS"], "pairs.jsonl line 2: field 'chosen': expected a string"),
        (["label-steps", "--sft", "no_such_dir"], "no_such_dir: expected an sft run directory with policy/config.json"),
        (["label-steps"], "label-steps: expected a policy to complete step prefixes"),
        (["bon", "--rm", "no_such_dir"], "no_such_dir: expected a reward-model run directory or folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, bad_pairs, args, fragment):
    args = [bad_pairs if a == "BAD_PAIRS" else a for a in args]
    r = run_cli(*args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_train_rm_runs_sample_label_rm_and_writes_a_run_directory(tmp_path):
    overrides = ["threads=1", "task.name=chat", "data.source=corrupt", "data.prompts=16", "data.heldout_prompts=8",
                 "rm.size=nano", "rm.steps=5", "rm.batch_size=8"]
    r = run_cli("train-rm", *overrides, "--out", str(tmp_path / "rm"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["rm/pairs"] > 0 and 0.0 <= summary["rm/pair_acc"] <= 1.0 and summary["flops/rm"] > 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "rm/config.json", "rm/model.safetensors",
                 "sample/train.jsonl", "label/pairs.jsonl"):
        assert (tmp_path / "rm" / name).is_file(), name


def test_lm_coef_on_a_backbone_without_tied_embeddings_exits_2(tmp_path):
    from transformers import LlamaForCausalLM

    from rlhfscale.models.io import new_policy, save_policy
    policy, tok = new_policy("nano", 0, 64)
    policy.config.tie_word_embeddings = False
    save_policy(LlamaForCausalLM(policy.config), tok, tmp_path / "untied")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q\n", "chosen": "a", "rejected": "b"}) + "\n")
    r = run_cli("train-rm", "rm.lm_coef=1", f"rm.init_path={tmp_path / 'untied'}", "--pairs", str(pairs),
                "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "rm.lm_coef: expected a backbone with tied input and output embeddings" in lines[0]
    assert not (tmp_path / "run" / "rm").exists()
