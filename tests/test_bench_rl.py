"""`bench rl`'s harness without TRL: the thread count both sides run with, and the fractions of the peak."""

import json

import pytest
import torch
from typer.testing import CliRunner

from rlhfscale.bench import rl as bench_rl
from rlhfscale.cli import app


def test_both_sides_run_with_the_threads_asked_for_and_the_count_is_restored(monkeypatch):
    seen, peaks = [], iter([100.0, 200.0])  # the peak at the start, then a faster one at the end

    def compare(size, **kwargs):
        seen.append(torch.get_num_threads())
        print({"loss": "0"})  # as TRL's trainer logs: not on stdout, which carries the report alone
        return {"size": size, "ours_peak_frac": 0.5, "ours_peak_frac_run": 0.4, "trl_peak_frac": 0.2}

    monkeypatch.setattr(bench_rl, "compare", compare)
    monkeypatch.setattr(bench_rl, "measure_matmul_peak", lambda: next(peaks))
    before = torch.get_num_threads()
    result = CliRunner().invoke(app, ["bench", "rl", "--threads", "2", "--sizes", "micro,tiny", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert seen == [2, 2] and out["threads"] == 2 and torch.get_num_threads() == before
    # every fraction is re-expressed against the best peak seen: measured at 100, the best was 200
    assert (out["ours_peak_frac"], out["tiny"]["trl_peak_frac"], out["peak_flops"]) == (0.25, 0.1, 200.0)


def test_the_ratio_compares_each_sides_best_round_and_each_round_is_reported(monkeypatch):
    ours = iter([bench_rl.Timing(0.2, 100, 10, 80, 12), bench_rl.Timing(0.1, 100, 10, 80, 12)])
    trl = iter([bench_rl.Timing(0.5, 100, 10), bench_rl.Timing(0.6, 100, 10)])
    monkeypatch.setattr(bench_rl, "time_ours", lambda setup: next(ours))
    monkeypatch.setattr(bench_rl, "time_trl", lambda setup: next(trl))
    out = bench_rl.compare("nano", prompts=2, n=2, new_tokens=4, lr=1e-5, beta=0.0, warmup=1, steps=1, rounds=2,
                           bf16=False, trl_bf16=False, peak=1e9)
    # the best rounds are ours 0.1 s (the second) and TRL's 0.5 s (the first): 5x; round by round 2.5x and 6x
    assert out["ratio_vs_trl"] == 0.5 / 0.1
    assert out["ratio_vs_trl_rounds"] == [0.5 / 0.2, 0.6 / 0.1]
    assert (out["ours_step_s"], out["trl_step_s"]) == (0.1, 0.5)


def test_the_fraction_run_leaves_out_the_prefills_skipped_products(monkeypatch):
    """nano: N = 2 layers of (4·64² + 3·64·192 + 2·64) + 64 = 106816 non-embedding parameters; a prefill runs its
    last layer's q and o projections, post-attention norm and MLP (2·64² + 3·64·192 + 64 = 45120) on each prompt's
    last token only. 80 tokens run, 12 of them the 2 distinct prompts': 10 prompt tokens skip those products."""
    monkeypatch.setattr(bench_rl, "time_ours", lambda setup: bench_rl.Timing(0.1, 100, 10, 80, 12))
    monkeypatch.setattr(bench_rl, "time_trl", lambda setup: bench_rl.Timing(0.5, 100, 10))
    out = bench_rl.compare("nano", prompts=2, n=2, new_tokens=4, lr=1e-5, beta=0.0, warmup=1, steps=1, rounds=1,
                           bf16=False, trl_bf16=False, peak=1e9)
    assert out["params"] == 106816
    assert out["ours_peak_frac_run"] == pytest.approx((8 * 106816 * 80 - 2 * 45120 * 10) / 0.1 / 1e9, rel=1e-12)
    assert out["ours_peak_frac"] == pytest.approx(8 * 106816 * 100 / 0.1 / 1e9, rel=1e-12)  # every copy charged
