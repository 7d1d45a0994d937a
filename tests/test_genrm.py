"""The generative verifier (Zhang et al. 2024): its verdict loss and score, its tokens, its saved folder,
and its refusals."""

import math

import pytest
import torch
from rm_checks import PROMPTS, RESPONSES, batch_scores_equal_alone
from transformers import AutoModelForCausalLM

from rlhfscale import checks
from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.models import genrm
from rlhfscale.models.io import new_policy, save_policy
from rlhfscale.models.reward import RewardModel, load_reward_model, pack
from rlhfscale.rewards.losses import genrm_loss, genrm_score
from rlhfscale.rm.data import Outcome, encode_outcomes
from rlhfscale.rm.train import RMData, train_reward_model


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the loss and the score ------------------------------------------------------------------


def test_genrm_loss_hand_example():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # V = 3 (yes = 0, no = 1), D = 2
    h = torch.tensor([[[9.0, 9.0], [1.0, 0.0]], [[0.0, 2.0], [5.0, 5.0]]])  # [B=2, T=2, D]
    mask = torch.tensor([[False, True], [True, False]])
    # row 0: logits [1, 0, 0], label 1: -log p(yes) = log(e + 2) - 1; row 1: logits [0, 2, 0], label 0:
    # -log p(no) = log(e² + 2) - 2
    expected = (math.log(math.e + 2) - 1 + math.log(math.e ** 2 + 2) - 2) / 2
    assert genrm_loss(h, w, mask, torch.tensor([1.0, 0.0]), 0, 1).item() == pytest.approx(expected, rel=1e-6)
    # a soft label 0.25 mixes both targets: 0.25 (log(e + 2) - 1) + 0.75 (log(e + 2) - 0)
    soft = genrm_loss(h[:1], w, mask[:1], torch.tensor([0.25]), 0, 1).item()
    assert soft == pytest.approx(math.log(math.e + 2) - 0.25, rel=1e-6)
    # the score is log p(yes) - log p(no) = z_yes - z_no, whatever the rest of the vocabulary says
    assert genrm_score(torch.tensor([[1.0, 0.0, 7.0], [0.0, 2.0, -3.0]]), 0, 1).tolist() == [1.0, -2.0]


def test_genrm_loss_ignores_masked_positions_and_pads():
    h, w, labels = randn(4, 6, 8, seed=1), randn(11, 8, seed=2), torch.tensor([1.0, 0.0, 1.0, 0.3], dtype=torch.float64)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[torch.arange(4), torch.tensor([5, 3, 5, 2])] = True
    base = genrm_loss(h, w, mask, labels, 7, 2)
    noisy = torch.where(mask[..., None], h, randn(4, 6, 8, seed=3) * 100)
    torch.testing.assert_close(genrm_loss(noisy, w, mask, labels, 7, 2), base)
    # left pads: the same rows behind 3 more columns of anything
    padded = torch.cat((randn(4, 3, 8, seed=4), h), 1)
    torch.testing.assert_close(genrm_loss(padded, w, torch.cat((torch.zeros(4, 3, dtype=torch.bool), mask), 1),
                                          labels, 7, 2), base)
    with pytest.raises(ValueError, match="one verdict position per row"):
        genrm_loss(h, w, torch.zeros_like(mask), labels, 7, 2)


def test_genrm_loss_matches_plain_loop():
    h, w = randn(5, 4, 6, seed=5), randn(9, 6, seed=6)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    cols = [3, 1, 2, 0, 3]
    mask = torch.zeros(5, 4, dtype=torch.bool)
    mask[torch.arange(5), torch.tensor(cols)] = True
    total = 0.0
    for i, c in enumerate(cols):
        z = [sum(h[i, c, d].item() * w[v, d].item() for d in range(6)) for v in range(9)]
        log_z = math.log(sum(math.exp(x) for x in z))
        y = labels[i].item()
        total += -(y * (z[4] - log_z) + (1 - y) * (z[8] - log_z))
    assert genrm_loss(h, w, mask, labels, 4, 8).item() == pytest.approx(total / 5, rel=1e-6)  # float32 logits


# --- the model -------------------------------------------------------------------------------


@pytest.fixture
def nano():
    model, tok = new_policy("nano", 0, 128)
    genrm.mark(model, genrm.DEFAULT_QUESTION, *genrm.DEFAULT_TOKENS)
    return model, tok


def test_verdict_tokens_map_through_the_tokenizer(nano):
    _, tok = nano
    v = genrm.verdict_of(tok, "\nOK? ", "Y", "N")
    assert tok.decode(v.question) == "\nOK? " and tok.convert_ids_to_tokens([v.yes, v.no]) == ["Y", "N"]
    with pytest.raises(BadInput, match=r"rm.genrm_yes / rm.genrm_no: expected 'Yes' to be one known token .*\['Y', 'e', 's'\]"):
        genrm.verdict_of(tok, "\nOK? ", "Yes", "No")


def test_scores_are_pad_invariant_and_read_the_yes_no_logits(nano):
    model, tok = nano
    rm = RewardModel(model, tok)
    batch, prompts, responses = batch_scores_equal_alone(rm, tok), PROMPTS, RESPONSES
    # by hand: the full causal LM's logits after prompt + response + EOS + question
    ids = tok(prompts[1] + responses[1], add_special_tokens=False).input_ids + [tok.eos_token_id] + rm.verdict.question
    logits = model(torch.tensor([ids])).logits[0, -1]
    assert batch[1].item() == pytest.approx((logits[rm.verdict.yes] - logits[rm.verdict.no]).item(), abs=1e-4)


def test_saved_folder_reloads_as_plain_causal_lm_and_as_generative_rm(nano, tmp_path):
    model, tok = nano
    save_policy(model, tok, tmp_path / "rm")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "rm")).__name__ == "LlamaForCausalLM"
    rm = load_reward_model(tmp_path / "rm")
    assert rm.kind == "generative" and tok.convert_ids_to_tokens([rm.verdict.yes, rm.verdict.no]) == ["Y", "N"]
    texts = (["3+4="], ["7"])
    torch.testing.assert_close(rm.score_texts(*texts), RewardModel(model, tok).score_texts(*texts))


def test_training_moves_the_verdict_toward_the_labels(nano):
    model, tok = nano
    outcomes = [Outcome(f"{a}+{a}=", str(2 * a + (a % 2)), float(a % 2 == 0)) for a in range(20)]
    rm = RewardModel(model, tok)
    before = rm.score_texts([o.prompt for o in outcomes], [o.response for o in outcomes])
    train_reward_model(model, RMData(outcomes=encode_outcomes(tok, outcomes)), kind="generative", steps=40,
                       batch_size=20, lr=3e-3, warmup=0, weight_decay=0.0, weight=0.0, pad_id=tok.pad_token_id,
                       seed=0, verdict=rm.verdict)
    after = rm.score_texts([o.prompt for o in outcomes], [o.response for o in outcomes])
    right = torch.tensor([o.label for o in outcomes]) > 0.5
    assert abs(before.mean()) < 0.5  # untrained: no opinion
    assert (after[right] > 0).all() and (after[~right] < 0).all()  # the training set, fitted


def test_settings_a_kind_ignores_are_refused():
    config = RunConfig.model_validate({"rm": {"kind": "orm", "genrm_question": "\nRight? "}}).model_dump()
    with pytest.raises(BadInput, match=r"rm.genrm_question=.\\nRight\? .: does nothing here: only rm.kind=generative"):
        checks.rm(config)
    config = RunConfig.model_validate({"rm": {"kind": "generative", "token_level": True}}).model_dump()
    with pytest.raises(BadInput, match="rm.token_level=True: does nothing here"):
        checks.rm(config)
    assert checks.rm(RunConfig.model_validate({"rm": {"kind": "generative", "lm_coef": 0.5}}).model_dump()) == []
    with pytest.raises(ValueError, match="rm.genrm_no: expected a verdict token other than rm.genrm_yes"):
        RunConfig.model_validate({"rm": {"kind": "generative", "genrm_no": "Y"}})


def test_the_orm_reward_slot_takes_a_generative_rm(nano, tmp_path):
    from types import SimpleNamespace

    from rlhfscale.config import RLConfig
    from rlhfscale.rm.sources import load_rm, orm_source

    model, tok = nano
    save_policy(model, tok, tmp_path / "rm")
    rl = RLConfig(reward={"orm": 1.0}, orm_path=str(tmp_path / "rm"))
    rm = load_rm(rl, "orm", tok, None, "cpu")
    assert rm.kind == "generative"
    ids, attn, response_mask = pack(tok, ["2+2=", "10-3="], ["4", "7\nanswer: 7"])
    rollout = SimpleNamespace(sequences=ids, attention_mask=attn, response_mask=response_mask)
    scores = orm_source(rm).score(None, None, rollout)
    torch.testing.assert_close(scores, RewardModel(model, tok).score(ids, attn, response_mask).detach())
    with pytest.raises(BadInput, match="expected an PRM for rl.reward.prm, found a GENERATIVE"):
        load_rm(RLConfig(reward={"prm": 1.0}, prm_path=str(tmp_path / "rm")), "prm", tok, None, "cpu")


def test_a_generative_verifier_cannot_start_a_critic(nano, tmp_path):
    """It has no scalar head: rl.critic_init=rm on it would train a fresh value head under an RM's name."""
    from rlhfscale.models.critic import critic_from_rm

    model, tok = nano
    save_policy(model, tok, tmp_path / "rm")
    with pytest.raises(BadInput, match=r"rm: rl.critic_init=rm expected a scalar-head reward model .* generative"):
        critic_from_rm(tmp_path / "rm")


def test_best_of_n_curves_of_a_generative_verifier_are_over_optimization_curves():
    from rlhfscale.analysis.overopt import BON_COLUMN

    assert BON_COLUMN.match("bon/genrm@16")["rm"] == "genrm"
    assert BON_COLUMN.match("bon/genrm_proxy@4")["proxy"]
