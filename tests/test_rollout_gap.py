"""The native sampler's log-probs against the trainer's, logged every RL step (`rl/logprob_*`), as the vLLM
backend's are: the two backends compare on the same numbers."""

import copy

import torch
from fake_rewards import coin_flips

from rlhfscale.config import RunConfig
from rlhfscale.models.io import new_policy
from rlhfscale.rl.trainer import train
from rlhfscale.rollout.sampler import sample
from rlhfscale.tasks import make_task


def gaps(bf16: bool, minibatches: int = 1) -> list[dict]:
    cfg = RunConfig.model_validate({"rl": {"steps": 2, "prompts_per_step": 8, "n_samples": 4, "lr": 0.01,
                                           "warmup": 0, "bf16": bf16, "minibatches": minibatches}})
    policy, tok = new_policy("micro", 0, 64)
    rows = []
    train(policy, tok, make_task(cfg.task).examples("train", 16), coin_flips(), cfg, max_new_tokens=8,
          on_step=lambda step, info: rows.append(info))
    return [{k[len("rl/logprob_"):]: v for k, v in r.items() if k.startswith("rl/logprob_")} for r in rows]


def test_float32_sampler_and_trainer_agree_to_rounding():
    rows = gaps(bf16=False, minibatches=2)
    assert len(rows) == 2 and all(set(r) == {"gap_mean", "gap_max", "ratio_std"} for r in rows)
    # the second step samples from the updated policy: the gap is measured against it, not the old one
    assert all(r["gap_max"] < 1e-4 and r["ratio_std"] < 1e-4 for r in rows), rows


def test_bf16_sampling_shows_a_small_gap():
    rows = gaps(bf16=True)
    assert all(1e-4 < r["gap_mean"] < 0.05 and r["gap_mean"] <= r["gap_max"] for r in rows), rows
    assert all(0 < r["ratio_std"] < 0.1 for r in rows), rows


class ShiftedEngine:
    """A rollout engine for the test: the native sampler on a copy of the policy that only `push` updates, its
    log-probs reported `shift` higher than they are."""

    def __init__(self, policy, shift: float):
        self.model, self.shift, self.pushes = copy.deepcopy(policy), shift, 0
        self.gen = torch.Generator().manual_seed(1)

    def sample(self, prompts, *, device, **kwargs):
        ro = sample(self.model, prompts, generator=self.gen, **kwargs)
        ro.logprobs = (ro.logprobs + self.shift) * ro.response_mask
        return ro

    def push(self, model):
        self.pushes += 1
        with torch.no_grad():
            for mine, theirs in zip(self.model.parameters(), model.parameters(), strict=True):
                mine.copy_(theirs)


def test_an_engines_log_probs_are_replaced_by_the_trainers_and_their_gap_logged():
    """With a rollout engine, the behaviour log-probs are the trainer's own (the first update's ratio is 1: nothing
    clipped, approx_kl 0, though the engine's are 0.3 off), the gap to the engine's is logged, and the engine gets
    the weights after every update."""
    cfg = RunConfig.model_validate({"rl": {"steps": 2, "prompts_per_step": 8, "n_samples": 4, "lr": 0.01,
                                           "warmup": 0, "bf16": False}})
    policy, tok = new_policy("micro", 0, 64)
    engine, rows = ShiftedEngine(policy, 0.3), []
    train(policy, tok, make_task(cfg.task).examples("train", 16), coin_flips(), cfg, max_new_tokens=8,
          on_step=lambda step, info: rows.append(info), engine=engine)
    assert engine.pushes == 2
    assert all(torch.equal(a, b) for a, b in zip(engine.model.parameters(), policy.parameters(), strict=True))
    for r in rows:
        assert abs(r["rl/logprob_gap_mean"] - 0.3) < 1e-4 and abs(r["rl/logprob_gap_max"] - 0.3) < 1e-4, r
        assert r["rl/clipfrac"] == 0 and abs(r["rl/approx_kl"]) < 1e-6, r
