#!/usr/bin/env bash
# The GPU checks of the rollout engines, as one script for a lent GPU machine (run from the repository root;
# figures go to $OUT, default runs/gpu-check/). Each step prints one JSON line:
#   1. `bench rollout`: the native sampler against `model.generate` in bf16 at the ladder's `large` (≈0.5B);
#   2. a few GRPO steps of that random-initialized model on the arithmetic task, native sampler, bf16;
#   3. where vLLM imports: the same two through the vLLM engine (`--backend vllm`, `sampling.backend=vllm`).
# DEVICE, SIZE, BATCH and NEW_TOKENS override the defaults (DEVICE=cpu SIZE=micro runs the same steps here).
set -euo pipefail
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-large} BATCH=${BATCH:-64} NEW_TOKENS=${NEW_TOKENS:-128}
OUT=${OUT:-runs/gpu-check}
PY=${PYTHON:-python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}  # the device copy of the tree is not pip-installed
mkdir -p "$OUT"
dtype=bfloat16
[ "$DEVICE" = cpu ] && dtype=float32  # bf16 products need avx512_bf16 on a CPU

bench() {  # $1: backend
  $PY -m rlhfscale.cli bench rollout --backend "$1" --device "$DEVICE" --dtype "$dtype" --size "$SIZE" \
    --batch "$BATCH" --new-tokens "$NEW_TOKENS" --repeats 3 --json | tail -1 | tee "$OUT/rollout-$1.json"
}

grpo() {  # $1: sampling backend
  $PY -m rlhfscale.cli rl device="$DEVICE" policy.size="$SIZE" sft.steps=2 rl.steps=4 rl.algorithm=grpo \
    rl.prompts_per_step=8 rl.n_samples=4 rl.bf16="$([ "$dtype" = bfloat16 ] && echo true || echo false)" \
    sampling.backend="$1" --out "$OUT/grpo-$1" | tail -1 | tee "$OUT/grpo-$1.json"
}

$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
bench native
grpo native
if $PY -c "import vllm" 2>/dev/null; then
  bench vllm
  grpo vllm
else
  echo "vllm: not installed; its two checks skipped" >&2
fi
