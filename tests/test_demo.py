"""`rlhfscale demo` on a smaller budget: SFT to a weak start, GRPO lifts held-out greedy accuracy, and the run
directory and the printed table agree."""

import json

import pytest

from rlhfscale.cli import DEMO_DEFAULTS
from rlhfscale.config import RunConfig, merge
from rlhfscale.stages import demo


def test_smaller_demo_raises_held_out_pass_at_1(tmp_path, capsys):
    """The demo's own settings with 30 RL steps instead of 70 (measured with 2 threads: 0.50 -> 0.87 after 70
    steps, about +0.12 after 25, from 0.33 and 0.68 starts as well)."""
    cfg = RunConfig.model_validate(merge(DEMO_DEFAULTS, {"rl": {"steps": 30, "eval_every": 15},
                                                         "eval": {"n_prompts": 100, "k": 1}}))
    summary = demo.run(cfg, tmp_path)
    before, after = summary["eval/pass@1_before"], summary["eval/pass@1_after"]
    assert after > before + 0.05, (before, after)

    assert json.loads((tmp_path / "summary.json").read_text()) == pytest.approx(summary)
    sft_summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert before == sft_summary["eval/pass@1"]  # the RL stage re-measures the policy SFT saved
    rl_rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl_rows if "eval/pass@1" in r] == [0, 15, 30]
    assert rl_rows[-1]["eval/pass@1"] == after
    for run in ("sft", "rl"):
        assert (tmp_path / run / "config.yaml").is_file() and (tmp_path / run / "policy" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "after SFT" in out and "after GRPO" in out and f"{before:.3f}" in out and f"{after:.3f}" in out
