import json

import pytest

from rlhfscale.errors import BadInput
from rlhfscale.tasks.jsonl import PreferencePair, StepExample, load_preference_pairs, load_step_labels

HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4"
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 5"


def write(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_preference_pairs_all_formats(tmp_path):
    path = write(
        tmp_path,
        {"prompt": "say hi\n", "chosen": "hi", "rejected": "no"},
        "",  # blank lines are skipped
        {
            "prompt": "ignored: the messages carry it",
            "chosen": msgs(("system", "be brief"), ("user", "2+2?"), ("assistant", "4")),
            "rejected": msgs(("system", "be brief"), ("user", "2+2?"), ("assistant", "5")),
        },
        {"prompt": msgs(("user", "hi")), "chosen": msgs(("assistant", "hello")), "rejected": "go away"},
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
    )
    assert load_preference_pairs(path) == [
        PreferencePair("say hi\n", "hi", "no"),
        PreferencePair("system: be brief\nuser: 2+2?\nassistant: ", "4", "5"),
        PreferencePair("user: hi\nassistant: ", "hello", "go away"),
        PreferencePair("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant:", " 4", " 5"),
    ]
    hh = load_preference_pairs(path)[3]
    assert hh.prompt + hh.chosen == HH_CHOSEN and hh.prompt + hh.rejected == HH_REJECTED


def test_loaders_accept_rows_of_a_dataset():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert load_preference_pairs(rows) == [PreferencePair("p", "a", "b")]
    with pytest.raises(BadInput, match=r"^dataset row 1: expected a field 'steps', found fields 'prompt'$"):
        load_step_labels([{"prompt": "p", "steps": ["s"], "labels": [1]}, {"prompt": "p"}])


def test_loaders_accept_a_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = write(tmp_path, {"prompt": "p", "steps": ["a", "b"], "labels": [True, False]})
    ds = datasets.load_dataset("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))["train"]
    assert load_step_labels(ds) == [StepExample("p", ["a", "b"], [1.0, 0.0])]


def test_step_labels_bool_int_and_soft(tmp_path):
    path = write(
        tmp_path,
        {"prompt": "2+3*4\n", "steps": ["3*4=12", "2+12=14"], "labels": [True, False]},
        {"prompt": "q\n", "steps": ["a", "b", "c"], "labels": [1, 0, 0.25]},
    )
    assert load_step_labels(path) == [
        StepExample("2+3*4\n", ["3*4=12", "2+12=14"], [1.0, 0.0]),
        StepExample("q\n", ["a", "b", "c"], [1.0, 0.0, 0.25]),
    ]


GOOD_PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json",
         "expected a JSON object, found invalid JSON (Expecting property name enclosed in double quotes)"),
        ([1, 2], "expected a JSON object, found a list"),
        ({"prompt": "p", "chosen": "a"}, "expected a field 'rejected', found fields 'prompt', 'chosen'"),
        ({"prompt": "p", "chosen": None, "rejected": "b"},
         "field 'chosen': expected a string or a list of messages, found null"),
        ({"prompt": "p", "chosen": [], "rejected": "b"},
         "field 'chosen': expected a string or a list of messages, found an empty list"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt': expected a string, found a number"),
        ({"chosen": [{"role": "user"}], "rejected": "b"},
         "field 'chosen' message 0: expected an object with string 'role' and 'content', found an object"),
        ({"chosen": msgs(("user", "hi"), ("user", "again")), "rejected": "b"},
         "field 'chosen': expected a final 'assistant' message, found 'user'"),
        ({"chosen": msgs(("user", "hi"), ("assistant", "a")),
          "rejected": msgs(("user", "yo"), ("assistant", "b"))},
         "expected 'chosen' and 'rejected' to share the messages before the final assistant message, "
         "found different ones"),
        ({"chosen": "a", "rejected": "b"},
         "expected a 'prompt' field, chat messages, or an HH-RLHF dialogue with a '\\n\\nAssistant:' turn, "
         "found none of these"),
        ({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: bye\n\nAssistant: 5"},
         "expected 'chosen' and 'rejected' to share the dialogue before the last Assistant turn, "
         "found different dialogues"),
    ],
)
def test_bad_preference_line_names_file_line_and_problem(tmp_path, line, message):
    path = write(tmp_path, GOOD_PAIR, line)
    with pytest.raises(BadInput) as err:
        load_preference_pairs(path)
    assert str(err.value) == f"{path} line 2: {message}"
    assert "\n" not in str(err.value)


GOOD_STEPS = {"prompt": "p", "steps": ["a", "b"], "labels": [1, 0]}


@pytest.mark.parametrize(
    "line, message",
    [
        ({"prompt": "p", "steps": ["a", "b"], "labels": [1]}, "expected as many labels as steps (2), found 1"),
        ({"prompt": "p", "steps": ["a"], "labels": [1.5]},
         "field 'labels' item 0: expected a number in [0, 1], found 1.5"),
        ({"prompt": "p", "steps": ["a", "b"], "labels": [1, -1]},
         "field 'labels' item 1: expected a number in [0, 1], found -1"),
        ({"prompt": "p", "steps": ["a"], "labels": ["yes"]},
         "field 'labels' item 0: expected a boolean or a number, found a string"),
        ({"prompt": "p", "steps": ["a", 2], "labels": [1, 0]},
         "field 'steps' item 1: expected a string, found a number"),
        ({"prompt": "p", "steps": [], "labels": []},
         "field 'steps': expected a non-empty list of strings, found an empty list"),
        ({"prompt": "p", "steps": "a", "labels": [1]},
         "field 'steps': expected a non-empty list of strings, found a string"),
        ({"prompt": "p", "steps": ["a"], "labels": 1}, "field 'labels': expected a list, found a number"),
        ({"steps": ["a"], "labels": [1]}, "expected a field 'prompt', found fields 'steps', 'labels'"),
    ],
)
def test_bad_step_line_names_file_line_and_problem(tmp_path, line, message):
    path = write(tmp_path, GOOD_STEPS, GOOD_STEPS, line)
    with pytest.raises(BadInput) as err:
        load_step_labels(path)
    assert str(err.value) == f"{path} line 3: {message}"


def test_missing_empty_and_undecodable_files(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(BadInput, match=r"nope\.jsonl: expected a jsonl file, found no such file$"):
        load_preference_pairs(missing)
    with pytest.raises(BadInput, match="found a directory$"):
        load_step_labels(tmp_path)
    empty = write(tmp_path, "", name="empty.jsonl")
    with pytest.raises(BadInput, match=r"empty\.jsonl: expected at least one JSON line, found none$"):
        load_preference_pairs(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(json.dumps(GOOD_PAIR).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(BadInput, match=r"binary\.jsonl line 2: expected UTF-8 text, found invalid bytes$"):
        load_preference_pairs(binary)
