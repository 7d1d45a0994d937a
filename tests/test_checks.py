"""Settings that would do nothing are refused before anything is written: one line, exit 2."""

from __future__ import annotations

import sys

import pytest

from rlhfscale import checks, cli
from rlhfscale.config import RunConfig
from rlhfscale.contract import view
from rlhfscale.pipeline import STAGES

REFUSED = [
    (["rl.kl_target=6"], "rl.kl_target=6.0: does nothing here: the multiplicative controller"),
    (["rl.gamma=0.9"], "rl.gamma=0.9: does nothing here: grpo sums no discounted returns"),
    (["rl.gae_lambda=0.9"], "rl.gae_lambda=0.9: does nothing here: only GAE reads it"),
    (["rl.algorithm=rloo", "rl.critic_lr=0.01"], "rl.critic_lr=0.01: does nothing here: rloo trains no critic"),
    (["rl.clip_coef_value=0.5"], "rl.clip_coef_value=0.5: does nothing here"),
    (["sampling.temperature=0"], "sampling.temperature=0: RL needs sampled responses"),
    (["rl.prompts_per_step=2", "rl.n_samples=2", "rl.minibatches=5"], "rl.minibatches=5: expected at most the 4 responses"),
    (["rl.prompts_per_step=2", "rl.loss_agg=group", "rl.minibatches=3"], "rl.minibatches=3: expected at most the 2 groups"),
    (["rl.shaping=normalize"], "rl.shaping=normalize: does nothing here: batch normalization is an affine map"),
    (["rl.shaping=normalize", "rl.norm_mode=running"], "running normalization is an affine map"),
    (["rl.shaping=asymmetric"], "rl.shaping=asymmetric: does nothing here: shrinking maps 0/1 rewards"),
    (["rl.algorithm=reinforce++", "rl.shaping=normalize"], "reinforce++'s batch whitening of the returns undoes"),
    (["rl.algorithm=dr_grpo", "rl.norm_std=true"], "rl.norm_std=True: does nothing here: dr_grpo fixes it"),
    (["rl.norm_mode=group"], "rl.norm_mode=group: does nothing here: it only picks the statistics"),
    (["rl.prm_agg=last"], "rl.prm_agg=last: does nothing here: only an aggregated prm reward reads it"),
    (["rl.lora.alpha=32"], "rl.lora.alpha=32.0: does nothing here: no adapters with rl.lora.rank=0; set rl.lora.rank"),
    (["rl.lora.target_modules=[q_proj]"], "rl.lora.target_modules=['q_proj']: does nothing here: no adapters"),
    (["rl.lora.rank=8", "sampling.backend=vllm"], "rl.lora.rank=8: the vLLM rollout engine is pushed whole weights"),
]


def main(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    monkeypatch.setattr(sys, "argv", ["rlhfscale", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("overrides, fragment", REFUSED)
def test_rl_refuses_a_setting_that_would_do_nothing(monkeypatch, capsys, tmp_path, overrides, fragment):
    code, lines = main(monkeypatch, capsys, "rl", *overrides, "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the SFT it would have run first


def test_refusals_follow_the_combination_not_the_setting():
    """The same settings pass where they act: KL target with a coefficient, GAE with PPO, shaping under PPO and
    under Dr. GRPO (no std division), shrinking of RM scores."""
    ok = [{"rl": {"kl_coef": 0.1, "kl_target": 6.0}}, {"rl": {"algorithm": "ppo", "gae_lambda": 0.9, "gamma": 0.99}},
          {"rl": {"algorithm": "reinforce++", "gamma": 0.9}}, {"rl": {"algorithm": "ppo", "shaping": "normalize"}},
          {"rl": {"algorithm": "dr_grpo", "shaping": "normalize"}},
          {"rl": {"shaping": "asymmetric", "reward": {"orm": 1.0}}}, {"rl": {"clip_coef_high": 0.28}},
          {"rl": {"algorithm": "reinforce++", "shaping": "normalize", "kl_coef": 0.05}},
          {"rl": {"algorithm": "reinforce++", "shaping": "normalize", "norm_mode": "group"}}]
    for overrides in ok:
        config = RunConfig.model_validate(overrides).model_dump(mode="json")
        assert isinstance(checks.rl(view(STAGES["rl"], config).model_dump(mode="json")), list), overrides


def test_a_group_method_with_one_sample_is_warned_not_refused():
    config = RunConfig.model_validate({"rl": {"n_samples": 1}}).model_dump(mode="json")
    warnings = checks.rl(config)
    assert warnings == ["rl.n_samples=1 forms no groups; grpo uses the batch mean as the baseline"]


def test_an_unknown_algorithm_lists_the_registered_ones(monkeypatch, capsys, tmp_path):
    code, lines = main(monkeypatch, capsys, "rl", "rl.algorithm=ppo2", "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1
    assert "rl.algorithm: expected one of ppo, grpo, rloo, reinforce++, dr_grpo, found 'ppo2'" in lines[0]


def test_rm_refuses_settings_its_kind_ignores(monkeypatch, capsys, tmp_path):
    code, lines = main(monkeypatch, capsys, "train-rm", "rm.kind=orm", "rm.labels=gold", "--out", str(tmp_path / "r"))
    assert code == 2 and len(lines) == 1 and "rm.labels=gold: does nothing here: only a PRM" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_rm_refuses_lora_settings_without_adapters(monkeypatch, capsys, tmp_path):
    code, lines = main(monkeypatch, capsys, "train-rm", "rm.lora.dropout=0.1", "--out", str(tmp_path / "r"))
    assert code == 2 and len(lines) == 1 and "rm.lora.dropout=0.1: does nothing here: no adapters with rm.lora.rank=0" \
        in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_lora_without_peft_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    config = RunConfig.model_validate({"rl": {"lora": {"rank": 8}}}).model_dump(mode="json")
    with pytest.raises(Exception, match=r"rl.lora.rank=8: expected the peft package, found it not installed"):
        checks.rl(config)


def test_a_full_disk_is_one_line_and_leaves_the_earlier_output_whole(monkeypatch, capsys, tmp_path):
    import errno

    from rlhfscale.stages import sft as sft_stage

    out = tmp_path / "run"
    args = ["sft", "policy.size=nano", "sft.steps=2", "sft.n_examples=16", "eval.n_prompts=4", "--out", str(out)]
    assert main(monkeypatch, capsys, *args)[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(model, tok, folder):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")  # what a full disk leaves: a config without weights
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr(sft_stage, "save_policy", disk_full)
    code, lines = main(monkeypatch, capsys, *args[:-2], "sft.lr=1e-3", "--out", str(out))
    assert code == 1 and len(lines) == 1 and "model.safetensors: no space left on device" in lines[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no half-written folder beside it


def test_a_damaged_input_run_is_refused(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sft"
    assert main(monkeypatch, capsys, "sft", "policy.size=nano", "sft.steps=1", "sft.n_examples=8", "eval.n_prompts=2",
                "--out", str(out))[0] == 0
    weights = out / "policy" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, lines = main(monkeypatch, capsys, "rl", "--sft", str(out), "--out", str(tmp_path / "rl"))
    assert code == 2 and len(lines) == 1 and "policy/model.safetensors: expected" in lines[0]
    assert not (tmp_path / "rl").exists()


def test_ctrl_c_on_a_study_says_it_can_be_resumed(monkeypatch, capsys, tmp_path):
    from rlhfscale.study import commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run", interrupted)
    code, lines = main(monkeypatch, capsys, "study", "run", str(tmp_path / "study.yaml"))
    assert code == 130 and len(lines) == 1
    assert "interrupted" in lines[0] and "run `rlhfscale study run" in lines[0] and "again to resume" in lines[0]


def test_the_vllm_backend_without_vllm_is_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    code, lines = main(monkeypatch, capsys, "rl", "sampling.backend=vllm", "--out", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and "sampling.backend=vllm: expected the vllm package" in lines[0]
    assert list(tmp_path.iterdir()) == []
