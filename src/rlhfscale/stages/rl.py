"""Stage `rl`: optimize the SFT policy against a reward, with held-out pass@1 before, during and after.

Inputs: ``sft`` (a run directory whose ``policy/`` is the starting policy, or a policy folder) and,
optionally, ``rm`` (a reward-model run directory whose ``rm/`` is the ORM or PRM the reward
sources read when ``rl.orm_path`` / ``rl.prm_path`` are unset). The full training state is saved
every ``rl.checkpoint_every`` steps under ``<out>/checkpoint``; a run started in a folder holding a
checkpoint of the same settings resumes from it and ends as the uninterrupted run. A NaN or inf
in a reward or loss stops the run: ``policy/`` then holds the last good weights and the error
(naming the step and the quantity) is re-raised, or, with ``record_divergence`` (a study, where a
diverged run is a data point), the run ends there: its summary has ``rl/diverged`` 1 and
``rl/diverged_step``, evaluated on the last good weights. With ``rl.lora.rank`` > 0 only LoRA adapters
train (`models.lora`): ``adapter/`` holds them in peft's format and ``policy/`` the merged model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from pathlib import Path

from pydantic import BaseModel

from ..algorithms import ALGORITHMS
from ..contract import view
from ..errors import BadInput
from ..models.checkpoint import Checkpointer
from ..models.critic import critic_from_policy, critic_from_rm
from ..models import lora
from ..models.io import DTYPES, save_policy
from ..models.train import checkpoint_activations
from ..pipeline import STAGES
from ..rl.trainer import NonFiniteError, train
from ..rm.sources import build_reward, rm_path
from ..rewards.metrics import fluctuation
from ..rollout.evaluate import evaluate
from ..tasks import make_task, verifiable
from .common import available, checkpointer, input_policy, max_new_tokens, setup
from .rundir import Progress, RunDir


def make_critic(cfg: BaseModel, policy, rm_run: str | None):
    """The PPO critic (None for the critic-free algorithms), from the policy or from the ORM."""
    if not ALGORITHMS.get(cfg.rl.algorithm).critic:
        return None
    device = cfg.rl.critic_device or cfg.device
    if cfg.rl.critic_init == "rm":
        critic = critic_from_rm(rm_path(cfg.rl, "orm", rm_run), device, DTYPES[cfg.dtype])
    else:
        critic = critic_from_policy(policy).to(device)
    return checkpoint_activations(critic, cfg.gradient_checkpointing)


def rollout_engine(cfg: BaseModel, policy, tok):
    """None for the native sampler; a vLLM engine holding a copy of the policy for ``sampling.backend=vllm``."""
    if cfg.sampling.backend != "vllm":
        return None
    from ..rollout.vllm_engine import VLLMEngine, vllm_compatible

    if why := vllm_compatible(policy):
        raise BadInput(f"sampling.backend=vllm: expected a model vLLM's attention runs, found {why}")
    return VLLMEngine(policy, tok, max_len=policy.config.max_position_embeddings, seed=cfg.seed,
                      dtype="bfloat16" if cfg.rl.bf16 else str(DTYPES[cfg.dtype]).removeprefix("torch."))


def models(cfg: BaseModel, task, inputs: dict[str, str]):
    """(policy, its peft wrapper or None, tokenizer, reward, critic or None), each on its device; with rl.lora the
    policy is the adapted transformers model, and the critic is built from the weights as loaded."""
    for setting in ("ref_device", "reward_device", "critic_device"):
        available(getattr(cfg.rl, setting), f"rl.{setting}")
    policy, tok = input_policy(cfg, inputs["sft"])
    checkpoint_activations(policy, cfg.gradient_checkpointing)
    reward = build_reward(cfg.rl, task, tok, cfg.rl.reward_device or cfg.device, inputs.get("rm"), cfg.dtype)
    critic = make_critic(cfg, policy, inputs.get("rm"))
    wrapper = lora.attach(policy, cfg.rl.lora, "policy", "rl.lora") if cfg.rl.lora.rank else None
    return (lora.adapted(wrapper) if wrapper is not None else policy), wrapper, tok, reward, critic


def save_trained(policy, wrapper, tok, path: Path):
    """Save ``policy/`` (with LoRA: the merged model, and the adapters in ``adapter/``); returns the model to
    evaluate from here on (the merged one with LoRA)."""
    if wrapper is None:
        save_policy(policy, tok, path / "policy")
        return policy
    return lora.save(wrapper, tok, path / "policy", path / "adapter")


def held_out_metrics(cfg: BaseModel, task, shifted: dict, tok, policy, k: int = 0, shifts: bool = False
                     ) -> dict[str, float]:
    """Held-out metrics of `policy` on the task (none without a verifier); with `shifts`, greedy pass@1 on each task
    of eval.tasks (`shifted`: label -> task, built once per run) as eval/pass@1_<label>."""
    model, n = lora.for_inference(policy), cfg.eval.n_prompts
    out = (evaluate(model, tok, task, task.examples("test", n), max_new_tokens=max_new_tokens(cfg, task), k=k,
                    seed=cfg.seed) if verifiable(task) else {})
    for label, other in shifted.items() if shifts else ():
        out[f"eval/pass@1_{label}"] = evaluate(model, tok, other, other.examples("test", n),
                                                max_new_tokens=max_new_tokens(cfg, other))["eval/pass@1"]
    return out


def begin(out: RunDir, ckpt: Checkpointer, held_out_before: Callable[[], dict[str, float]]) -> tuple[dict | None, dict[str, float]]:
    """The checkpointed state to resume from (None: a fresh run) and the held-out metrics before training: on a
    fresh run measured (`held_out_before()`) and logged at step 0, on a resumed one restored with the log's rows."""
    resume = ckpt.load()
    if resume is None:
        before = held_out_before()
        out.log(0, **before, **{"flops/rl": 0.0})
        return None, before
    out.restore(resume["extra"]["rows"])
    out.log(resume["step"], resumed_from=resume["step"])
    return resume, resume["extra"]["before"]


def run(cfg: BaseModel, inputs: dict[str, str], out_dir: str | Path, record_divergence: bool = False) -> dict[str, float]:
    cfg = view(STAGES["rl"], cfg)
    task = setup(cfg)
    policy, wrapper, tok, reward, critic = models(cfg, task, inputs)
    out = RunDir(out_dir, cfg)

    def save() -> None:
        nonlocal policy
        policy = save_trained(policy, wrapper, tok, out.path)

    budget = max_new_tokens(cfg, task)
    prompts = task.examples("train", cfg.rl.n_train_prompts)
    shifted = {label: make_task(other) for label, other in cfg.eval.tasks.items()}
    held_out = partial(held_out_metrics, cfg, task, shifted, tok)

    ckpt = checkpointer(cfg, out_dir, cfg.rl.checkpoint_every)
    resume, before = begin(out, ckpt, lambda: held_out(policy, cfg.eval.k, shifts=True))
    last: dict = out.rows[-1]
    bar = Progress(cfg.rl.steps, f"rl:{cfg.rl.algorithm}")

    def on_step(step: int, info: dict) -> None:
        nonlocal last
        if cfg.rl.eval_every and step % cfg.rl.eval_every == 0 and step < cfg.rl.steps:
            info.update(held_out(policy))
        if not verifiable(task):
            del info["rl/gold_reward"]  # NaN: no verifier, no gold score
        proxies = [r["rl/proxy_reward"] for r in out.rows if "rl/proxy_reward" in r] + [info["rl/proxy_reward"]]
        if len(proxies) > 1:  # so far: how erratic the run is (before shaping); one step has no change yet
            info["rl/reward_std"] = fluctuation(proxies)
        last = out.log(step, **info)
        gold = f" gold {info['rl/gold_reward']:.3f}" if "rl/gold_reward" in info else ""
        bar.advance(f"reward {info['rl/reward']:.3f}{gold}")

    diverged: dict[str, float] = {"rl/diverged": 0.0}
    engine = None
    try:
        engine = rollout_engine(cfg, policy, tok)
        train(policy, tok, prompts, reward, cfg, max_new_tokens=budget, critic=critic, reward_params=reward.params,
              on_step=on_step, checkpoint=ckpt, resume=resume, extra_state=lambda: {"rows": out.rows, "before": before},
              engine=engine)
    except NonFiniteError as e:  # the update that would have used the bad value never ran: the weights are good
        out.log(last.get("step", 0) + 1, error=str(e))
        if not record_divergence:
            save()
            out.close()
            raise
        diverged = {"rl/diverged": 1.0, "rl/diverged_step": float(last.get("step", 0) + 1)}
    finally:
        bar.close()
        if engine is not None:  # its worker and memory are not needed past the last rollout
            engine.close()
    save()
    after = held_out(policy, cfg.eval.k, shifts=True)
    out.log(int(last.get("step", 0)) if diverged["rl/diverged"] else cfg.rl.steps, **after,
            **{"flops/rl": last.get("flops/rl", 0.0)})
    summary = {**{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()},
               **{k: v for k, v in last.items() if k.startswith(("rl/", "flops/"))}, **diverged, "wall_s": out.wall_s}
    out.write_summary(summary)
    out.close()
    return summary
