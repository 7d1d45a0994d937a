"""The PPO critic: a causal LM's backbone with a scalar value head read at every token, values ``[B, T]``.

Stored as a Hugging Face `<Arch>ForSequenceClassification` with one label (any architecture
`transformers` has that head for), so a critic folder is a plain HF folder and an outcome reward
model's folder initializes one (its backbone and score head load as they are). The forward is
`models.forward`'s, the one the policy trains with (the fast Llama path for the ladder, the
model's own forward otherwise; the n responses to a prompt share its forward either way). HF's
own sequence-classification forward pools the last token and would throw the per-token values
away, so the head is applied here to every position.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from ..errors import BadInput
from . import genrm, llrm
from .forward import hidden_states, response_hidden_states
from .reward import head_config


def critic_from_policy(policy: PreTrainedModel) -> PreTrainedModel:
    """A critic with the policy's backbone weights (copied) and a zero head: every value starts at 0."""
    config = head_config(policy.config, policy.config.pad_token_id)
    critic = AutoModelForSequenceClassification.from_config(config).to(policy.device, policy.dtype)
    critic.base_model.load_state_dict(policy.base_model.state_dict())
    torch.nn.init.zeros_(critic.score.weight)
    return critic


def critic_from_rm(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A critic initialized from a reward model's HF folder: its backbone and its scalar head."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: expected a reward model folder with config.json for rl.critic_init=rm, found none")
    config = AutoConfig.from_pretrained(p)
    if genrm.is_generative(config) or llrm.is_likelihood(config):
        what = "a generative verifier" if genrm.is_generative(config) else "a likelihood RM"
        raise BadInput(f"{p}: rl.critic_init=rm expected a scalar-head reward model (an ORM), found {what} (it "
                       "scores through its LM head, no value head); use rl.critic_init=policy")
    return AutoModelForSequenceClassification.from_pretrained(p, num_labels=1, dtype=dtype).to(device)


def token_values(critic: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """The critic's value at every position of ids [B, T] (pads: attn == 0): ``[B, T]``, float32."""
    return _values(critic, hidden_states(critic, ids, attn))


def response_values(critic: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """V of the state before each response token of ids [B, P + R] (the prefix it is sampled from): ``[B, R]``,
    float32; `token_values` at columns P-1 .. P+R-2, each distinct prompt run once."""
    P = prompt_len
    return _values(critic, response_hidden_states(critic, ids[:, :P], attn[:, :P], ids[:, P:], attn[:, P:]))


def _values(critic: PreTrainedModel, h: torch.Tensor) -> torch.Tensor:
    """The scalar head on hidden states h [..., D]: ``[...]``, float32."""
    return critic.score(h).squeeze(-1).float()
