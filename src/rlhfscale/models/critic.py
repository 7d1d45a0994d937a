"""The PPO critic: a Llama backbone with a scalar head read at every token, values ``[B, T]``.

Stored as a Hugging Face `LlamaForSequenceClassification` with one label, so a
critic folder is a plain HF folder and a reward model's folder initializes one
(its backbone and score head load as they are). The forward is our fast
`hidden_states` (`shared_prefix` for RL batches), the same one the policy
trains with; HF's own forward pools the last token and would throw the
per-token values away.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from ..errors import BadInput
from .llama import hidden_states
from .shared_prefix import response_hidden_states


def critic_from_policy(policy: LlamaForCausalLM) -> LlamaForSequenceClassification:
    """A critic with the policy's backbone weights (copied) and a zero head: every value starts at 0."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.architectures = ["LlamaForSequenceClassification"]
    critic = LlamaForSequenceClassification(config).to(policy.device)
    critic.model.load_state_dict(policy.model.state_dict())
    torch.nn.init.zeros_(critic.score.weight)
    return critic


def critic_from_rm(path: str | Path, device: str = "cpu") -> LlamaForSequenceClassification:
    """A critic initialized from a reward model's HF folder: its backbone and its scalar head."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: expected a reward model folder with config.json for rl.critic_init=rm, found none")
    return LlamaForSequenceClassification.from_pretrained(p, num_labels=1, dtype=torch.float32).to(device)


def token_values(critic: LlamaForSequenceClassification, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The critic's value at every position of ids [B, T] (pads: attn == 0): ``[B, T]``, float32."""
    return _values(critic, hidden_states(critic.model, ids, attn))


def response_values(critic: LlamaForSequenceClassification, ids: torch.Tensor, attn: torch.Tensor,
                    prompt_len: int) -> torch.Tensor:
    """V of the state before each response token of ids [B, P + R] (the prefix it is sampled from): ``[B, R]``,
    float32; `token_values` at columns P-1 .. P+R-2, each distinct prompt run once (`shared_prefix`)."""
    P = prompt_len
    return _values(critic, response_hidden_states(critic.model, ids[:, :P], attn[:, :P], ids[:, P:], attn[:, P:]))


def _values(critic: LlamaForSequenceClassification, h: torch.Tensor) -> torch.Tensor:
    """The scalar head on hidden states h [..., D]: ``[...]``, float32."""
    return critic.score(h).squeeze(-1).float()
