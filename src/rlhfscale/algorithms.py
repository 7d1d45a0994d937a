"""One record per RL algorithm: what the config validates against and what the trainer reads.

An algorithm names its advantage estimator (a function in `rl.advantages.ESTIMATORS`), whether it
trains a critic, where its KL-to-reference penalty goes by default, whether it needs groups of n
responses per prompt, and the settings it fixes (None: the user's `rl.norm_std` / `rl.loss_agg`).
Torch-free, so parsing a config imports no torch. Adding an algorithm is one function (its
estimator or loss aggregation, if new) and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .registry import Registry


@dataclass(frozen=True)
class Algorithm:
    name: str
    estimator: str  # a name in rl.advantages.ESTIMATORS
    critic: bool  # trains a value model (PPO)
    kl_in: Literal["reward", "loss"]  # where beta * KL goes when rl.kl_in is "auto"
    groups: bool  # its baseline is computed over the n responses of a prompt
    discounted: bool  # reads rl.gamma
    norm_std: bool | None = None  # fixed by the algorithm, or None: rl.norm_std (default True)
    loss_agg: str | None = None  # fixed by the algorithm, or None: rl.loss_agg (default "token")


ALGORITHMS: Registry[Algorithm] = Registry("RL algorithm")
for _algo in (
    Algorithm("ppo", estimator="gae", critic=True, kl_in="reward", groups=False, discounted=True),
    Algorithm("grpo", estimator="grpo", critic=False, kl_in="loss", groups=True, discounted=False),
    Algorithm("rloo", estimator="rloo", critic=False, kl_in="loss", groups=True, discounted=False, norm_std=False),
    Algorithm("reinforce++", estimator="reinforce++", critic=False, kl_in="reward", groups=False, discounted=True),
    # Dr. GRPO (Liu et al. 2025): the group mean as baseline without std division, token sums over a constant
    Algorithm("dr_grpo", estimator="grpo", critic=False, kl_in="loss", groups=True, discounted=False,
              norm_std=False, loss_agg="token_sum"),
):
    ALGORITHMS.add(_algo.name, _algo)
