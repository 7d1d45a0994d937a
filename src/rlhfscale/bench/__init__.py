"""Speed measurements: the machine's matmul peak and the rollout sampler against HF `generate`."""
