"""GRPO step throughput, ours vs TRL's GRPOTrainer; the last line printed is the result as JSON.

    .venv/bin/python benchmarks/bench_rl.py [--sizes micro,tiny] [--steps 5] [--rounds 2] [--no-bf16] [--no-trl-bf16] [--threads 2]

Needs the benchmark extra: pip install -e '.[bench]'.
"""

import argparse
import json

from rlhfscale.bench.rl import run_rl_bench

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--sizes", default="micro,tiny")
parser.add_argument("--prompts", type=int, default=16)
parser.add_argument("--n", type=int, default=8)
parser.add_argument("--new-tokens", type=int, default=0, help="0: 16 for micro, 32 for tiny")
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on our side")
parser.add_argument("--trl-bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast on TRL's side (TRL's default)")
parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
args = parser.parse_args()
result = run_rl_bench(tuple(args.sizes.split(",")), prompts=args.prompts, n=args.n, new_tokens=args.new_tokens,
                      steps=args.steps, rounds=args.rounds, bf16=args.bf16, trl_bf16=args.trl_bf16, threads=args.threads)
print(json.dumps(result))
