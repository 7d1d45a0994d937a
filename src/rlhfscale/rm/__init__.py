"""Reward-model data, training loop and reward sources: the file- and model-touching side of rewards.

The pure tensor functions they use live in `rlhfscale.rewards` (losses, aggregation, metrics,
shaping, Monte-Carlo labels), which imports neither `models` nor this package.
"""
