"""Reward models: HF-loadable heads, our scores equal HF's, step ends, data encoding, pool metrics."""

import itertools
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from rlhfscale.errors import BadInput
from rlhfscale.models.io import new_policy, save_policy
from rlhfscale.models.llama import hidden_states
from rlhfscale.models.reward import RewardModel, load_reward_model, pack, prm_token_scores, reward_model_from
from rlhfscale.models.steps import line_end_mask
from rlhfscale.models.train import left_pad
from rlhfscale.rm.data import (
    Outcome, Sampled, encode_outcomes, encode_preferences, encode_steps, load_outcomes, preference_pairs,
)
from rlhfscale.rewards.losses import next_token_loss, pair_accuracy
from rlhfscale.rewards.metrics import best_of_n, majority_of_n, pool_pair_accuracy, step_metrics
from rlhfscale.rm.train import (
    RMData, lm_targets, response_token_mask, right_prefix_end, train_reward_model,
)
from rlhfscale.tasks.arithmetic import ArithmeticTask
from rlhfscale.tasks.jsonl import PreferencePair, StepExample


@pytest.fixture(scope="module")
def nano():
    return new_policy("nano", 0, 64)


def saved_rm(kind, nano, path):
    policy, tok = nano
    model = reward_model_from(kind, policy, tok.pad_token_id, seed=1)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores far from zero, so a wrong pick shows
    save_policy(model, tok, path)
    return load_reward_model(path)


PROMPTS = ["1+2=?\n", "what is 12-3?\n", "7+7=?\n"]
RESPONSES = ["1+2=3\nanswer: 3", "12-3=9\n\n", "7+7=14\nanswer: 14\n"]


def test_orm_folder_loads_with_hf_and_scores_equal_ours(nano, tmp_path):
    rm = saved_rm("orm", nano, tmp_path)
    assert rm.kind == "orm"
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, attn, response_mask = pack(rm.tok, PROMPTS, RESPONSES)  # left pads, then right pads
    with torch.no_grad():
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # HF gives left-padded rows these only when asked
        ref = hf(input_ids=ids, attention_mask=attn, position_ids=positions).logits.squeeze(-1)
        ours = rm.score(ids, attn, response_mask)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        single = rm.tok(PROMPTS[0] + RESPONSES[0], return_tensors="pt").input_ids  # no padding: HF as is
        single = torch.cat((single, torch.tensor([[rm.tok.eos_token_id]])), 1)
        torch.testing.assert_close(hf(input_ids=single).logits.squeeze(-1), ours[:1], atol=1e-5, rtol=0)
    assert ours.abs().min() > 1e-3


def test_prm_folder_loads_with_hf_and_scores_are_aggregated_step_ends(nano, tmp_path):
    rm = saved_rm("prm", nano, tmp_path)
    assert rm.kind == "prm" and rm.model.config.num_labels == 1
    hf = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    ids, attn, response_mask = pack(rm.tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        ref = hf(input_ids=ids, attention_mask=attn, position_ids=positions).logits.squeeze(-1)
        ours = prm_token_scores(rm.model, ids, attn)
        torch.testing.assert_close(ours[attn.bool()], ref[attn.bool()], atol=1e-5, rtol=0)
        logits, ends = rm.step_scores(ids, attn, response_mask)
        assert ends.sum(-1).tolist() == [2, 1, 2]
        row0 = torch.sigmoid(logits[0][ends[0]])
        for how, expect in [("min", row0.min()), ("last", row0[-1]), ("mean", row0.mean()), ("prod", row0.prod())]:
            rm.aggregation = how
            torch.testing.assert_close(rm.score(ids, attn, response_mask)[0], expect)
        steps = rm.step_logits_texts(PROMPTS, RESPONSES, batch_size=2)
    assert [len(s) for s in steps] == [2, 1, 2]
    torch.testing.assert_close(steps[0], logits[0][ends[0]])


def test_load_reward_model_rejects_a_causal_lm(nano, tmp_path):
    save_policy(*nano, tmp_path)
    with pytest.raises(BadInput, match="architectures.*LlamaForCausalLM"):
        load_reward_model(tmp_path)
    with pytest.raises(BadInput, match="expected a reward model folder"):
        load_reward_model(tmp_path / "missing")


def test_line_end_mask_hand_example():
    NL, EOS, PAD, SPACE = 9, 2, 0, 4
    content = torch.tensor([False, False, False, False, False, True, True, True, True, False])  # 5-8: text
    ids = torch.tensor([
        [5, 6, NL, 7, NL, 8, EOS],  # two closed lines, then a last line closed by EOS
        [5, NL, NL, 6, NL, EOS, PAD],  # a blank line ends nothing; EOS after a newline ends nothing
        [NL, 5, 6, 7, PAD, PAD, PAD],  # truncated: the last token ends the line
        [EOS, PAD, PAD, PAD, PAD, PAD, PAD],  # empty response: no step
        [SPACE, NL, 5, SPACE, NL, SPACE, EOS],  # blank lines (spaces only) end nothing; "5 " does
    ])
    mask = torch.tensor([[1] * 7, [1] * 6 + [0], [1] * 4 + [0] * 3, [1] + [0] * 6, [1] * 7])
    T, F = True, False
    assert line_end_mask(ids, mask, NL, content).tolist() == [
        [F, F, T, F, T, F, T],
        [F, T, F, F, T, F, F],
        [F, F, F, T, F, F, F],
        [F, F, F, F, F, F, F],
        [F, F, F, F, T, F, F],
    ]


def test_encode_steps_puts_one_step_end_per_label(nano):
    _, tok = nano
    (seq, ends, labels), = encode_steps(tok, [StepExample("q\n", ["12+3=15", "answer: 15"], [1.0, 0.0])], "x")
    assert tok.decode(seq[ends[0]]) == "\n" and seq[ends[1]] == tok.eos_token_id and labels == [1.0, 0.0]
    assert tok.decode(seq[:ends[0]]) == "q\n12+3=15"
    with pytest.raises(BadInput, match="steps.jsonl record 1: expected 2 one-line, non-empty steps, found 3"):
        encode_steps(tok, [StepExample("q\n", ["a\nb", "c"], [1.0, 1.0])], "steps.jsonl")
    (seq, ends, _), = encode_steps(tok, [StepExample("q\n", ["a\nb", "c"], [1.0, 1.0])], "x", "paragraph")
    assert tok.decode(seq[:ends[0] + 1]) == "q\na\nb\n\n" and seq[ends[1]] == tok.eos_token_id


def test_load_outcomes_names_the_bad_line(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    path.write_text('{"prompt": "q", "response": "r", "label": 1}\n{"prompt": "q", "response": "r", "label": 2}\n')
    with pytest.raises(BadInput, match=r"outcomes.jsonl line 2: field 'label': expected a number in \[0, 1\], found 2"):
        load_outcomes(path)


def test_preference_pairs_on_arithmetic_are_correct_over_incorrect():
    task = ArithmeticTask()
    example = task.examples("train", 1)[0]
    wrong = example.solution.replace(f"answer: {example.answer}", "answer: 999")
    sampled = [Sampled(example, [example.solution, wrong, example.solution, wrong + "\n"])]
    pairs = preference_pairs(task, sampled, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 4  # 2 correct x 2 incorrect; ties (correct-correct, wrong-wrong) dropped
    assert all(p.chosen == example.solution and p.rejected.startswith(wrong) for p in pairs)


def brute_force_best_of_n(scores, values, n):
    """Mean over prompts of the mean over every n-subset of the value of its best-scored member."""
    per_prompt = []
    for s, v in zip(scores.tolist(), values.tolist()):
        subsets = list(itertools.combinations(range(len(s)), n))
        per_prompt.append(sum(v[max(c, key=lambda i: (s[i], -i))] for c in subsets) / len(subsets))
    return sum(per_prompt) / len(per_prompt)


def test_best_of_n_is_the_exact_subset_average():
    g = torch.Generator().manual_seed(0)
    scores, values = torch.randn(5, 7, generator=g), torch.rand(5, 7, generator=g)
    for n in range(1, 8):
        assert best_of_n(scores, values, n) == pytest.approx(brute_force_best_of_n(scores, values, n), abs=1e-12)
    assert best_of_n(scores, values, 1) == pytest.approx(values.mean().item())
    assert best_of_n(values, values, 7) == pytest.approx(values.max(-1).values.mean().item())
    with pytest.raises(ValueError, match="n must be in 1..7"):
        best_of_n(scores, values, 8)


def test_pool_pair_accuracy_hand_example():
    values = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # second prompt: no pair
    scores = torch.tensor([[0.5, 0.7, 0.5], [0.0, 1.0, 2.0]])
    assert pool_pair_accuracy(scores, values) == pytest.approx((0 + 0.5) / 2)


def test_majority_of_n():
    answers = [["1", "2", "2", None], ["3", "3", "3", "4"]]
    g = torch.Generator().manual_seed(0)
    assert majority_of_n(answers, ["2", "3"], 4, draws=5, generator=g) == 1.0
    assert majority_of_n(answers, ["1", "4"], 4, draws=5, generator=g) == 0.0
    # n = 1: the vote is a uniform draw, so the expected accuracy is the fraction of right answers
    expected = (2 / 4 + 3 / 4) / 2
    assert majority_of_n(answers, ["2", "3"], 1, draws=4000, generator=g) == pytest.approx(expected, abs=0.03)


def test_step_metrics_pairs_steps_in_order():
    logits = [torch.tensor([2.0, -1.0, -3.0]), torch.tensor([1.0])]
    gold = [[True, True, False], [False, False]]  # second: the PRM saw one step, gold has two
    m = step_metrics(logits, gold)
    # pairs: (T,T) (F,T) (F,F) (T,F); erroneous steps are the positive class: tp 1, fp 1, fn 1
    assert m["step_acc"] == pytest.approx(0.5) and m["step_f1"] == pytest.approx(0.5)
    # calling every step an error: precision 2/4, recall 1 -> F1 2/3
    assert m["step_error_rate"] == pytest.approx(0.5) and m["step_f1_all_errors"] == pytest.approx(2 / 3)


def copy_check_pairs(n, seed):
    """Gold solutions against the same with a wrong number on the answer line: to rank them the RM
    must compare the answer with the last line's result."""
    task, rng = ArithmeticTask(), random.Random(seed)
    sampled = []
    for e in task.examples("train" if seed == 0 else "test", n):
        wrong = e.solution.replace(f"answer: {e.answer}", f"answer: {int(e.answer) + rng.choice([-2, -1, 1, 2])}")
        sampled.append(Sampled(e, [e.solution, wrong]))
    return preference_pairs(task, sampled, temperature=0.0)


@pytest.mark.parametrize("schedule, bf16", [("cosine", False), ("constant", True)])
def test_orm_trained_briefly_ranks_held_out_arithmetic_pairs(nano, schedule, bf16):
    policy, tok = nano
    model = reward_model_from("orm", policy, tok.pad_token_id)
    rm = RewardModel(model, tok)
    test = copy_check_pairs(200, seed=1)
    prompts = [p.prompt for p in test]

    def accuracy():
        return pair_accuracy(rm.score_texts(prompts, [p.chosen for p in test]),
                             rm.score_texts(prompts, [p.rejected for p in test]))

    before = accuracy()
    data = RMData(pairs=encode_preferences(tok, copy_check_pairs(2000, seed=0)))
    lrs = []
    train_reward_model(model, data, kind="orm", steps=300, batch_size=32, lr=3e-3, warmup=20, weight_decay=0.0,
                       weight=1.0, pad_id=tok.pad_token_id, seed=0, schedule=schedule, bf16=bf16,
                       on_step=lambda step, stats: lrs.append(stats["lr"]))
    after = accuracy()
    assert after > 0.7 and after > before + 0.15, (before, after)
    assert lrs[-1] == pytest.approx(3e-3 if schedule == "constant" else 3e-4, rel=0.05)


def test_token_level_outcome_mask_covers_exactly_the_response_tokens(nano):
    _, tok = nano
    outcomes = [Outcome("12+3=?\n", "12+3=15\nanswer: 15", 1.0), Outcome("what is 9-1-1?\n", "answer: 7", 0.0)]
    encoded = encode_outcomes(tok, outcomes)
    ids, _ = left_pad([seq for seq, _, _ in encoded], tok.pad_token_id)
    mask = response_token_mask(encoded, ids.shape[1])
    for row, (o, (seq, label, prompt_len)) in enumerate(zip(outcomes, encoded)):
        response = tok(o.response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert ids[row][mask[row]].tolist() == response and label == o.label
        assert prompt_len == len(tok(o.prompt, add_special_tokens=False).input_ids)


def test_lm_targets_cover_the_steps_before_the_first_wrong_one():
    items = [([5, 6, 7, 8, 9, 10], [3, 5], [1.0, 0.0]),  # step 1 right (ends at token 3), step 2 wrong
             ([5, 6, 7], [1, 2], [0.0, 1.0]),  # step 1 wrong: nothing, whatever follows
             ([5, 6, 7, 8], [1, 3], [1.0, 0.6])]  # both right (a soft 0.6 counts): tokens 1..3
    upto = [right_prefix_end(item) for item in items]
    assert upto == [3, -1, 3]
    mask = lm_targets([seq for seq, _, _ in items], upto, 6)  # rows 2 and 3 are left-padded by 3 and 2
    assert mask.int().tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]]


@pytest.mark.parametrize("kind", ["prm", "orm"])
def test_lm_coef_teaches_the_backbone_the_right_responses_only(nano, kind):
    """With lm_coef the RM's tied LM head learns the gold solutions: their next-token loss falls far
    below that of the same training without it; a wrong implementation that trained on the wrong
    steps (here: every response's wrong tail is the same junk line) would learn the junk too."""
    policy, tok = nano
    task = ArithmeticTask()
    train = task.examples("train", 64)
    steps = [StepExample(e.prompt, e.solution.split("\n") + ["zzzz"], [1.0] * 3 + [0.0]) for e in train]
    pairs = [PreferencePair(e.prompt, e.solution, "zzzz") for e in train]
    test = task.examples("test", 32)

    def lm_loss(model, responses):  # the next-token loss of the responses' tokens (and EOS)
        ids, attn, response_mask = pack(tok, [e.prompt for e in test], responses)
        with torch.no_grad():
            h = hidden_states(model.model, ids, attn)
        mask = torch.cat((torch.zeros_like(ids[:, :-response_mask.shape[1]]), response_mask), 1).bool()
        return next_token_loss(h, model.model.embed_tokens.weight, ids, mask).item()

    losses = {}
    for coef in (0.0, 1.0):
        model = reward_model_from(kind, policy, tok.pad_token_id)
        data = RMData(steps=encode_steps(tok, steps, "x")) if kind == "prm" else \
            RMData(pairs=encode_preferences(tok, pairs))
        train_reward_model(model, data, kind=kind, steps=60, batch_size=16, lr=3e-3, warmup=5, weight_decay=0.0,
                           weight=1.0, pad_id=tok.pad_token_id, seed=0, lm_coef=coef)
        losses[coef] = lm_loss(model, [e.solution for e in test]), lm_loss(model, ["zzzz"] * len(test))
    (gold0, junk0), (gold1, junk1) = losses[0.0], losses[1.0]
    assert gold1 < 0.6 * gold0, losses
    assert junk1 > gold1 + 0.5, losses  # "zzzz" was never a target
