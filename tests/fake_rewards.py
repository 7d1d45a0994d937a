"""A reward for RL tests that need spread in the rewards but no learning signal."""

import torch

from rlhfscale.rm.sources import Rewards


def coin_flips(seed: int = 0):
    """A reward function scoring each response 0 or 1 at random (its own generator), no dense rewards."""
    gen = torch.Generator().manual_seed(seed)

    def reward(examples, responses, rollout):
        scores = torch.randint(0, 2, (len(responses),), generator=gen).float()
        return Rewards(scores, torch.zeros_like(rollout.response_mask, dtype=torch.float), scores, {})

    return reward
