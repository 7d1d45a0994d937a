"""Checks shared by the reward-model kinds' tests."""

import torch

from rlhfscale.models.reward import pack

PROMPTS, RESPONSES = ["1+2=", "10+20+30="], ["3", "60\nso 60"]  # different lengths: the batch pads one of them


def batch_scores_equal_alone(rm, tok) -> torch.Tensor:
    """rm.score of `PROMPTS` / `RESPONSES` padded into one batch, checked equal to each pair scored alone."""
    batch = rm.score(*pack(tok, PROMPTS, RESPONSES))
    alone = torch.cat([rm.score(*pack(tok, [p], [r])) for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    return batch
