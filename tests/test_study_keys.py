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
