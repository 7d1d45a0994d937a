import random

import pytest
import torch

from rlhfscale.models.tokenizer import CHARS
from rlhfscale.tasks.base import Example
from rlhfscale.tasks.chat import (
    MAX_WORDS,
    TEMPLATES,
    WORDS,
    ChatTask,
    Request,
    all_requests,
    corrupt,
    make_preference_pairs,
    rate_pair,
    render_prompt,
    request_of,
)

B_LIST = Request("b", 4, "alphabetical", True, None)
C_SHORT = Request("c", 2, "any", False, 4)


def example(request, template=0):
    return Example(prompt=render_prompt(request, template), solution="")


def test_prompt_reads_as_the_request():
    assert example(B_LIST).prompt == "list 4 words starting with b, in alphabetical order, no repeats\n"
    assert example(C_SHORT, 1).prompt == "give 2 words that begin with c, max 4 letters each\n"


@pytest.mark.parametrize(
    "response, expected",
    [
        ("bag\nbed\nbig\nbox", 1.0),
        ("bag\nbed\nbig\nbox\n", 1.0),
        ("", 0.0),
        ("\n\n", 0.0),
        # 3 of 4 slots: word 3/4, letter 2/4 (x2), count 3/4, order 1/3, unique 2/4 -> 3.3333 / 6
        ("bag\nbag\ncat", 3.3333333 / 6),
        # 6 words for 4: all known, b, ordered, unique; count 1 - 2/4 -> 5.5 / 6
        ("bag\nbed\nbig\nbox\nbus\nbut", 5.5 / 6),
        # reverse order: 0 of 3 pairs in order
        ("box\nbig\nbed\nbag", 5 / 6),
    ],
)
def test_gold_score_hand_examples(response, expected):
    assert ChatTask().score(example(B_LIST), response) == pytest.approx(expected)


def test_gold_score_max_length_partial_credit():
    # word 1, letter 1 (x2), count 1, max_len 1/2 -> 4.5 / 5
    assert ChatTask().score(example(C_SHORT), "cat\ncandle") == pytest.approx(0.9)
    # non-words still earn letter credit: word 0, letter 2/2 (x2), count 1, max_len 2/2 -> 4 / 5
    assert ChatTask().score(example(C_SHORT), "cxq\ncqq") == pytest.approx(0.8)


def test_score_does_not_depend_on_phrasing():
    scores = {ChatTask().score(example(B_LIST, t), "bag\nbag\ncat") for t in range(len(TEMPLATES))}
    assert len(scores) == 1


@pytest.mark.parametrize(
    "response, labels",
    [
        ("bag\nbed\nbig\nbox", [True] * 4),
        ("bag\nbed\nbed\nbox", [True, True, False, False]),  # repeat
        ("bag\ncat\nbox", [True, False, False]),  # wrong letter
        ("big\nbag", [True, False]),  # out of order
        ("bag\nbxq\nbox", [True, False, False]),  # not a word
        ("bag\nbed\nbig\nbox\nbus", [True] * 4 + [False]),  # one word too many
    ],
)
def test_step_labels_are_prefix_correct(response, labels):
    assert ChatTask().step_labels(example(B_LIST), response) == labels


def test_step_labels_length_limit():
    assert ChatTask().step_labels(example(C_SHORT), "candle\ncat") == [False, False]


def test_solutions_are_perfect_and_fit_the_context():
    task = ChatTask(seed=5, n_templates=len(TEMPLATES), max_words=MAX_WORDS)
    for split in ("train", "test"):
        for ex in task.examples(split, 300):
            assert task.score(ex, ex.solution) == 1.0
            assert all(task.step_labels(ex, ex.solution))
            assert len(ex.solution) <= 41 and len(ex.prompt) + len(ex.solution) < 150
            assert set(ex.prompt + ex.solution) <= set(CHARS) and ex.prompt.endswith("\n")
            assert task.extract_answer(ex.solution) is None
            assert task.split_steps(ex.solution) == ex.solution.split("\n")


def test_splits_are_disjoint_and_prompts_distinct():
    task = ChatTask(seed=0, n_templates=4)
    train, test = task.examples("train", 2000), task.examples("test", 500)
    assert not {request_of(e.prompt) for e in train} & {request_of(e.prompt) for e in test}
    assert len({e.prompt for e in train}) == 2000 and len({e.prompt for e in test}) == 500
    # the split of a request does not depend on the seed
    assert {request_of(e.prompt).split() for e in ChatTask(seed=9).examples("test", 200)} == {"test"}


def test_examples_are_deterministic_and_seeded():
    a, b = ChatTask(seed=3).examples("train", 50), ChatTask(seed=3).examples("train", 50)
    assert [(e.prompt, e.solution) for e in a] == [(e.prompt, e.solution) for e in b]
    assert ChatTask(seed=3).examples("train", 10) == a[:10]
    assert [e.prompt for e in ChatTask(seed=4).examples("train", 50)] != [e.prompt for e in a]
    with pytest.raises(ValueError, match="valid: train, test"):
        ChatTask().examples("val", 1)
    with pytest.raises(ValueError, match="distinct prompts"):
        ChatTask(n_templates=1, max_words=2).examples("test", 10_000)


def test_n_templates_sets_the_number_of_phrasings():
    one = ChatTask(n_templates=1).examples("train", 400)
    assert len({request_of(e.prompt) for e in one}) == 400
    assert all(e.prompt == render_prompt(request_of(e.prompt), 0) for e in one)
    four = ChatTask(n_templates=4, max_words=2).examples("train", 600)
    phrasings = {}
    for e in four:
        phrasings.setdefault(request_of(e.prompt), set()).add(e.prompt)
    assert max(len(p) for p in phrasings.values()) == 4
    with pytest.raises(ValueError, match="n_templates"):
        ChatTask(n_templates=len(TEMPLATES) + 1)


def test_every_prompt_names_one_request():
    requests = list(all_requests(MAX_WORDS))
    prompts = {render_prompt(r, t) for r in requests for t in range(len(TEMPLATES))}
    assert len(prompts) == len(requests) * len(TEMPLATES)
    assert all(request_of(render_prompt(r, 7)) == r for r in requests[::50])
    with pytest.raises(ValueError, match="not a chat-task prompt"):
        request_of("what is 2+2?\n")


def test_word_list():
    assert len(WORDS) >= 300 and len(set(WORDS)) == len(WORDS)
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 6 for w in WORDS)


def test_corrupt_spans_a_quality_spectrum():
    task = ChatTask(seed=1)
    examples = task.examples("train", 200)
    rng = random.Random(0)
    assert all(corrupt(e, 0.0, rng) == e.solution for e in examples)
    means = [sum(task.score(e, corrupt(e, level, rng)) for e in examples) / 200 for level in (0.25, 0.5, 1.0)]
    assert 1.0 > means[0] > means[1] > means[2] and means[2] < 0.6
    with pytest.raises(ValueError, match="level"):
        corrupt(examples[0], 1.5, rng)


# --- simulated raters -------------------------------------------------------------------------


def gold_pairs(n=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)


def agreement(temperature, seed=0):
    a, b = gold_pairs(seed=seed)
    prefers_a = rate_pair(a, b, temperature=temperature, generator=torch.Generator().manual_seed(seed + 1))
    return (prefers_a == (a > b)).double().mean().item()


def test_rater_temperature_zero_is_the_gold_preference_with_random_ties():
    a = torch.tensor([0.9, 0.1, 0.5])
    b = torch.tensor([0.2, 0.3, 0.4])
    assert rate_pair(a, b, temperature=0.0).tolist() == [True, False, True]
    ties = rate_pair(torch.full((4000,), 0.5), torch.full((4000,), 0.5), temperature=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert 0.45 < ties.double().mean().item() < 0.55


def test_rater_follows_bradley_terry():
    # P(a ≻ b) = σ(0.5 / 0.25) = σ(2) = 0.8808
    prefers_a = rate_pair(torch.full((40_000,), 0.75), torch.full((40_000,), 0.25), temperature=0.25,
                          generator=torch.Generator().manual_seed(0))
    assert prefers_a.double().mean().item() == pytest.approx(0.8808, abs=0.01)


def test_rater_agreement_goes_from_gold_to_chance_with_temperature():
    agree = [agreement(t) for t in (1e-4, 0.05, 0.3, 1e4)]
    assert agree[0] > 0.99 and agree[0] > agree[1] > agree[2] > agree[3]
    assert agree[3] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="temperature"):
        rate_pair(torch.zeros(1), torch.zeros(1), temperature=-1.0)


def test_make_preference_pairs():
    prompts = ["p\n", "q\n"]
    responses = [["good", "bad", "mid", "bad"], ["x", "y"]]
    gold = [[0.9, 0.1, 0.5, 0.1], [0.2, 0.8]]
    generator = torch.Generator().manual_seed(0)
    pairs = make_preference_pairs(prompts, responses, gold, temperature=0.0, generator=generator)
    # all pairs of distinct texts: C(4, 2) - 1 identical ("bad", "bad") for p, 1 for q
    assert [tuple(p) for p in pairs] == [
        ("p\n", "good", "bad"), ("p\n", "good", "mid"), ("p\n", "good", "bad"),
        ("p\n", "mid", "bad"), ("p\n", "mid", "bad"), ("q\n", "y", "x"),
    ]
    with pytest.raises(ValueError, match="prompt 1: 2 responses but 1 gold scores"):
        make_preference_pairs(prompts, responses, [gold[0], [0.2]], temperature=0.0)
