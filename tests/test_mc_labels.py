import random

import pytest
import torch

from rlhfscale.rewards.mc_labels import mc_labels, monte_carlo_step_labels, step_prefixes

T, F = True, False


def test_mc_labels_hand_example():
    successes = torch.tensor(
        [
            [[T, T, F, F], [F, F, F, F], [T, T, T, T]],
            [[F, F, F, T], [T, T, T, T], [T, T, T, T]],  # only the first step is real
        ]
    )
    mask = torch.tensor([[T, T, T], [T, F, F]])
    hard, soft = mc_labels(successes, mask)
    torch.testing.assert_close(soft, torch.tensor([[0.5, 0.0, 1.0], [0.25, 0.0, 0.0]]))
    assert hard.tolist() == [[T, F, T], [T, F, F]]


def test_mc_labels_masked_steps_change_nothing():
    g = torch.Generator().manual_seed(0)
    successes = torch.rand(4, 6, 8, generator=g) < 0.5
    mask = torch.arange(6) < torch.tensor([6, 3, 0, 1]).unsqueeze(-1)
    flipped = torch.where(mask.unsqueeze(-1), successes, ~successes)
    for a, b in zip(mc_labels(successes, mask), mc_labels(flipped, mask)):
        torch.testing.assert_close(a, b)


def test_mc_labels_matches_reference_loop():
    g = torch.Generator().manual_seed(1)
    successes = torch.rand(3, 5, 7, generator=g) < 0.3
    lengths = [5, 2, 4]
    mask = torch.arange(5) < torch.tensor(lengths).unsqueeze(-1)
    hard, soft = mc_labels(successes, mask)
    for b, n in enumerate(lengths):
        for s in range(5):
            outcomes = successes[b, s].tolist()
            assert soft[b, s].item() == pytest.approx(sum(outcomes) / 7 if s < n else 0.0)
            assert hard[b, s].item() == (any(outcomes) and s < n)


def test_step_prefixes():
    assert step_prefixes(["2+3=5", "5*2=10", "answer 10"]) == [
        "2+3=5\n",
        "2+3=5\n5*2=10\n",
        "2+3=5\n5*2=10\nanswer 10\n",
    ]
    assert step_prefixes([]) == []


# A task whose true step values are known: from prompt + prefix, a completion reaches the right
# answer with probability P[prompt + prefix].
PROMPTS = ["q0\n", "q1\n", "q2\n"]
STEPS = [["a", "b", "c"], ["x", "y"], []]
P = {"q0\na\n": 0.3, "q0\na\nb\n": 0.0, "q0\na\nb\nc\n": 1.0, "q1\nx\n": 0.7, "q1\nx\ny\n": 1.0}


def known_value_policy(seed):
    calls, checked = [], []
    rng = random.Random(seed)

    def complete(prompts, prefixes, m):
        texts = [q + r for q, r in zip(prompts, prefixes, strict=True)]
        calls.append(texts)
        return [["=ok" if rng.random() < P[t] else "=no" for _ in range(m)] for t in texts]

    def is_correct(i, response):
        checked.append((i, response))
        return response.endswith("=ok")

    return complete, is_correct, calls, checked


def test_monte_carlo_labels_recover_known_step_values():
    complete, is_correct, calls, _ = known_value_policy(seed=0)
    soft, hard = monte_carlo_step_labels(PROMPTS, STEPS, complete, is_correct, m=3000)
    assert calls == [list(P)]  # every prefix of every response, in one call
    assert soft[0] == pytest.approx([0.3, 0.0, 1.0], abs=0.03)
    assert soft[1] == pytest.approx([0.7, 1.0], abs=0.03)
    assert soft[2] == [] and hard[2] == []
    assert hard[0][1:] == [False, True] and hard[1][1] is True  # steps of value 0 and 1
    assert hard[0][0] and hard[1][0]  # 0.3 and 0.7 with 3000 tries


def test_monte_carlo_labels_check_full_response_of_the_right_example():
    complete, is_correct, _, checked = known_value_policy(seed=1)
    monte_carlo_step_labels(PROMPTS, STEPS, complete, is_correct, m=2)
    assert [(i, r[: -len("=ok")]) for i, r in checked] == [
        (0, "a\n"), (0, "a\n"), (0, "a\nb\n"), (0, "a\nb\n"), (0, "a\nb\nc\n"), (0, "a\nb\nc\n"),
        (1, "x\n"), (1, "x\n"), (1, "x\ny\n"), (1, "x\ny\n"),
    ]


def test_monte_carlo_labels_small_m_hard_is_any_soft_is_fraction():
    outcomes = {"q0\na\n": ["=no", "=ok"], "q0\na\nb\n": ["=no", "=no"], "q0\na\nb\nc\n": ["=ok", "=ok"]}

    def complete(prompts, prefixes, m):
        return [outcomes[q + r] for q, r in zip(prompts, prefixes)]

    soft, hard = monte_carlo_step_labels(PROMPTS[:1], STEPS[:1], complete, lambda i, r: r.endswith("=ok"), 2)
    assert soft == [[0.5, 0.0, 1.0]] and hard == [[True, False, True]]


def test_monte_carlo_labels_reject_wrong_number_of_completions():
    with pytest.raises(ValueError, match="2 completions for each of 5 texts"):
        monte_carlo_step_labels(PROMPTS, STEPS, lambda qs, rs, m: [["=ok"]] * len(qs), lambda i, r: True, 2)
    with pytest.raises(ValueError, match="3 prompts but 2 step lists"):
        monte_carlo_step_labels(PROMPTS, STEPS[:2], lambda qs, rs, m: [], lambda i, r: True, m=2)


def test_prompt_and_prefix_reach_the_policy_apart_with_the_tasks_step_separator():
    """A chat template wraps the prompt alone: the prefix must not be glued into the user's turn."""
    seen = []

    def complete(prompts, prefixes, m):
        seen.extend(zip(prompts, prefixes))
        return [["=ok"] * m for _ in prompts]

    monte_carlo_step_labels(["Q"], [["s1", "s2"]], complete, lambda i, r: True, 1, joiner="\n\n")
    assert seen == [("Q", "s1\n\n"), ("Q", "s1\n\ns2\n\n")]
