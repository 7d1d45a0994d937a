"""TRL's GRPO throughput measured the way TRL's own docs run it, independently of `bench rl`'s harness.

    .venv/bin/python benchmarks/trl_reference.py [--size micro] [--steps 7] [--threads 2]

It checks the TRL figure of `rlhfscale bench rl`: the same ladder model shape (fresh random weights, saved
with `save_pretrained`), the same batch (16 prompts x 8 completions, 16 / 32 new tokens for micro / tiny),
the same reward (the arithmetic verifier) and KL coefficient, the same malloc setting (`host_memory`; off with
--no-keep-freed-memory), and otherwise TRL's defaults, timed by TRL itself: the
``train_samples_per_second`` that `Trainer.train` returns, and the median step time from a callback
(the first `--warmup` steps left out). The last line printed is JSON.
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from rlhfscale.host_memory import keep_freed_memory
from rlhfscale.models.io import new_policy, save_policy
from rlhfscale.tasks.arithmetic import ArithmeticTask

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", default="micro")
parser.add_argument("--prompts", type=int, default=16)
parser.add_argument("--n", type=int, default=8)
parser.add_argument("--new-tokens", type=int, default=0, help="0: 16 for micro, 32 for tiny")
parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient, as bench rl sets it on both sides")
parser.add_argument("--warmup", type=int, default=2)
parser.add_argument("--steps", type=int, default=7, help="steps in all, the warm-up ones included")
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="glibc malloc keeps freed memory, as the rlhfscale CLI (and so `bench rl`) sets it")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
if args.keep_freed_memory:
    keep_freed_memory()

task = ArithmeticTask()
data = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in task.examples("train", 512)])


def verifier(completions, answer, **_):
    return [float(task.extract_answer(c) == a) for c, a in zip(completions, answer)]


class StepEnds(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, *_, **__):
        self.ends.append(time.perf_counter())


clock = StepEnds()
with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory() as out:
    policy, tok = new_policy(args.size, 0, 128)
    save_policy(policy, tok, folder)
    config = GRPOConfig(output_dir=out, per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
                        max_completion_length=args.new_tokens or {"micro": 16, "tiny": 32}[args.size],
                        beta=args.beta, max_steps=args.steps, use_cpu=True, report_to="none", save_strategy="no")
    trainer = GRPOTrainer(model=folder, reward_funcs=verifier, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[clock])
    metrics = trainer.train().metrics
steps = [b - a for a, b in zip(clock.ends[args.warmup - 1:], clock.ends[args.warmup:])]
print(json.dumps({"size": args.size, "trl_samples_s_median_step": args.prompts * args.n / statistics.median(steps),
                  "trl_train_samples_per_second": metrics["train_samples_per_second"], "threads": torch.get_num_threads(),
                  "beta": config.beta, "loss_type": config.loss_type, "bf16": config.bf16}))
