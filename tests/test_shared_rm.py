"""One reward model trained once and shared by the RL runs of every policy size (finding 6 as the paper ran it):
with ``data.source: rm_base`` the RM's data are sampled (and Monte-Carlo labelled) by the RM's own SFT start, so
the rm stage's key does not depend on ``policy``; with the default the RM is keyed by (and retrained for) each
policy. Keys only: nothing runs."""

from __future__ import annotations

from rlhfscale.config import RunConfig
from rlhfscale.pipeline import GRAPH
from rlhfscale.study.keys import plan_nodes, trial_keys


def trial(policy_size: str, source: str, **rm) -> dict:
    config = RunConfig().model_dump(mode="json")
    config["policy"]["size"] = policy_size
    config["data"]["source"] = source
    config["rm"] |= {"enabled": True, **rm}
    config["rl"]["reward"] = {"orm": 1.0}
    return config


def test_rm_base_as_the_data_policy_shares_one_rm_across_policy_sizes():
    small, large = trial_keys(trial("nano", "rm_base"), GRAPH), trial_keys(trial("micro", "rm_base"), GRAPH)
    assert small["sft"] != large["sft"] and small["rl"] != large["rl"]
    for stage in ("rm_base", "sample", "label", "rm"):
        assert small[stage] == large[stage], stage
    assert small["bon"] != large["bon"]  # Best-of-N still samples the trial's own policy


def test_the_default_samples_the_trials_policy_and_keys_the_rm_by_it():
    small, large = trial_keys(trial("nano", "policy"), GRAPH), trial_keys(trial("micro", "policy"), GRAPH)
    assert small["rm_base"] == large["rm_base"]
    for stage in ("sample", "label", "rm"):
        assert small[stage] != large[stage], stage


def test_the_sample_and_label_nodes_take_exactly_the_policy_they_sample_from():
    _, nodes = plan_nodes([trial("nano", "rm_base"), trial("micro", "policy")], GRAPH)
    inputs = {(n.stage.name, tuple(sorted(n.input_keys))) for n in nodes if n.stage.name in ("sample", "label")}
    assert inputs == {("sample", ("rm_base",)), ("label", ("rm_base", "sample")),
                      ("sample", ("sft",)), ("label", ("sample", "sft"))}
    assert sum(n.stage.name == "rm" for n in nodes) == 2


def test_keys_of_the_default_data_source_are_unchanged_by_the_switch():
    """The sft input joins sample and label exactly as before for data.source policy (no artifact invalidated)."""
    keys = trial_keys(trial("nano", "policy"), GRAPH)
    _, nodes = plan_nodes([trial("nano", "policy")], GRAPH)
    sample = next(n for n in nodes if n.stage.name == "sample")
    assert sample.input_keys == {"sft": keys["sft"]}


def test_sampling_without_a_policy_is_one_line_of_bad_input(tmp_path):
    """By hand, data.source=rm_base without an rm_base run (or sft) names what is missing instead of a KeyError."""
    import pytest

    from rlhfscale.errors import BadInput
    from rlhfscale.stages import entry

    config = RunConfig.model_validate({"rm": {"enabled": True}, "data": {"source": "rm_base"}}).model_dump(mode="json")
    with pytest.raises(BadInput, match=r"^sample: expected the policy that samples the RM's data"):
        entry.sample(config, {}, str(tmp_path / "sample"))
    assert not (tmp_path / "sample").exists()


def test_an_rm_started_from_the_trials_sft_runs_no_rm_base_of_its_own():
    """rm.init=sft: the rm node takes the trial's sft (and its label) as inputs and the trial has no rm_base node;
    every other init keeps rm_base."""
    own = trial("micro", "policy", size="micro", init="sft")
    keys = trial_keys(own, GRAPH)
    assert "rm_base" not in keys and {"sample", "label", "rm", "bon"} <= set(keys)
    _, nodes = plan_nodes([own], GRAPH)
    rm = next(n for n in nodes if n.stage.name == "rm")
    assert rm.input_keys == {"label": keys["label"], "sft": keys["sft"]}
    for init in ("auto", "policy", "scratch"):
        _, nodes = plan_nodes([trial("micro", "policy", size="micro", init=init)], GRAPH)
        rm = next(n for n in nodes if n.stage.name == "rm")
        assert set(rm.input_keys) == {"label", "rm_base"}, init


def test_an_rm_from_the_trials_sft_cannot_take_its_data_from_rm_base():
    import pytest

    from rlhfscale import checks
    from rlhfscale.errors import BadInput

    with pytest.raises(ValueError, match=r"rm.init=sft: expected an RM data source other than rm_base"):
        RunConfig.model_validate({"rm": {"init": "sft"}, "data": {"source": "rm_base"}})
    config = RunConfig.model_validate({"rm": {"init": "sft", "init_path": "some/policy"}}).model_dump()
    with pytest.raises(BadInput, match=r"rm.init_path=some/policy: does nothing here: rm.init=sft starts"):
        checks.rm(config)
