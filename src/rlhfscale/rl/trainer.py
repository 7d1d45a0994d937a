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

import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..algorithms import ALGORITHMS
from ..config import RLConfig, SamplingConfig
from ..models import forward
from ..models.critic import response_values
from ..models.checkpoint import Checkpointer
from ..models.ladder import count_non_embedding
from ..models.lora import adapters_off
from ..models.text import encode_prompts
from ..models.train import mixed_precision
from ..rewards.shaping import RunningMeanStd, asymmetric_shrink, clip_rewards, length_penalty, normalize_rewards
from ..rm.sources import Rewards
from ..rollout.sampler import Rollout, sample
from ..tasks.base import Example
from .advantages import ESTIMATORS
from .losses import kl_penalty, logprob_gap, masked_mean, masked_var, policy_loss, value_loss
from .state import LoopState, save_state, start, sync_actor

class RolloutEngine(Protocol):
    """Another rollout engine than the native sampler (`rollout.vllm_engine.VLLMEngine`)."""

    def sample(self, prompts: list[list[int]], **kwargs: Any) -> Rollout: ...

    def push(self, model) -> None: ...


# reward_fn(examples, responses, rollout) -> proxy scores [B], dense rewards [B, R], gold scores [B]
RewardFn = Callable[[Sequence[Example], list[str], Rollout], Rewards]


class RLSettings(Protocol):
    """What the loop reads of a config: a `RunConfig` or the rl stage's input (`contract.view`)."""

    seed: int
    rl: RLConfig
    sampling: SamplingConfig


class NonFiniteError(RuntimeError):
    """A reward or loss became NaN or inf; the message names the step and the quantity. The run's folder
    (the last good policy, the log) is kept as its output."""

    keep_output = True


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
    prompt go through the model once; `models.forward` picks the fast Llama path or the model's own forward."""
    P = prompt_len
    return forward.response_logprobs(model, ids[:, :P], attn[:, :P], ids[:, P:], attn[:, P:], temperature,
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
    """Whether beta * KL goes into the per-token reward (else into the loss): rl.kl_in, or the algorithm's choice."""
    return (ALGORITHMS.get(rl.algorithm).kl_in if rl.kl_in == "auto" else rl.kl_in) == "reward"


def on_device_of(model, fn, ids: Tensor, attn: Tensor, *args, **kwargs) -> Tensor:
    """fn(model, ids, attn, ...) with the inputs on the model's device (rl.ref_device, rl.critic_device); the
    result back on the inputs' device (gradients flow through the move)."""
    dev = forward.input_device(model)
    return fn(model, ids.to(dev), attn.to(dev), *args, **kwargs).to(ids.device)


def step_flops(seq_tokens: int, rl: RLConfig, policy_n: int, critic_n: int, reward_n: int) -> float:
    """Model FLOPs of one RL step, N the non-embedding parameters: 2·N per token sampled (prompt and response),
    6·N per token trained per epoch (policy and critic), 2·N per reference, critic or RM forward token."""
    sample_f, ref_f = 2 * policy_n, 2 * policy_n
    train_f = 6 * (policy_n + critic_n) * rl.epochs
    return (sample_f + ref_f + train_f + 2 * critic_n + 2 * reward_n) * seq_tokens


def train(
    policy, tok, prompts: Sequence[Example], reward_fn: RewardFn, cfg: RLSettings, *,
    max_new_tokens: int, critic=None, reward_params: int = 0, on_step: Callable[[int, dict], None] | None = None,
    checkpoint: Checkpointer | None = None, resume: dict[str, Any] | None = None,
    extra_state: Callable[[], dict[str, Any]] = dict, engine: RolloutEngine | None = None,
) -> None:
    """Optimize `policy` (and, for PPO, `critic`) in place with the algorithm ``cfg.rl.algorithm`` names.

    With `checkpoint`, the full state (models, optimizer, schedule, RNGs, KL controller, running reward
    statistics, FLOPs, plus the caller's `extra_state()`) is saved every ``rl.checkpoint_every`` steps;
    `resume` (a state `checkpoint.load()` returned) continues from it and ends as the uninterrupted run.
    """
    rl, sc, algo = cfg.rl, cfg.sampling, ALGORITHMS.get(cfg.rl.algorithm)
    n, temperature, amp = rl.n_samples, sc.temperature, lambda: mixed_precision(policy.device, rl.bf16)
    estimator = ESTIMATORS.get(algo.estimator)
    norm_std = algo.norm_std if algo.norm_std is not None else rl.norm_std is not False
    loop, ref, opt, schedule, actor = start(policy, critic, cfg, resume, engine)
    params = (count_non_embedding(policy), count_non_embedding(critic) if critic is not None else 0, reward_params)
    texts = list(dict.fromkeys(e.prompt for e in prompts))
    prompt_ids = dict(zip(texts, encode_prompts(tok, texts)))  # through the chat template when there is one

    for step in range(loop.step + 1, rl.steps + 1):
        t0 = time.perf_counter()
        # 1. rollout: n responses for each of P prompts, the n of a prompt contiguous
        examples = [e for e in draw(loop.rng, prompts, rl.prompts_per_step) for _ in range(n)]
        ro = rollout(actor, engine, [prompt_ids[e.prompt] for e in examples], tok, sc, max_new_tokens, loop.gen)
        ids, attn, Lp, mask = ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1], ro.response_mask.float()
        t_gen = time.perf_counter() - t0
        gap = {} if engine is None else own_logprobs(actor, ro, temperature, amp)

        # 2. reward: proxy scores from the sources, shaped, on the last token; dense step rewards where they are
        r = reward_fn(examples, tok.batch_decode(ro.response_ids, skip_special_tokens=True), ro)
        check_finite(step, reward=r.scores, dense_reward=r.dense)
        rewards = token_rewards(shape_scores(r.scores, ro.response_lengths, n, rl, loop.running), r.dense, mask)
        shaped = rewards.sum(-1)  # [B], before any KL penalty

        # 3. KL to the reference policy (a per-token penalty in the reward, or a loss term), critic values
        ref_logprobs, values = reference_and_values(policy, ref, critic, ro, temperature, amp)
        kl = kl_penalty(ro.logprobs, ref_logprobs, rl.kl_estimator, mask)
        if kl_in_reward(rl):
            rewards = rewards - loop.kl_ctl.value * kl

        # 4. advantages, and the critic's targets
        advantages, returns = estimator(rewards, mask, n=n, values=values, gamma=rl.gamma,
                                        gae_lambda=rl.gae_lambda, norm_std=norm_std)

        # 5. clipped policy (and value) updates
        batch = Batch(ids, attn, mask, Lp, ro.logprobs, ref_logprobs, advantages, returns, values)
        stats = update(policy, critic, opt, batch, 0.0 if kl_in_reward(rl) else loop.kl_ctl.value, cfg, step, amp,
                       rollout_gap=engine is None)  # the engine's gap was measured above
        schedule.step()
        sync_actor(actor, policy)
        if engine is not None:
            engine.push(policy)
        kl_seq = kl.sum(-1).mean().item()
        loop.kl_ctl.update(kl_seq, len(examples))

        # 6. log, and save the state every rl.checkpoint_every steps
        elapsed, seq_tokens = time.perf_counter() - t0, int(attn.sum().item())
        loop.flops += step_flops(seq_tokens, rl, *params)
        loop.step = step
        info = step_info(r, shaped, kl_seq, seq_tokens, batch, loop, elapsed, t_gen) | stats | gap
        if on_step is not None:
            on_step(step, info)
        if checkpoint is not None and checkpoint.due(step, rl.steps):
            save_state(checkpoint, loop, policy, critic, opt, schedule, extra_state())


def reference_and_values(policy, ref, critic, ro: Rollout, temperature: float, amp) -> tuple[Tensor, Tensor | None]:
    """The reference policy's log-probs of the rollout's responses ``[B, R]`` (the policy with its adapters off when
    `ref` is the policy itself) and, with a critic, its values ``[B, R]`` (else None)."""
    ids, attn, Lp = ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1]
    with torch.no_grad(), amp():
        with adapters_off(policy) if ref is policy else nullcontext():
            ref_logprobs = on_device_of(ref, response_logprobs, ids, attn, Lp, temperature)
        values = on_device_of(critic, response_values, ids, attn, Lp) if critic is not None else None
    return ref_logprobs, values


def step_info(r: Rewards, shaped: Tensor, kl_seq: float, seq_tokens: int, b: Batch, loop: LoopState, elapsed: float,
              t_gen: float) -> dict[str, float]:
    """The step's ``rl/*`` diagnostics of the rollout and its rewards: r the reward sources' scores, shaped the
    shaped reward of each response ``[B]`` (before any KL penalty), kl_seq the mean KL of a response, seq_tokens
    the batch's prompt and response tokens."""
    B, n_tokens = b.mask.shape[0], int(b.mask.sum().item())
    info = {
        "rl/proxy_reward": (r.scores + (r.dense * b.mask).sum(-1)).mean().item(), "rl/reward": shaped.mean().item(),
        "rl/reward_batch_std": shaped.std(correction=0).item(), "rl/gold_reward": r.gold.mean().item(), **r.parts,
        "rl/kl": kl_seq, "rl/kl_coef": loop.kl_ctl.value,
        "rl/response_len": n_tokens / B, "rl/samples_per_s": B / elapsed, "rl/tokens_per_s": n_tokens / elapsed,
        "rl/gen_frac": t_gen / elapsed, "rl/seq_tokens": seq_tokens, "flops/rl": loop.flops,
    }
    if b.values is not None:
        info["rl/explained_var"] = explained_variance(b.values, b.returns, b.mask)
    return info


def rollout(actor, engine: RolloutEngine | None, prompt_ids: list[list[int]], tok, sc: SamplingConfig,
            max_new_tokens: int, gen: torch.Generator) -> Rollout:
    """The responses to `prompt_ids` (token lists) with the config's sampling: from the native sampler on `actor`
    (drawing from `gen`), or from `engine`."""
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=sc.temperature, top_p=sc.top_p, top_k=sc.top_k,
                  eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    if engine is None:
        return sample(actor, prompt_ids, generator=gen, **kwargs)
    return engine.sample(prompt_ids, device=actor.device, **kwargs)


def own_logprobs(actor, ro: Rollout, temperature: float, amp) -> dict[str, float]:
    """Replace a rollout engine's log-probs in `ro` by the trainer's on `actor` (the behaviour policy's are the
    trainer's); returns the gap between the two (`losses.logprob_gap`) as ``rl/logprob_*`` diagnostics."""
    mask = ro.response_mask.float()
    with torch.no_grad(), amp():
        own = response_logprobs(actor, ro.sequences, ro.attention_mask, ro.prompt_ids.shape[1], temperature).float()
    gap = {f"rl/logprob_{k}": v.item() for k, v in logprob_gap(ro.logprobs, own, mask).items()}
    ro.logprobs = own * mask
    return gap


def draw(rng: random.Random, prompts: Sequence[Example], k: int) -> list[Example]:
    """k prompts, without replacement when there are enough."""
    return rng.sample(list(prompts), k) if k <= len(prompts) else rng.choices(list(prompts), k=k)


def minibatches(batch_size: int, group: int, count: int, gen: torch.Generator) -> list[Tensor]:
    """Shuffled row indices in `count` chunks; rows move in whole groups of `group` (loss_agg=group)."""
    order = torch.randperm(batch_size // group, generator=gen)
    chunks = order.chunk(min(count, len(order)))
    return [(c[:, None] * group + torch.arange(group)).flatten() for c in chunks]


def update(policy, critic, opt, b: Batch, kl_coef: float, cfg: RLSettings, step: int, amp,
           rollout_gap: bool = False) -> dict[str, float]:
    """`epochs` passes of `minibatches` optimizer steps on one rollout batch; returns mean diagnostics.

    With `rollout_gap` (b.old_logprobs are the sampler's own), also the gap between them and the trainer's
    log-probs (`losses.logprob_gap`) on the first minibatch, where the policy is still the one that sampled.
    """
    rl, temperature, algo = cfg.rl, cfg.sampling.temperature, ALGORITHMS.get(cfg.rl.algorithm)
    loss_agg = algo.loss_agg or rl.loss_agg or "token"
    group = rl.n_samples if loss_agg == "group" else 1
    shuffle = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    policy.train()
    totals: dict[str, float] = {}
    for epoch in range(rl.epochs):
        chunks = minibatches(b.ids.shape[0], group, rl.minibatches, shuffle)
        for i, idx in enumerate(chunks):
            m = b.mask[idx]
            with amp():
                logprobs, entropy = response_logprobs(policy, b.ids[idx], b.attn[idx], b.prompt_len, temperature,
                                                      with_entropy=True)
            if rollout_gap and epoch == 0 and i == 0:  # before the first optimizer step
                gap = logprob_gap(b.old_logprobs[idx], logprobs, m)
                totals |= {f"rl/logprob_{k}": v.item() for k, v in gap.items()}
            pg_loss, pg_stats = policy_loss(logprobs, b.old_logprobs[idx], b.advantages[idx], m,
                                            clip_coef=rl.clip_coef, clip_coef_high=rl.clip_coef_high,
                                            agg=loss_agg, n=group)
            entropy_bonus = masked_mean(entropy, m)
            kl = masked_mean(kl_penalty(logprobs, b.ref_logprobs[idx], rl.kl_estimator), m)
            loss = pg_loss - rl.entropy_coef * entropy_bonus + kl_coef * kl
            row = {"rl/pg_loss": pg_loss.item(), "rl/entropy": entropy_bonus.item(), "rl/kl_loss": kl.item(),
                   "rl/clipfrac": pg_stats["clipfrac"].item(), "rl/approx_kl": pg_stats["approx_kl"].item()}
            if critic is not None:
                with amp():
                    new_values = on_device_of(critic, response_values, b.ids[idx], b.attn[idx], b.prompt_len)
                v_loss, v_stats = value_loss(new_values, b.values[idx], b.returns[idx], m,
                                             clip_coef_value=rl.clip_coef_value, agg=loss_agg, n=group)
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
