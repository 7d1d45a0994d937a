"""Bad input to any command: one line naming the key or file, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlhfscale.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["sft", "rl.lrr=3"], "rl.lrr: unknown key"),
        (["sft", "sft.steps=many"], "sft.steps: expected"),
        (["sft", "--config", "nope.yaml"], "nope.yaml: config file not found"),
        (["rl", "--sft", "no_such_dir"], "no_such_dir: expected an sft run directory"),
        (["eval", "--policy", "no_such_dir"], "no_such_dir: expected a Hugging Face model folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, fragment):
    r = run_cli(*args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_command_is_a_usage_error():
    r = run_cli("no-such-command")
    assert r.returncode == 2


def test_bench_rollout_refuses_an_unknown_backend_in_one_line():
    r = run_cli("bench", "rollout", "--backend", "sglang")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "bench rollout --backend: expected one of native, vllm, found 'sglang'" in r.stderr


@pytest.mark.parametrize("command", ["rl", "rollout"])
def test_bench_refuses_a_negative_thread_count_in_one_line(command):
    r = run_cli("bench", command, "--threads", "-1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"bench {command} --threads: expected 0 (leave as set) or a positive count, found -1" in r.stderr


def test_bench_rollout_without_vllm_says_how_to_get_it():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed (tests/vllm_backend covers the backend)")
    except ImportError:
        pass
    r = run_cli("bench", "rollout", "--backend", "vllm", "--batch", "2", "--new-tokens", "2")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "sampling.backend: expected the vllm package" in r.stderr and "make test-vllm" in r.stderr
