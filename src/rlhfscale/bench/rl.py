"""GRPO step throughput: our trainer against TRL's `GRPOTrainer`, side by side in one run.

Both sides train the same randomly initialised ladder Llama (one saved folder,
loaded by each) on the arithmetic task with the verifier as the reward, and
take the same steps: P prompts × n samples, at most `new_tokens` new tokens at
temperature 1, one optimizer step per batch (AdamW, the same constant learning
rate), the group-normalised advantage, token-level loss aggregation, and the
same KL setting (β·k3 to a reference model, in the loss). Precision is TRL's default on both sides: bf16
autocast (ours keeps the learning curve with it, which `tests/test_rl_e2e.py` checks); ``trl_bf16=False``
(``--no-trl-bf16``) runs TRL in fp32. Each side runs
`warmup` steps, then `steps` timed ones; the two alternate for `rounds` rounds
and each keeps its best round (the median step of a round), which damps the
noise of a shared machine. `ratio_vs_trl_rounds` gives the ratio of each round
on its own (the two sides' steps of one round, run back to back): their spread
is the noise that the best-of-rounds ratio smooths.

`peak_frac` is the model-FLOPs throughput over the fp32 matmul peak measured in
the same run (`bench.peak`): 2·N per token the sampler runs (prompt and
response), 6·N per token trained and 2·N per token through the reference model,
N the non-embedding parameters, tokens counted without padding, the same way
for both sides (TRL's own ``num_tokens`` count). Our side runs each distinct
prompt through the model once per step (`models.shared_prefix`), so it does
fewer FLOPs than this count, which charges every prompt copy: the fraction
is of the work the step stands for, the same yardstick for both sides.
`ours_peak_frac_run` counts only the FLOPs our side actually runs: each distinct
prompt once, every response token, and in the sampler's prefill the last layer's
products on each prompt's last token alone (the other prompt tokens need only their
keys and values there: `models.llama`'s prefill). TRL logs once, after its last step (per-step
logging costs it time), so its token count is the mean over all its steps.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import torch_threads
from ..config import RLConfig, RunConfig, SamplingConfig
from ..errors import BadInput
from ..models.io import load_policy, new_policy, save_policy
from ..models.ladder import count_non_embedding
from ..rm.sources import Reward, rule_source
from ..rl.trainer import train
from ..tasks.arithmetic import ArithmeticTask
from .peak import measure_matmul_peak

NEW_TOKENS = {"micro": 16, "tiny": 32}  # the response budgets of the TRL reference figures


@dataclass
class Setup:
    """One side-by-side comparison: the model folder and the batch both sides train on."""

    model_dir: Path
    task: ArithmeticTask
    prompts: int
    n: int
    new_tokens: int
    lr: float
    beta: float
    warmup: int
    steps: int
    bf16: bool  # ours
    trl_bf16: bool


@dataclass
class Timing:
    step_s: float  # median seconds per step of the best round
    tokens: float  # non-pad prompt + response tokens per step
    response_len: float  # mean response tokens
    tokens_run: float | None = None  # tokens that went through the model: each distinct prompt once, every response
    prompt_tokens_run: float | None = None  # the distinct prompts' tokens among them


def time_ours(s: Setup) -> Timing:
    """Our GRPO: `warmup` + `steps` steps of `rl.trainer.train`; times between consecutive step ends."""
    policy, tok = load_policy(s.model_dir)
    rl = RLConfig(algorithm="grpo", steps=s.warmup + s.steps, prompts_per_step=s.prompts, n_samples=s.n, lr=s.lr,
                  kl_coef=s.beta, kl_estimator="k3", kl_in="loss", loss_agg="token", norm_std=True, bf16=s.bf16)
    cfg = RunConfig(rl=rl, sampling=SamplingConfig(max_new_tokens=s.new_tokens))
    ends, tokens, lengths = [], [], []

    def on_step(step: int, info: dict) -> None:
        ends.append(time.perf_counter())
        tokens.append(info["rl/seq_tokens"])
        lengths.append(info["rl/response_len"])

    examples = s.task.examples("train", 512)
    train(policy, tok, examples, Reward(s.task, {"rule": (1.0, rule_source(s.task))}), cfg,
          max_new_tokens=s.new_tokens, on_step=on_step)
    steps = [b - a for a, b in zip(ends[s.warmup - 1:], ends[s.warmup:])]
    seq, length = statistics.mean(tokens[s.warmup:]), statistics.mean(lengths[s.warmup:])
    responses = length * s.prompts * s.n
    prompt_tokens = (seq - responses) / s.n
    return Timing(statistics.median(steps), seq, length, tokens_run=responses + prompt_tokens,
                  prompt_tokens_run=prompt_tokens)


def time_trl(s: Setup) -> Timing:
    """TRL's `GRPOTrainer` on the same folder, task and batch; times between consecutive step ends."""
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        raise BadInput("bench rl --vs trl: expected TRL installed (pip install -e '.[bench]'), found none") from None
    task = s.task
    data = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in task.examples("train", 512)])

    def verifier(completions, answer, **_):
        return [float(task.extract_answer(c) == a) for c, a in zip(completions, answer)]

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends, self.logs = [], []

        def on_step_end(self, args, state, control, **_):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **_):
            self.logs.append(logs or {})

    clock = StepEnds()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=s.prompts * s.n, num_generations=s.n,
            max_completion_length=s.new_tokens, temperature=1.0, learning_rate=s.lr, lr_scheduler_type="constant",
            optim="adamw_torch", beta=s.beta, loss_type="dapo", scale_rewards="group", num_iterations=1,
            max_steps=s.warmup + s.steps, logging_steps=s.warmup + s.steps, save_strategy="no", report_to="none",
            use_cpu=True,
            bf16=s.trl_bf16, disable_dropout=True, seed=0,
        )  # fmt: skip
        trainer = GRPOTrainer(model=str(s.model_dir), reward_funcs=verifier, args=args, train_dataset=data,
                              processing_class=load_policy(s.model_dir)[1], callbacks=[clock])
        trainer.train()
    last = next(log for log in reversed(clock.logs) if "num_tokens" in log)  # one log, after the last step
    steps = [b - a for a, b in zip(clock.ends[s.warmup - 1:], clock.ends[s.warmup:])]
    return Timing(statistics.median(steps), last["num_tokens"] / (s.warmup + s.steps), last["completions/mean_length"])


def last_layer_outputs(policy) -> int:
    """The parameters of the last decoder layer that a prefill runs on each prompt's last token only: all but its
    input norm and key and value projections."""
    layer = policy.model.layers[-1]
    kv = (layer.input_layernorm, layer.self_attn.k_proj, layer.self_attn.v_proj)
    return sum(p.numel() for p in layer.parameters()) - sum(p.numel() for m in kv for p in m.parameters())


def compare(size: str, *, prompts: int, n: int, new_tokens: int, lr: float, beta: float, warmup: int, steps: int,
            rounds: int, bf16: bool, trl_bf16: bool, peak: float, seed: int = 0) -> dict:
    """Our GRPO and TRL's on one ladder size: samples/s, their ratio, and each side's fraction of `peak`."""
    policy, tok = new_policy(size, seed, 128)
    with tempfile.TemporaryDirectory() as folder:
        save_policy(policy, tok, folder)
        setup = Setup(Path(folder), ArithmeticTask(), prompts, n, new_tokens, lr, beta, max(warmup, 1), steps, bf16,
                      trl_bf16)
        ours, trl = [], []
        for _ in range(rounds):
            ours.append(time_ours(setup))
            trl.append(time_trl(setup))
    best_ours, best_trl = min(ours, key=lambda t: t.step_s), min(trl, key=lambda t: t.step_s)
    n_params = count_non_embedding(policy)
    # the prefill's products skipped: 2 FLOPs a parameter, a prompt's tokens but its last
    skipped = 2 * last_layer_outputs(policy) * (best_ours.prompt_tokens_run - prompts)

    def peak_frac(t: Timing, tokens: float | None = None, skipped: float = 0.0) -> float:
        return ((2 + 6 + (2 if beta > 0 else 0)) * n_params * (tokens or t.tokens) - skipped) / t.step_s / peak

    return {
        "ours_samples_s": prompts * n / best_ours.step_s,
        "trl_samples_s": prompts * n / best_trl.step_s,
        "ratio_vs_trl": best_trl.step_s / best_ours.step_s,
        "ratio_vs_trl_rounds": [t.step_s / o.step_s for o, t in zip(ours, trl)],
        "ours_peak_frac": peak_frac(best_ours),
        "ours_peak_frac_run": peak_frac(best_ours, best_ours.tokens_run, skipped),
        "trl_peak_frac": peak_frac(best_trl),
        "size": size, "params": n_params, "prompts": prompts, "n": n, "new_tokens": new_tokens,
        "ours_step_s": best_ours.step_s, "trl_step_s": best_trl.step_s,
        "ours_response_len": best_ours.response_len, "trl_response_len": best_trl.response_len,
        "ours_tokens_per_step": best_ours.tokens, "trl_tokens_per_step": best_trl.tokens,
    }  # fmt: skip


def run_rl_bench(
    sizes: tuple[str, ...] = ("micro", "tiny"), *, prompts: int = 16, n: int = 8, new_tokens: int = 0,
    lr: float = 1e-5, beta: float = 0.04, warmup: int = 2, steps: int = 5, rounds: int = 2, bf16: bool = True,
    trl_bf16: bool = True, threads: int | None = None,
) -> dict:
    """`compare` at each size (new_tokens 0: `NEW_TOKENS` of the size); the first size's figures at the top
    level, the others under their size's name, the fp32 matmul peak (best of the run's start and end) beside."""
    # TRL's trainer prints its log to stdout: sent to stderr, so that stdout carries the report alone (--json)
    with torch_threads(threads, "bench rl") as used, contextlib.redirect_stdout(sys.stderr):
        peak = measure_matmul_peak()
        results = [compare(size, prompts=prompts, n=n, new_tokens=new_tokens or NEW_TOKENS.get(size, 32), lr=lr,
                           beta=beta, warmup=warmup, steps=steps, rounds=rounds, bf16=bf16, trl_bf16=trl_bf16,
                           peak=peak)
                   for size in sizes]
        final_peak = max(peak, measure_matmul_peak())
    for r in results:  # express every fraction against the best peak seen
        for key in ("ours_peak_frac", "ours_peak_frac_run", "trl_peak_frac"):
            r[key] *= peak / final_peak
    head, *rest = results
    return {**head, **{r["size"]: r for r in rest}, "peak_flops": final_peak, "bf16": bf16, "trl_bf16": trl_bf16,
            "threads": used}
