"""The arithmetic reward-model figures in one run; the last line printed is the result as JSON.

    .venv/bin/python benchmarks/bench_rm.py [--out DIR]
"""

import argparse
import json

from rlhfscale.bench.rm import run_rm_bench

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=None, help="keep the run directories here (default: a temporary directory)")
args = parser.parse_args()
print(json.dumps(run_rm_bench(args.out)))
