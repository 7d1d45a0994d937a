"""The reward-model stages end to end on tiny models: sample -> label -> rm -> bon, and what they learn."""

import json
import random

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.models.io import new_policy, save_policy
from rlhfscale.models.ladder import count_non_embedding
from rlhfscale.models.reward import RewardModel, reward_model_from
from rlhfscale.rm.data import Sampled, encode_preferences, load_sampled, preference_pairs, sampled_row, write_jsonl
from rlhfscale.rewards.losses import pair_accuracy
from rlhfscale.rm.train import RMData, train_reward_model
from rlhfscale.stages import bon, label, rm, sample, sft
from rlhfscale.tasks.arithmetic import ArithmeticTask
from rlhfscale.tasks.chat import ChatTask, corrupt
from rlhfscale.tasks.jsonl import load_preference_pairs, load_step_labels

CHAT = {"threads": 1, "task": {"name": "chat"}, "policy": {"size": "nano", "max_len": 128},
        "sampling": {"max_new_tokens": 40},
        "data": {"source": "corrupt", "prompts": 48, "responses_per_prompt": 4, "heldout_prompts": 16},
        "rm": {"size": "nano", "steps": 30, "lr": 3e-3}, "bon": {"prompts": 12, "n_max": 8, "draws": 4}}


def config(**sections) -> RunConfig:
    data = json.loads(json.dumps(CHAT))
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return RunConfig.model_validate(data)


def assert_run_dir(path, **config_values):
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in path.iterdir()}
    resolved = yaml.safe_load((path / "config.yaml").read_text())
    for dotted, value in config_values.items():
        section, key = dotted.split(".")
        assert resolved[section][key] == value
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("step" in r and "wall_s" in r for r in rows)
    return json.loads((path / "summary.json").read_text())


@pytest.fixture(scope="module")
def chat_runs(tmp_path_factory):
    """sample (corrupted gold, no policy) -> label -> an ORM and a PRM, on the chat task."""
    root = tmp_path_factory.mktemp("chat")
    sample.run(config(), {}, root / "sample")
    label.run(config(), {"sample": str(root / "sample")}, root / "label")
    rm.run(config(rm={"kind": "orm"}), {"label": str(root / "label")}, root / "orm")
    rm.run(config(rm={"kind": "prm", "labels": "gold"}), {"label": str(root / "label")}, root / "prm")
    return root


def test_sample_and_label_stages_write_consistent_data(chat_runs):
    summary = assert_run_dir(chat_runs / "sample", **{"data.prompts": 48})
    train = load_sampled(chat_runs / "sample" / "train.jsonl")
    assert len(train) == 48 and all(len(s.responses) == 4 for s in train)
    assert summary["sample/responses"] == 192 and summary["flops/sample"] == 0.0  # no policy ran
    summary = assert_run_dir(chat_runs / "label")
    pairs = load_preference_pairs(chat_runs / "label" / "pairs.jsonl")
    assert summary["label/pairs"] == len(pairs) > 48
    task = ChatTask()
    example = {s.example.prompt: s.example for s in train}
    flips = [task.score(example[p.prompt], p.chosen) < task.score(example[p.prompt], p.rejected) for p in pairs]
    assert 0 < sum(flips) < 0.3 * len(flips)  # noisy raters (temperature 0.1) sometimes prefer the worse one
    heldout = load_preference_pairs(chat_runs / "label" / "heldout_pairs.jsonl")
    held = {s.example.prompt: s.example for s in load_sampled(chat_runs / "sample" / "heldout.jsonl")}
    assert all(task.score(held[p.prompt], p.chosen) > task.score(held[p.prompt], p.rejected) for p in heldout)
    steps = load_step_labels(chat_runs / "label" / "steps_gold.jsonl")
    assert steps[0].labels == [float(x) for x in task.step_labels(example[steps[0].prompt], "\n".join(steps[0].steps))]
    assert not (chat_runs / "label" / "steps_mc_hard.jsonl").exists()  # no policy: no Monte-Carlo labels


def test_sample_stage_rejects_what_it_cannot_do(tmp_path):
    with pytest.raises(BadInput, match="data.source: expected 'policy' for the arithmetic task, found 'corrupt'"):
        sample.run(config(task={"name": "arithmetic"}), {}, tmp_path / "a")
    with pytest.raises(BadInput, match="sample: expected the policy that samples the RM.s data"):
        sample.run(config(data={"source": "policy"}), {}, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rm_stage_saves_an_hf_reward_model_and_counts_flops(chat_runs):
    summary = assert_run_dir(chat_runs / "orm", **{"rm.kind": "orm"})
    hf = AutoModelForSequenceClassification.from_pretrained(chat_runs / "orm" / "rm")
    assert hf.config.num_labels == 1 and hf.config.pad_token_id is not None
    assert 0.0 <= summary["rm/pair_acc"] <= 1.0 and summary["rm/pairs"] > 0 and summary["rm/init_from_policy"] == 0.0
    heldout = (chat_runs / "label" / "heldout_pairs.jsonl").read_text().splitlines()
    assert summary["rm/heldout_pairs"] == len(heldout) > 0  # what rm/pair_acc rests on
    tokens_per_step = 2 * 32 * 40  # 32 pairs of two sequences of at least ~40 tokens each
    assert summary["flops/rm"] > 6 * summary["rm/params"] * tokens_per_step * 30
    prm_summary = assert_run_dir(chat_runs / "prm", **{"rm.kind": "prm"})
    assert {"prm/step_acc", "prm/step_f1", "rm/pair_acc"} <= set(prm_summary)


def test_rm_stage_starts_from_the_rm_base_policy_of_its_size(chat_runs, tmp_path):
    policy, tok = new_policy("nano", 5, 128)
    save_policy(policy, tok, tmp_path / "sft" / "policy")
    inputs = {"label": str(chat_runs / "label"), "rm_base": str(tmp_path / "sft")}
    summary = rm.run(config(rm={"steps": 0}), inputs, tmp_path / "rm")
    assert summary["rm/init_from_policy"] == 1.0
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "rm")
    torch.testing.assert_close(saved.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    summary = rm.run(config(rm={"steps": 0, "size": "micro"}), inputs, tmp_path / "rm_micro")  # auto: other size
    assert summary["rm/init_from_policy"] == 0.0


def test_bon_stage_curves_from_one_pool(chat_runs, tmp_path):
    sft.run(config(sft={"steps": 40, "batch_size": 32, "lr": 3e-3, "n_examples": 200}, eval={"n_prompts": 8}), {},
            tmp_path / "sft")
    inputs = {"sft": str(tmp_path / "sft"), "rm0": str(chat_runs / "orm"), "rm1": str(chat_runs / "prm")}
    summary = bon.run(config(), inputs, tmp_path / "bon")
    written = assert_run_dir(tmp_path / "bon")
    assert written["bon/policy"].endswith("policy") and "orm=" in written["bon/rm"] and "prm=" in written["bon/rm"]
    assert "bon/policy" not in summary  # the returned metrics are numbers only
    oracle = [summary[f"bon/oracle@{n}"] for n in (1, 2, 4, 8)]
    assert oracle == sorted(oracle) and oracle[-1] > oracle[0]
    for name in ("orm", "prm_min", "prm_last", "prm_mean", "prm_prod"):
        assert summary[f"bon/{name}@1"] == pytest.approx(summary["bon/pool_score"])
        assert summary[f"bon/{name}@8"] <= oracle[-1] + 1e-9
    assert "bon/majority@1" not in summary  # chat responses have no final answer to vote on
    assert {"orm/pair_acc", "prm/pair_acc", "prm/step_acc", "prm/step_f1", "eval/pass@1"} <= set(summary)


def test_monte_carlo_labels_through_the_policy_sampler(tmp_path):
    """From a prefix that already holds the answer line, every completion keeps that answer: the last
    step's value is exactly the response's correctness. From earlier prefixes a random policy never
    writes the right answer line, so those values are 0."""
    task = ArithmeticTask()
    example = task.examples("train", 1)[0]
    wrong = example.solution.replace(f"answer: {example.answer}", f"answer: {int(example.answer) + 1}")
    (tmp_path / "sample").mkdir()
    write_jsonl(tmp_path / "sample" / "train.jsonl", [sampled_row(example, [example.solution, wrong])])
    write_jsonl(tmp_path / "sample" / "heldout.jsonl", [])
    policy, tok = new_policy("nano", 0, 128)
    save_policy(policy, tok, tmp_path / "policy")
    cfg = RunConfig.model_validate({"threads": 1, "data": {"mc_rollouts": 6}})
    summary = label.run(cfg, {"sample": str(tmp_path / "sample"), "sft": str(tmp_path / "policy")}, tmp_path / "label")
    soft = [e.labels for e in load_step_labels(tmp_path / "label" / "steps_mc_soft.jsonl")]
    hard = [e.labels for e in load_step_labels(tmp_path / "label" / "steps_mc_hard.jsonl")]
    assert soft == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]] and hard == soft
    gold = [e.labels for e in load_step_labels(tmp_path / "label" / "steps_gold.jsonl")]
    assert gold == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert summary["label/mc_hard_gold_agreement"] == pytest.approx(2 / 6)
    # the two responses share their first two prefixes: 4 distinct prefixes x 6 completions of >= 1 token
    assert summary["flops/label"] >= 2 * count_non_embedding(policy) * 4 * 6


def chat_pairs(split, n_prompts, temperature, seed):
    """Two corrupted copies of the gold response to each of n prompts (one phrasing per request), rated once."""
    task, rng = ChatTask(n_templates=1), random.Random(seed)
    sampled = [Sampled(e, [corrupt(e, rng.random(), rng) for _ in range(2)]) for e in task.examples(split, n_prompts)]
    return preference_pairs(task, sampled, temperature, torch.Generator().manual_seed(seed))


def test_more_noisy_preference_pairs_give_a_better_proxy_rm():
    """Gao et al.'s set-up in miniature: a proxy RM trained on noisy rater labels, judged against
    the hidden gold rater on held-out prompts, gets better with more comparisons."""
    test = chat_pairs("test", 300, temperature=0.0, seed=1)
    prompts = [p.prompt for p in test]
    accuracy = {}
    for n in (64, 1024):
        policy, tok = new_policy("nano", 0, 128)
        model = reward_model_from("orm", policy, tok.pad_token_id)
        data = RMData(pairs=encode_preferences(tok, chat_pairs("train", n, temperature=0.1, seed=0)))
        train_reward_model(model, data, kind="orm", steps=200, batch_size=16, lr=3e-3, warmup=10, weight_decay=0.0,
                           weight=1.0, pad_id=tok.pad_token_id, seed=0)
        scorer = RewardModel(model, tok)
        accuracy[n] = pair_accuracy(scorer.score_texts(prompts, [p.chosen for p in test]),
                                    scorer.score_texts(prompts, [p.rejected for p in test]))
    assert accuracy[1024] > accuracy[64] + 0.07 and accuracy[1024] > 0.62, accuracy


def test_a_prm_finds_steps_as_the_task_writes_them(tmp_path):
    """task.step_split reaches the PRM: with "paragraph", a two-line step is one step, and the saved PRM keeps it."""
    import json

    from rlhfscale.models.reward import load_reward_model
    from rlhfscale.models.steps import step_end_mask

    rows = [{"prompt": f"Q{i}: 3 + {i}?\n", "steps": [f"3 + {i}\n= {3 + i}", f"#### {3 + i}"],
             "labels": [i % 2 == 0, i % 2 == 0]} for i in range(8)]
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(task={"name": "math-mini", "step_split": "paragraph"}, rm={"kind": "prm", "size": "nano", "steps": 2,
                                                                            "init": "scratch"}, data={"heldout_prompts": 0})
    rm.run(cfg, {"steps": str(path)}, tmp_path / "prm")
    prm = load_reward_model(tmp_path / "prm" / "rm")
    assert prm.step_split == "paragraph"
    text = rows[0]["steps"][0] + "\n\n" + rows[0]["steps"][1]
    ids = torch.tensor([prm.tok(text, add_special_tokens=False).input_ids])
    assert int(step_end_mask(prm.tok, ids, torch.ones_like(ids), prm.step_split).sum()) == 2  # not 3 lines
