"""The likelihood RM (SimPO's reward, Meng et al. 2024): its score, its saved folder, its training, its
refusals, and end to end through the stages."""

import json
from functools import partial

import pytest
import torch
from corrupt_chat import config as chat_config
from rm_checks import PROMPTS, RESPONSES, batch_scores_equal_alone
from transformers import AutoModelForCausalLM

from rlhfscale import checks
from rlhfscale.config import RunConfig
from rlhfscale.errors import BadInput
from rlhfscale.models import llrm
from rlhfscale.models.io import new_policy, save_policy
from rlhfscale.models.reward import RewardModel, load_reward_model, pack
from rlhfscale.rm.data import encode_split_pairs
from rlhfscale.rm.train import RMData, train_reward_model
from rlhfscale.stages import bon, rm
from rlhfscale.tasks.jsonl import PreferencePair

BETA = 2.0


@pytest.fixture
def nano():
    model, tok = new_policy("nano", 0, 128)
    llrm.mark(model, BETA)
    return model, tok


def test_score_is_beta_times_the_mean_token_log_likelihood_and_pad_invariant(nano):
    model, tok = nano
    rm = RewardModel(model, tok)
    batch, prompts, responses = batch_scores_equal_alone(rm, tok), PROMPTS, RESPONSES
    # by hand: the full causal LM's log-softmax at the response tokens and EOS, averaged, times beta
    p_ids = tok(prompts[1], add_special_tokens=False).input_ids
    r_ids = tok(responses[1], add_special_tokens=False).input_ids + [tok.eos_token_id]
    with torch.no_grad():
        logp = model(torch.tensor([p_ids + r_ids])).logits[0].log_softmax(-1)
    by_hand = sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(r_ids)) / len(r_ids)
    assert rm.kind == "likelihood" and batch[1].item() == pytest.approx(BETA * by_hand, abs=1e-4)


def test_saved_folder_reloads_as_plain_causal_lm_and_as_likelihood_rm(nano, tmp_path):
    model, tok = nano
    save_policy(model, tok, tmp_path / "rm")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "rm")).__name__ == "LlamaForCausalLM"
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.kind == "likelihood" and loaded.model.config.likelihood_rm == {"beta": BETA}
    texts = (["3+4=", "5+5="], ["7", "11"])
    torch.testing.assert_close(loaded.score_texts(*texts), RewardModel(model, tok).score_texts(*texts))


def test_training_ranks_the_chosen_responses_above_the_rejected(nano):
    model, tok = nano
    pairs = [PreferencePair(f"{a}+{a}=", str(2 * a), str(2 * a + 1)) for a in range(12)]
    rm = RewardModel(model, tok)

    def margins():
        prompts = [p.prompt for p in pairs]
        return rm.score_texts(prompts, [p.chosen for p in pairs]) - rm.score_texts(prompts, [p.rejected for p in pairs])

    before = margins()
    train_reward_model(model, RMData(split_pairs=encode_split_pairs(tok, pairs)), kind="likelihood", steps=30,
                       batch_size=12, lr=3e-3, warmup=0, weight_decay=0.0, weight=1.0, pad_id=tok.pad_token_id,
                       seed=0, beta=BETA)
    after = margins()
    assert (before > 0).float().mean() < 0.9  # an untrained LM has no preference here
    assert (after > 0).all() and after.mean() > before.mean() + 1.0  # the training pairs, fitted


def test_settings_a_kind_ignores_are_refused():
    def refuse(rm_settings, match):
        with pytest.raises(BadInput, match=match):
            checks.rm(RunConfig.model_validate({"rm": rm_settings}).model_dump())

    refuse({"kind": "orm", "likelihood_beta": 1.0}, r"rm.likelihood_beta=1.0: does nothing here: only rm.kind=likel")
    refuse({"kind": "likelihood", "lm_coef": 0.5}, r"rm.lm_coef=0.5: does nothing here: a likelihood RM's score")
    refuse({"kind": "likelihood", "token_level": True}, "rm.token_level=True: does nothing here")
    refuse({"kind": "likelihood", "loss": "bce"}, "rm.loss=bce: does nothing here")
    accepted = RunConfig.model_validate({"rm": {"kind": "likelihood", "likelihood_beta": 1.0}}).model_dump()
    assert checks.rm(accepted) == []
    with pytest.raises(ValueError, match="likelihood_beta"):
        RunConfig.model_validate({"rm": {"kind": "likelihood", "likelihood_beta": 0.0}})


def test_the_orm_reward_slot_takes_it_and_it_cannot_start_a_critic(nano, tmp_path):
    from types import SimpleNamespace

    from rlhfscale.analysis.overopt import BON_COLUMN
    from rlhfscale.config import RLConfig
    from rlhfscale.models.critic import critic_from_rm
    from rlhfscale.rm.sources import load_rm, orm_source

    model, tok = nano
    save_policy(model, tok, tmp_path / "rm")
    loaded = load_rm(RLConfig(reward={"orm": 1.0}, orm_path=str(tmp_path / "rm")), "orm", tok, None, "cpu")
    ids, attn, response_mask = pack(tok, ["2+2=", "10-3="], ["4", "7\nanswer: 7"])
    rollout = SimpleNamespace(sequences=ids, attention_mask=attn, response_mask=response_mask)
    torch.testing.assert_close(orm_source(loaded).score(None, None, rollout),
                               RewardModel(model, tok).score(ids, attn, response_mask).detach())
    with pytest.raises(BadInput, match=r"rl.critic_init=rm expected a scalar-head reward model .* a likelihood RM"):
        critic_from_rm(tmp_path / "rm")
    assert BON_COLUMN.match("bon/llrm_proxy@16")["rm"] == "llrm"


def test_a_likelihood_rm_learns_to_rank_held_out_pairs_through_the_stages(corrupt_chat_labels, tmp_path):
    """sample (corrupted gold responses, no policy) -> label -> rm with rm.kind=likelihood -> bon."""
    stage_config = partial(chat_config, "likelihood")
    inputs = {"label": str(corrupt_chat_labels / "label")}
    untrained = rm.run(stage_config(steps=0), inputs, tmp_path / "untrained")
    trained = rm.run(stage_config(), inputs, tmp_path / "trained")
    assert trained["rm/heldout_pairs"] >= 250 and trained["rm/pairs"] > 0 and trained["rm/outcomes"] == 0
    # measured: 0.648 trained, 0.537 untrained (a random LM; from a policy that writes the task it starts near 0.88)
    assert trained["rm/pair_acc"] > max(0.6, untrained["rm/pair_acc"] + 0.08), (trained, untrained)
    assert load_reward_model(tmp_path / "trained" / "rm").kind == "likelihood"
    summary = bon.run(stage_config(), {"sft": str(tmp_path / "trained" / "rm"), "rm": str(tmp_path / "trained")},
                      tmp_path / "bon")
    assert {"bon/llrm@4", "bon/llrm_proxy@4", "llrm/pair_acc"} <= set(summary)


def test_rm_init_sft_starts_from_the_trials_own_policy_of_its_size(tmp_path):
    """rm.init=sft: the rm stage's backbone is its sft input (no rm_base); another size, or no sft, is refused."""
    from safetensors.torch import load_file

    policy, tok = new_policy("nano", 3, 128)
    save_policy(policy, tok, tmp_path / "policy")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": str(a + 2)}) + "\n"
                             for a in range(8)))
    inputs = {"sft": str(tmp_path / "policy"), "pairs": str(pairs)}
    settings = {"threads": 1, "policy": {"size": "nano"}, "rm": {"kind": "likelihood", "size": "nano", "init": "sft",
                                                                  "steps": 0}}
    summary = rm.run(RunConfig.model_validate(settings), inputs, tmp_path / "rm")
    assert summary["rm/init_from_policy"] == 1.0 and summary["rm/pairs"] == 8
    saved, start = load_file(tmp_path / "rm" / "rm" / "model.safetensors"), policy.state_dict()
    assert all(torch.equal(saved[k], start[k]) for k in saved)  # the policy's own weights (the seed differs: 3, not 0)
    settings["rm"]["size"] = "micro"
    with pytest.raises(BadInput, match=r"^rm.size=micro: rm.init=sft starts the RM from the trial's SFT policy"):
        rm.run(RunConfig.model_validate(settings), inputs, tmp_path / "rm_micro")
    with pytest.raises(BadInput, match=r"^rm.init=sft: expected the trial's SFT policy"):
        rm.run(RunConfig.model_validate(settings), {"pairs": str(pairs)}, tmp_path / "rm_none")
