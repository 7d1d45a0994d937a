"""Study specs: grid / zip / explicit expansion with seeds, and errors naming key and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from toy_stages import validate

from rlhfscale.errors import BadInput
from rlhfscale.study.spec import apply_overrides, expand, load_spec


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_grid_crosses_axes_and_seeds(tmp_path):
    spec = load_spec(write(tmp_path, """\
name: g
base:
  task: {n: 5}
axes:
  rm.size: [micro, tiny]
  sft.lr: [0.1, 0.2, 0.3]
seeds: [1, 2]
"""))
    trials = expand(spec, validate)
    assert len(trials) == 12
    assert [t.id for t in trials[:3]] == [
        "rm.size=micro,sft.lr=0.1,seed=1", "rm.size=micro,sft.lr=0.1,seed=2", "rm.size=micro,sft.lr=0.2,seed=1",
    ]
    last = trials[-1]
    assert last.id == "rm.size=tiny,sft.lr=0.3,seed=2"
    assert (last.seed, last.overrides) == (2, {"rm.size": "tiny", "sft.lr": 0.3})
    assert (last.config["rm"]["size"], last.config["sft"]["lr"], last.config["seed"]) == ("tiny", 0.3, 2)
    assert last.config["task"] == {"n": 5, "scale": 3}  # base kept, defaults filled by validate
    assert len({t.id for t in trials}) == 12


def test_zip_pairs_axes_and_explicit_trials_are_added(tmp_path):
    spec = load_spec(write(tmp_path, """\
name: z
mode: zip
axes:
  rm.size: [micro, tiny, small]
  sft.lr: [0.1, 0.2, 0.3]
trials:
  - {sft: {lr: 0.9}, rm.fail: true}
"""))
    trials = expand(spec, validate)
    assert [t.id for t in trials] == [
        "rm.size=micro,sft.lr=0.1,seed=0", "rm.size=tiny,sft.lr=0.2,seed=0", "rm.size=small,sft.lr=0.3,seed=0",
        "sft.lr=0.9,rm.fail=true,seed=0",
    ]
    assert trials[3].config["sft"]["lr"] == 0.9
    assert trials[3].config["rm"] == {"size": "micro", "fail": True, "crash": False}


def test_no_axes_is_one_trial_per_seed_and_store_is_relative_to_spec(tmp_path):
    spec = load_spec(write(tmp_path, "name: b\nseeds: [3, 4]\nstore: out/s\n"))
    assert [t.id for t in expand(spec, validate)] == ["seed=3", "seed=4"]
    assert spec.store_root == tmp_path / "out" / "s"


def test_apply_overrides_merges_dicts_and_leaves_base_alone():
    base = {"rm": {"size": "micro", "fail": False}, "seed": 0}
    config = apply_overrides(base, {"rm": {"size": "tiny"}, "rl.steps": 5})
    assert config == {"rm": {"size": "tiny", "fail": False}, "rl": {"steps": 5}, "seed": 0}
    assert base == {"rm": {"size": "micro", "fail": False}, "seed": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nseeds: [1]\naxis:\n  rm.size: [micro]\n", "line 3: axis: expected one of name, base,"),
        ("name: x\nseeds: [1, two]\n", "line 2: seeds[1]: expected a valid integer"),
        ("name: x\nmode: zip\naxes:\n  rm.size: [micro, tiny]\n  sft.lr: [0.1]\n",
         "line 5: axes.sft.lr: expected 2 values (as many as axes.rm.size, mode zip), found 1"),
        ("name: x\naxes:\n  seed: [1, 2]\n", "line 3: seed: expected seeds in the `seeds` list"),
        ("name: x\ntrials:\n  - {rm.size: tiny}\n  - {rm.size: tiny}\n", "line 4: trials[1]: expected a trial unlike"),
        ("name: [x\n", "line 2: expected valid YAML"),
    ],
)
def test_spec_errors_name_file_line_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(BadInput) as err:
        expand(load_spec(path), validate)
    assert str(err.value).startswith(f"{path} ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


SPEC_WITH_BAD_VALUES = """\
name: v
base:
  task:
    n: 4
    scale: {bad_scale}
  rm:
    size: micro
axes:
  rm.size:
    - tiny
    - {bad_size}
trials:
  - sft:
      lr: {bad_lr}
"""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bad_scale": "three"}, "line 5: task.scale: expected a valid integer, unable to parse string as an integer, "
                                 "found 'three'"),
        ({"bad_size": "huge"}, "line 11: rm.size: expected 'micro', 'tiny' or 'small', found 'huge'"),
        ({"bad_lr": "fast"}, "line 14: sft.lr: expected a valid number"),
    ],
)
def test_validate_errors_point_at_the_line_that_set_the_key(tmp_path, values, message):
    good = {"bad_scale": "3", "bad_size": "small", "bad_lr": "0.5"}
    path = write(tmp_path, SPEC_WITH_BAD_VALUES.format(**{**good, **values}))
    with pytest.raises(BadInput) as err:
        expand(load_spec(path), validate)
    assert str(err.value).startswith(f"{path} {message}")


def test_unknown_config_key_in_base_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "name: u\nbase:\n  rm:\n    size: micro\n    colour: red\n")
    with pytest.raises(BadInput, match=r"line 5: rm\.colour: expected a known key, found unknown key 'colour'"):
        expand(load_spec(path), validate)
