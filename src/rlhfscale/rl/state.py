"""What the RL loop starts from and what it saves: the reference policy, the actor that samples, the optimizer
and its schedule, and the loop's own state (RNGs, KL controller, running reward statistics, FLOPs), saved every
``rl.checkpoint_every`` steps and restored on resume."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..config import RLConfig
from ..models.checkpoint import Checkpointer, rng_state, set_rng_state
from ..models.lora import fast_merged, has_adapters, merged_copy, sync_merged
from ..rewards.shaping import RunningMeanStd
from .losses import AdaptiveKLController, FixedKLController

if TYPE_CHECKING:
    from .trainer import RLSettings, RolloutEngine


def reference(policy, device: str | None = None):
    """The reference policy (the starting one, before any resume): a frozen copy (on `device`, rl.ref_device), or,
    for a policy with LoRA adapters, the policy itself, run with its adapters off (its base weights never change),
    no second copy."""
    if has_adapters(policy):
        return policy
    return copy.deepcopy(policy).to(device or policy.device).eval().requires_grad_(False)


def make_actor(policy, bf16: bool):
    """The model that samples: the policy itself, or with rl.bf16 a bf16 copy (refreshed by `sync_actor`). A policy
    with LoRA adapters samples from a copy with the adapters merged, when bf16 asks for a copy anyway or when that
    copy takes the fast path (a ladder model); else from itself."""
    if fast_merged(policy) or (bf16 and has_adapters(policy)):
        actor = merged_copy(policy)
    elif bf16:
        actor = copy.deepcopy(policy)
    else:
        return policy
    return actor.to(torch.bfloat16 if bf16 else actor.dtype).eval().requires_grad_(False)


@torch.no_grad()
def sync_actor(actor, policy) -> None:
    """Copy the policy's weights (merged with its LoRA adapters, if any) into the actor after an update."""
    if actor is policy:
        return
    if has_adapters(policy):
        sync_merged(actor, policy)
        return
    for a, p in zip(actor.parameters(), policy.parameters()):
        a.copy_(p)


def make_optimizer(policy, critic, rl: RLConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the policy (lr) and the critic (critic_lr), no weight decay; linear warm-up, then constant."""
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": rl.lr}]
    if critic is not None:
        groups.append({"params": list(critic.parameters()), "lr": rl.critic_lr})
    opt = torch.optim.AdamW(groups, betas=(rl.adam_beta1, rl.adam_beta2), eps=rl.adam_eps, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(rl.warmup, 1)))


@dataclass
class LoopState:
    """Everything besides the models and the optimizer that a resumed run must restore."""

    rng: random.Random  # draws the prompts of each step
    gen: torch.Generator  # the sampler's randomness
    running: RunningMeanStd  # running reward statistics (shaping=normalize, norm_mode=running)
    kl_ctl: FixedKLController | AdaptiveKLController
    flops: float = 0.0
    step: int = 0  # the last finished step

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng, self.gen), "running": vars(self.running).copy(),
                "kl_coef": self.kl_ctl.value, "flops": self.flops}

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        set_rng_state(state["rng"], self.rng, self.gen)
        self.running = RunningMeanStd(**state["running"])
        self.kl_ctl.value, self.flops, self.step = state["kl_coef"], state["flops"], step


def save_state(ckpt: Checkpointer, loop: LoopState, policy, critic, opt, schedule, extra: dict[str, Any]) -> None:
    ckpt.save(loop.step, {"loop": loop.state_dict(), "policy": policy.state_dict(), "opt": opt.state_dict(),
                          "schedule": schedule.state_dict(), "extra": extra,
                          "critic": critic.state_dict() if critic is not None else None})


def restore_state(state: dict[str, Any], loop: LoopState, policy, critic, opt, schedule) -> None:
    policy.load_state_dict(state["policy"])
    if critic is not None:
        critic.load_state_dict(state["critic"])
    opt.load_state_dict(state["opt"])
    schedule.load_state_dict(state["schedule"])
    loop.load_state_dict(state["loop"], state["step"])


def start(policy, critic, cfg: RLSettings, resume: dict[str, Any] | None, engine: RolloutEngine | None):
    """What the loop starts from: its state (`LoopState`), the reference policy, the optimizer and its schedule,
    and the actor that samples; restored from `resume` where given (and the engine given the resumed policy)."""
    rl = cfg.rl
    kl_ctl = (AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target
              else FixedKLController(rl.kl_coef))
    loop = LoopState(random.Random(cfg.seed), torch.Generator(device=policy.device).manual_seed(cfg.seed),
                     RunningMeanStd(), kl_ctl)
    ref = reference(policy, rl.ref_device)
    opt, schedule = make_optimizer(policy, critic, rl)
    if resume is not None:
        restore_state(resume, loop, policy, critic, opt, schedule)
    actor = make_actor(policy, rl.bf16)
    if engine is not None and resume is not None:
        engine.push(policy)  # the engine started from the input policy; the run continues from the checkpoint
    return loop, ref, opt, schedule, actor
