import pytest

from rlhfscale.config import RunConfig, load_config, parse_overrides
from rlhfscale.errors import BadInput


def test_overrides_are_dotted_and_typed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rl:\n  steps: 7\n  lr: 0.01\ntask:\n  n_ops: 3\n")
    cfg = load_config(RunConfig, f, ["rl.lr=1e-4", "policy.size=tiny", "rl.norm_std=false"])
    assert cfg.rl.steps == 7 and cfg.rl.lr == 1e-4 and cfg.task.n_ops == 3
    assert cfg.policy.size == "tiny" and cfg.rl.norm_std is False
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["rl.lrr=1"], "rl.lrr: unknown key"),
        (["rl.lr=abc"], "rl.lr: expected"),
        (["rl.steps=-1"], "rl.steps: expected"),
        (["policy.size=huge"], "policy.size: expected one of nano, micro"),
        (["task.operators=/"], "task.operators: expected a non-empty subset"),
        (["rl.lr"], "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, fragment):
    with pytest.raises(BadInput) as e:
        load_config(RunConfig, None, overrides)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(BadInput, match="missing.yaml: config file not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("rl:\n  steps: [1\n")
    with pytest.raises(BadInput, match="bad.yaml line"):
        load_config(RunConfig, f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(BadInput, match="expected a mapping"):
        load_config(RunConfig, f)
