"""`rlhfscale demo` on a small budget: SFT learns, RL runs from it, the run directory and the table agree."""

import json

import pytest

from rlhfscale.config import RunConfig
from rlhfscale.stages import demo


def test_small_demo_writes_its_run_directory_and_prints_the_table(tmp_path, capsys):
    cfg = RunConfig.model_validate({
        "task": {"n_ops": 1}, "eval": {"n_prompts": 48, "k": 2},
        "sft": {"steps": 300, "batch_size": 64, "lr": 3e-3, "warmup": 10, "n_examples": 1440},
        "rl": {"steps": 4, "prompts_per_step": 8, "n_samples": 4, "eval_every": 2},
    })  # fmt: skip
    summary = demo.run(cfg, tmp_path)

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == pytest.approx(summary)
    sft_summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["eval/pass@1_before"] == sft_summary["eval/pass@1"]  # the RL stage re-measures the same policy
    assert summary["eval/pass@1_before"] > 0.3  # SFT learned one-operation arithmetic (measured 0.72 on 96)
    assert 0 < sft_summary["wall_s"] < summary["wall_s"]
    rl_rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl_rows if "eval/pass@1" in r] == [0, 2, 4]
    assert rl_rows[-1]["eval/pass@1"] == summary["eval/pass@1_after"]
    for run in ("sft", "rl"):
        assert (tmp_path / run / "config.yaml").is_file() and (tmp_path / run / "policy" / "config.json").is_file()

    out = capsys.readouterr().out
    assert "after SFT" in out and "after GRPO" in out
    assert f"{summary['eval/pass@1_before']:.3f}" in out and f"{summary['eval/pass@1_after']:.3f}" in out
