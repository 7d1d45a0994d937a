from rlhfscale.study.keys import StageDef, trial_keys

PIPE = [
    StageDef(name="a", fn="m:a", reads=["a"]),
    StageDef(name="b", fn="m:b", reads=["b"], enabled="b.on"),
    StageDef(name="c", fn="m:c", reads=["c"], inputs=["a"], optional_inputs=["b"]),
]


def test_optional_input_joins_the_key_only_when_its_stage_runs():
    off = {"a": 1, "b": {"on": False, "x": 1}, "c": 1}
    on = {"a": 1, "b": {"on": True, "x": 1}, "c": 1}
    on2 = {"a": 1, "b": {"on": True, "x": 2}, "c": 1}
    k_off, k_on, k_on2 = trial_keys(off, PIPE), trial_keys(on, PIPE), trial_keys(on2, PIPE)
    assert "b" not in k_off and "c" in k_off
    assert k_on["c"] != k_off["c"]  # c now reads b's artifact
    assert k_on2["c"] != k_on["c"] and k_on2["a"] == k_on["a"]  # b's config reaches c through b's key


def test_enabled_when_runs_a_stage_only_at_the_listed_values_and_says_why_not():
    from rlhfscale.study.keys import disabled_reason

    gated = StageDef(name="b", fn="m:b", reads=["b"], enabled="b.on", enabled_when=("b.mode", ["x", "y"]))
    pipe = [PIPE[0], gated, PIPE[2]]
    runs = {"a": 1, "b": {"on": True, "mode": "y"}, "c": 1}
    other = {"a": 1, "b": {"on": True, "mode": "z"}, "c": 1}
    off = {"a": 1, "b": {"on": False, "mode": "x"}, "c": 1}
    assert "b" in trial_keys(runs, pipe) and "b" not in trial_keys(other, pipe) and "b" not in trial_keys(off, pipe)
    assert trial_keys(other, pipe)["c"] == trial_keys(off, pipe)["c"]  # c without b, either way
    assert disabled_reason(gated, runs) is None
    assert disabled_reason(gated, other) == "b.mode is z, not one of ['x', 'y']"
    assert disabled_reason(gated, off) == "b.on is false"
    assert disabled_reason(StageDef(name="e", fn="m:e", enabled=False), runs) == "run by commands only"
