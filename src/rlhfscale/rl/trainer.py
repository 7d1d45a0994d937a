"""The RL loop, top to bottom in the algorithm's order (CleanRL style).

Each iteration: (1) sample n responses for each of P prompts; (2) score them
with the reward sources, shape the scores and place them on the response
tokens; (3) reference log-probs (the KL to the starting policy, a per-token
penalty in the reward or a loss term) and, for PPO, the critic's values; (4)
advantages from the estimator the algorithm names; (5) `epochs` passes of
`minibatches` clipped policy (and value) updates; (6) log. Estimators, losses
and shaping are pure functions from `rl.advantages`, `rl.losses` and
`rewards.shaping`; this module only wires them.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import RLConfig, RunConfig
from ..models import shared_prefix
from ..models.critic import response_values
from ..models.ladder import count_non_embedding
from ..models.train import mixed_precision
from ..rewards.shaping import RunningMeanStd, asymmetric_shrink, clip_rewards, length_penalty, normalize_rewards
from ..rewards.sources import Rewards
from ..rollout.sampler import Rollout, sample
from ..tasks.base import Example
from .advantages import get_advantage
from .losses import AdaptiveKLController, FixedKLController, kl_penalty, masked_mean, masked_var, policy_loss, value_loss

# reward_fn(examples, responses, rollout) -> proxy scores [B], dense rewards [B, R], gold scores [B]
RewardFn = Callable[[Sequence[Example], list[str], Rollout], Rewards]
ESTIMATOR = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "reinforce++": "reinforce++"}
KL_IN_REWARD = {"ppo": True, "reinforce++": True, "grpo": False, "rloo": False}  # rl.kl_in = "auto"


class NonFiniteError(RuntimeError):
    """A reward or loss became NaN or inf; the message names the step and the quantity."""


def check_finite(step: int, **quantities: Tensor) -> None:
    for name, value in quantities.items():
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"step {step}: {name} is not finite (NaN or inf); stopping")


@dataclass
class Batch:
    """One rollout batch, everything the updates need. B responses, T = P + R tokens, R response tokens."""

    ids: Tensor  # [B, T] prompt (left-padded) + response (right-padded)
    attn: Tensor  # [B, T]
    mask: Tensor  # [B, R] 1.0 on response tokens
    prompt_len: int  # P
    old_logprobs: Tensor  # [B, R] under the policy that sampled them
    ref_logprobs: Tensor  # [B, R] under the reference policy
    advantages: Tensor  # [B, R]
    returns: Tensor  # [B, R] the critic's targets
    values: Tensor | None  # [B, R] the critic's values at rollout time (PPO)


def response_logprobs(model, ids, attn, prompt_len: int, temperature: float, with_entropy: bool = False):
    """Log-probs (and entropies) of the response tokens of ids [B, P + R]: ``[B, R]``. The n copies of a
    prompt go through the model once (`models.shared_prefix`)."""
    P = prompt_len
    return shared_prefix.response_logprobs(model, ids[:, :P], attn[:, :P], ids[:, P:], attn[:, P:], temperature,
                                           with_entropy)


def token_rewards(scores: Tensor, dense: Tensor, mask: Tensor) -> Tensor:
    """Per-token rewards ``[B, R]``: each outcome score (``[B]``) on its response's last valid token, plus the
    dense rewards ``[B, R]`` (step rewards on step-end tokens) where they are; 0 on pads."""
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards = dense * mask
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores * (mask.sum(-1) > 0)
    return rewards


def shape_scores(scores: Tensor, lengths: Tensor, n: int, rl: RLConfig, running: RunningMeanStd) -> Tensor:
    """The config's shaping of the proxy scores ``[B]``: length penalty, normalize or shrink, clip."""
    if rl.length_penalty:
        scores = length_penalty(scores, lengths, coef=rl.length_penalty, target_len=rl.length_target)
    if rl.shaping == "normalize":
        scores = normalize_rewards(scores, mode=rl.norm_mode, n=n, running=running)
    elif rl.shaping == "asymmetric":
        scores = asymmetric_shrink(scores, pos_factor=rl.shrink_pos, neg_factor=rl.shrink_neg,
                                   reference=rl.shrink_reference, n=n, bound=rl.shrink_bound)
    return scores if rl.reward_clip is None else clip_rewards(scores, rl.reward_clip)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over valid tokens (1: perfect critic, 0: a constant)."""
    var = masked_var(returns, mask)
    return (1 - masked_var(returns - values, mask) / var).item() if var > 0 else float("nan")


def kl_in_reward(rl: RLConfig) -> bool:
    return KL_IN_REWARD[rl.algorithm] if rl.kl_in == "auto" else rl.kl_in == "reward"


def make_actor(policy, bf16: bool):
    """The model that samples: the policy itself, or with rl.bf16 a bf16 copy (refreshed by `sync_actor`)."""
    return copy.deepcopy(policy).to(torch.bfloat16).eval().requires_grad_(False) if bf16 else policy


@torch.no_grad()
def sync_actor(actor, policy) -> None:
    if actor is not policy:
        for a, p in zip(actor.parameters(), policy.parameters()):
            a.copy_(p)


def make_optimizer(policy, critic, rl: RLConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the policy (lr) and the critic (critic_lr), no weight decay; linear warm-up, then constant."""
    groups = [{"params": list(policy.parameters()), "lr": rl.lr}]
    if critic is not None:
        groups.append({"params": list(critic.parameters()), "lr": rl.critic_lr})
    opt = torch.optim.AdamW(groups, betas=(rl.adam_beta1, rl.adam_beta2), eps=rl.adam_eps, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(rl.warmup, 1)))


def step_flops(seq_tokens: int, rl: RLConfig, policy_n: int, critic_n: int, reward_n: int) -> float:
    """Model FLOPs of one RL step, N the non-embedding parameters: 2·N per token sampled (prompt and response),
    6·N per token trained per epoch (policy and critic), 2·N per reference, critic or RM forward token."""
    sample_f, ref_f = 2 * policy_n, 2 * policy_n
    train_f = 6 * (policy_n + critic_n) * rl.epochs
    return (sample_f + ref_f + train_f + 2 * critic_n + 2 * reward_n) * seq_tokens


def train(
    policy, tok, prompts: Sequence[Example], reward_fn: RewardFn, cfg: RunConfig, *,
    max_new_tokens: int, critic=None, reward_params: int = 0, on_step: Callable[[int, dict], None] | None = None,
) -> None:
    """Optimize `policy` (and, for PPO, `critic`) in place with the algorithm ``cfg.rl.algorithm`` names."""
    rl, sc = cfg.rl, cfg.sampling
    n, temperature, device = rl.n_samples, sc.temperature or 1.0, policy.device
    rng, gen = random.Random(cfg.seed), torch.Generator(device=device).manual_seed(cfg.seed)
    amp = lambda: mixed_precision(device, rl.bf16)  # noqa: E731
    estimator = get_advantage(ESTIMATOR[rl.algorithm])
    kl_ctl = AdaptiveKLController(rl.kl_coef, rl.kl_target, rl.kl_horizon) if rl.kl_target else FixedKLController(rl.kl_coef)
    ref, actor = copy.deepcopy(policy).eval().requires_grad_(False), make_actor(policy, rl.bf16)
    (opt, schedule), running = make_optimizer(policy, critic, rl), RunningMeanStd()
    params = (count_non_embedding(policy), count_non_embedding(critic) if critic is not None else 0, reward_params)
    prompt_ids = {e.prompt: tok(e.prompt, add_special_tokens=False).input_ids for e in prompts}
    flops = 0.0

    for step in range(1, rl.steps + 1):
        t0 = time.perf_counter()
        # 1. rollout: n responses for each of P prompts, the n of a prompt contiguous
        examples = [e for e in draw(rng, prompts, rl.prompts_per_step) for _ in range(n)]
        ro = sample(actor, [prompt_ids[e.prompt] for e in examples], max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=sc.top_p, top_k=sc.top_k,
                    eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=gen)
        ids, attn, Lp, mask = ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1], ro.response_mask.float()
        t_gen = time.perf_counter() - t0

        # 2. reward: proxy scores from the sources, shaped, on the last token; dense step rewards where they are
        r = reward_fn(examples, tok.batch_decode(ro.response_ids, skip_special_tokens=True), ro)
        check_finite(step, reward=r.scores, dense_reward=r.dense)
        rewards = token_rewards(shape_scores(r.scores, ro.response_lengths, n, rl, running), r.dense, mask)
        proxy, shaped = r.scores + (r.dense * mask).sum(-1), rewards.sum(-1)

        # 3. KL to the reference policy (a per-token penalty in the reward, or a loss term), critic values
        with torch.no_grad(), amp():
            ref_logprobs = response_logprobs(ref, ids, attn, Lp, temperature)
            values = response_values(critic, ids, attn, Lp) if critic is not None else None
        kl = kl_penalty(ro.logprobs, ref_logprobs, rl.kl_estimator, mask)
        if kl_in_reward(rl):
            rewards = rewards - kl_ctl.value * kl

        # 4. advantages, and the critic's targets
        advantages, returns = estimator(rewards, mask, n=n, values=values, gamma=rl.gamma,
                                        gae_lambda=rl.gae_lambda, norm_std=rl.norm_std)

        # 5. clipped policy (and value) updates
        batch = Batch(ids, attn, mask, Lp, ro.logprobs, ref_logprobs, advantages, returns, values)
        stats = update(policy, critic, opt, batch, 0.0 if kl_in_reward(rl) else kl_ctl.value, cfg, step, amp)
        schedule.step()
        sync_actor(actor, policy)
        kl_seq = kl.sum(-1).mean().item()
        kl_ctl.update(kl_seq, len(examples))

        # 6. log
        elapsed, n_tokens, seq_tokens = time.perf_counter() - t0, int(mask.sum().item()), int(attn.sum().item())
        flops += step_flops(seq_tokens, rl, *params)
        info = {
            "rl/proxy_reward": proxy.mean().item(), "rl/reward": shaped.mean().item(),
            "rl/gold_reward": r.gold.mean().item(), **r.parts, "rl/kl": kl_seq, "rl/kl_coef": kl_ctl.value, **stats,
            "rl/response_len": n_tokens / len(examples), "rl/samples_per_s": len(examples) / elapsed,
            "rl/tokens_per_s": n_tokens / elapsed, "rl/gen_frac": t_gen / elapsed, "rl/seq_tokens": seq_tokens,
            "flops/rl": flops,
        }
        if values is not None:
            info["rl/explained_var"] = explained_variance(values, returns, mask)
        if on_step is not None:
            on_step(step, info)


def draw(rng: random.Random, prompts: Sequence[Example], k: int) -> list[Example]:
    """k prompts, without replacement when there are enough."""
    return rng.sample(list(prompts), k) if k <= len(prompts) else rng.choices(list(prompts), k=k)


def minibatches(batch_size: int, group: int, count: int, gen: torch.Generator) -> list[Tensor]:
    """Shuffled row indices in `count` chunks; rows move in whole groups of `group` (loss_agg=group)."""
    order = torch.randperm(batch_size // group, generator=gen)
    chunks = order.chunk(min(count, len(order)))
    return [(c[:, None] * group + torch.arange(group)).flatten() for c in chunks]


def update(policy, critic, opt, b: Batch, kl_coef: float, cfg: RunConfig, step: int, amp) -> dict[str, float]:
    """`epochs` passes of `minibatches` optimizer steps on one rollout batch; returns mean diagnostics."""
    rl, temperature = cfg.rl, cfg.sampling.temperature or 1.0
    group = rl.n_samples if rl.loss_agg == "group" else 1
    shuffle = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    policy.train()
    totals: dict[str, float] = {}
    for _ in range(rl.epochs):
        chunks = minibatches(b.ids.shape[0], group, rl.minibatches, shuffle)
        for idx in chunks:
            m = b.mask[idx]
            with amp():
                logprobs, entropy = response_logprobs(policy, b.ids[idx], b.attn[idx], b.prompt_len, temperature,
                                                      with_entropy=True)
            pg_loss, pg_stats = policy_loss(logprobs, b.old_logprobs[idx], b.advantages[idx], m,
                                            clip_coef=rl.clip_coef, agg=rl.loss_agg, n=group)
            entropy_bonus = masked_mean(entropy, m)
            kl = masked_mean(kl_penalty(logprobs, b.ref_logprobs[idx], rl.kl_estimator), m)
            loss = pg_loss - rl.entropy_coef * entropy_bonus + kl_coef * kl
            row = {"rl/pg_loss": pg_loss.item(), "rl/entropy": entropy_bonus.item(), "rl/kl_loss": kl.item(),
                   "rl/clipfrac": pg_stats["clipfrac"].item(), "rl/approx_kl": pg_stats["approx_kl"].item()}
            if critic is not None:
                with amp():
                    new_values = response_values(critic, b.ids[idx], b.attn[idx], b.prompt_len)
                v_loss, v_stats = value_loss(new_values, b.values[idx], b.returns[idx], m,
                                             clip_coef_value=rl.clip_coef_value, agg=rl.loss_agg, n=group)
                loss = loss + v_loss
                row |= {"rl/v_loss": v_loss.item(), "rl/vf_clipfrac": v_stats["vf_clipfrac"].item()}
            check_finite(step, loss=loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), rl.max_grad_norm)
            critic_grad_norm = torch.zeros(())
            if critic is not None:
                critic_grad_norm = torch.nn.utils.clip_grad_norm_(critic.parameters(), rl.max_grad_norm)
            check_finite(step, grad_norm=grad_norm, critic_grad_norm=critic_grad_norm)
            opt.step()
            row["rl/grad_norm"] = grad_norm.item()
            for k, v in row.items():
                totals[k] = totals.get(k, 0.0) + v / (rl.epochs * len(chunks))
    policy.eval()
    return totals
