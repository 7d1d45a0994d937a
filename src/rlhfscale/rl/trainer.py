"""The RL loop, top to bottom in the algorithm's order (CleanRL style).

Each iteration: (1) sample n responses for each of P prompts; (2) score them
with the reward function; (3) per-token KL to the reference policy; (4)
advantages from the estimator the config names; (5) clipped policy-gradient
updates over minibatches and epochs; (6) log. Estimators and losses are pure
functions from `rl.advantages` / `rl.losses`; this module only wires them.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..models.llama import token_logprobs
from ..models.train import adamw
from ..rollout.sampler import Rollout, sample
from ..tasks.base import Example
from .advantages import get_advantage
from .losses import kl_penalty, masked_mean, policy_loss

# reward_fn(examples, responses, rollout) -> token_rewards [B, R] and scalar diagnostics
RewardFn = Callable[[Sequence[Example], list[str], Rollout], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteError(RuntimeError):
    """A reward or loss became NaN or inf; the message names the step and the quantity."""


def check_finite(step: int, **quantities: torch.Tensor) -> None:
    for name, value in quantities.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"step {step}: {name} is not finite (NaN or inf); stopping")


@dataclass
class RolloutBatch:
    ids: torch.Tensor  # [B, P+R] prompt (left-padded) + response (right-padded)
    attn: torch.Tensor  # [B, P+R]
    mask: torch.Tensor  # [B, R] 1 on response tokens
    old_logprobs: torch.Tensor  # [B, R]
    advantages: torch.Tensor  # [B, R]
    prompt_len: int


def response_logprobs(model, ids, attn, prompt_len: int, temperature: float, with_entropy: bool = False):
    """Log-probs (and entropies) of the response tokens: ``[B, R]``."""
    out = token_logprobs(model, ids, attn, temperature=temperature, with_entropy=with_entropy)
    if with_entropy:
        return out[0][:, prompt_len - 1:], out[1][:, prompt_len - 1:]
    return out[:, prompt_len - 1:]


def outcome_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place one score per response on its last valid token: ``scores [B]``, ``mask [B, R]`` -> ``[B, R]``."""
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=mask.device)
    rewards[torch.arange(mask.shape[0], device=mask.device), last] = scores * (mask.sum(-1) > 0)
    return rewards


def train(
    policy, tok, prompts: Sequence[Example], reward_fn: RewardFn, cfg: RunConfig, *,
    max_new_tokens: int, on_step: Callable[[int, dict], None] | None = None,
) -> None:
    """Optimize `policy` in place with the algorithm ``cfg.rl.algorithm`` names."""
    rl, sc = cfg.rl, cfg.sampling
    P, n = rl.prompts_per_step, rl.n_samples
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=next(policy.parameters()).device).manual_seed(cfg.seed)
    estimator = get_advantage(rl.algorithm)
    ref = copy.deepcopy(policy).eval().requires_grad_(False) if rl.kl_coef > 0 else None
    opt = adamw(policy, rl.lr)
    temperature = sc.temperature or 1.0
    prompt_ids = {id(e): tok(e.prompt, add_special_tokens=False).input_ids for e in prompts}

    for step in range(1, rl.steps + 1):
        t0 = time.perf_counter()
        # 1. rollout: n samples for each of P prompts, the n of a prompt contiguous
        batch = rng.sample(list(prompts), P) if P <= len(prompts) else rng.choices(list(prompts), k=P)
        examples = [e for e in batch for _ in range(n)]
        policy.eval()
        ro = sample(policy, [prompt_ids[id(e)] for e in examples], max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=sc.top_p, top_k=sc.top_k,
                    eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=gen)
        mask = ro.response_mask.float()
        t_gen = time.perf_counter() - t0

        # 2. reward
        responses = tok.batch_decode(ro.response_ids, skip_special_tokens=True)
        token_rewards, reward_info = reward_fn(examples, responses, ro)
        check_finite(step, reward=token_rewards)

        # 3. KL to the reference policy, as a per-token penalty in the reward (reinforce++) or in the loss
        ids, attn, Lp = ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1]
        ref_logprobs = None
        if ref is not None:
            with torch.no_grad():
                ref_logprobs = response_logprobs(ref, ids, attn, Lp, temperature)
            if rl.algorithm == "reinforce++":
                token_rewards = token_rewards - rl.kl_coef * kl_penalty(ro.logprobs, ref_logprobs, "k1") * mask

        # 4. advantages
        advantages, _ = estimator(token_rewards, mask, n=n, norm_std=rl.norm_std)

        # 5. clipped policy-gradient updates
        policy.train()
        stats = update_policy(policy, opt, ids, attn, mask, ro.logprobs, advantages, ref_logprobs, Lp, temperature, cfg, step)

        # 6. log
        n_tokens = int(mask.sum().item())
        elapsed = time.perf_counter() - t0
        info = {
            "rl/reward": (token_rewards * mask).sum(-1).mean().item(), **reward_info, **stats,
            "rl/response_len": n_tokens / mask.shape[0], "rl/samples_per_s": mask.shape[0] / elapsed,
            "rl/tokens_per_s": n_tokens / elapsed, "rl/gen_frac": t_gen / elapsed, "rl/gen_tokens": n_tokens,
        }
        if on_step is not None:
            on_step(step, info)
    policy.eval()


def update_policy(policy, opt, ids, attn, mask, old_logprobs, advantages, ref_logprobs, Lp, temperature, cfg, step):
    """`epochs` passes of `minibatches` optimizer steps on one rollout batch; returns mean diagnostics."""
    rl = cfg.rl
    B = ids.shape[0]
    group = rl.n_samples if rl.loss_agg == "group" else 1
    chunks = torch.arange(B // group).view(rl.minibatches, -1) if B // group >= rl.minibatches else torch.arange(B // group).view(1, -1)
    totals: dict[str, float] = {}
    for _ in range(rl.epochs):
        for chunk in chunks:
            idx = (chunk[:, None] * group + torch.arange(group)).flatten()
            m = mask[idx]
            logprobs, entropy = response_logprobs(policy, ids[idx], attn[idx], Lp, temperature, with_entropy=True)
            pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[idx], advantages[idx], m,
                                            clip_coef=rl.clip_coef, agg=rl.loss_agg, n=group)
            ent = masked_mean(entropy, m)
            loss = pg_loss - rl.entropy_coef * ent
            kl = torch.zeros(())
            if ref_logprobs is not None:
                kl = masked_mean(kl_penalty(logprobs, ref_logprobs[idx], rl.kl_estimator), m)
                if rl.algorithm != "reinforce++":
                    loss = loss + rl.kl_coef * kl
            check_finite(step, loss=loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.max_grad_norm)
            opt.step()
            row = {"rl/pg_loss": pg_loss.item(), "rl/entropy": ent.item(), "rl/kl": kl.item(),
                   "rl/grad_norm": grad_norm.item(), **{f"rl/{k}": float(v) for k, v in pg_stats.items()}}
            for k, v in row.items():
                totals[k] = totals.get(k, 0.0) + v / (rl.epochs * len(chunks))
    return totals
