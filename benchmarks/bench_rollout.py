"""Rollout throughput, ours vs HF `generate`; the last line printed is the result as JSON.

    .venv/bin/python benchmarks/bench_rollout.py [--size micro] [--batch 256] [--new-tokens 32] [--threads 1]
"""

import argparse
import json

from rlhfscale.bench.rollout import run_rollout_bench

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", default="micro")
parser.add_argument("--batch", type=int, default=256)
parser.add_argument("--new-tokens", type=int, default=32)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
args = parser.parse_args()
result = run_rollout_bench(args.size, args.batch, args.new_tokens, args.seed, args.device, threads=args.threads)
print(json.dumps(result))
