"""`rlhfscale study run|status|report` on a tiny real pipeline (nano policy, a few steps)."""

import json
import subprocess
import sys

import pytest

from rlhfscale.analysis.claims import CLAIMS

SPEC = """\
name: tiny
base:
  policy: {size: nano}
  sft: {steps: 8, batch_size: 8, n_examples: 64}
  rl: {steps: 2, prompts_per_step: 2, n_samples: 2, eval_every: 1}
  eval: {n_prompts: 8, k: 2}
axes:
  rl.n_samples: [2, 4]
seeds: [0]
"""


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "rlhfscale.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "spec.yaml").write_text(SPEC)
    first = cli("study", "run", "spec.yaml", "--out", "out", "--max-workers", "1", cwd=root)
    assert first.returncode == 0, first.stderr
    return root, first


def test_run_shares_the_sft_stage_and_writes_the_report(study):
    root, first = study
    assert "3 stages ran, 0 already done" in first.stdout  # one sft shared by both trials, two rl
    claims = json.loads((root / "out/report/claims.json").read_text())
    assert [c["id"] for c in claims] == list(CLAIMS)
    assert all(c["verdict"] in {"supported", "not supported", "inconclusive", "not tested"} for c in claims)
    assert all({"id", "verdict", "effect", "ci_low", "ci_high", "n_seeds"} <= set(c) for c in claims)
    assert "report/index.html" in first.stdout
    csv = (root / "out/report/metrics.csv").read_text().splitlines()
    assert "eval/pass@1" in csv[0] and "flops/total" in csv[0]
    assert len(csv) > 3  # curve rows: one per eval point of each trial


def test_second_run_does_nothing(study):
    root, _ = study
    again = cli("study", "run", "spec.yaml", "--out", "out", cwd=root)
    assert again.returncode == 0, again.stderr
    assert "0 stages ran, 3 already done" in again.stdout


def test_status_lists_every_stage_of_every_trial(study):
    root, _ = study
    st = cli("study", "status", "spec.yaml", "--out", "out", cwd=root)
    assert st.returncode == 0, st.stderr
    # 2 trials x 7 pipeline stages: sft and rl ran, the reward-model branch is switched off
    assert "4 done" in st.stdout and "10 skipped" in st.stdout, st.stdout
    assert st.stdout.count("rl.n_samples=") == 14


def test_bad_spec_names_the_line_and_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nbase:\n  rl:\n    stepz: 3\n")
    r = cli("study", "run", "bad.yaml", "--out", "out", cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "bad.yaml line 4" in line and "rl.stepz" in line, line
