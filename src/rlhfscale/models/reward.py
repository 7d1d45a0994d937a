"""Reward models: an outcome RM (one score per response) and a process RM (one score per step).

Both are Hugging Face Llama classes with a one-output linear head w on the backbone, so a saved
folder loads with `AutoModelForSequenceClassification` / `AutoModelForTokenClassification`
and nothing of ours:

- ORM: `LlamaForSequenceClassification`, num_labels=1; score = w·h at the last real token.
- PRM: `LlamaForTokenClassification`, num_labels=1, no dropout; a logit w·h + b at every token,
  read at the end of each step: the newline ending a step line and the response's last token.

h are the final-normed hidden states of our `models.llama.hidden_states` on `model.model` (equal
to HF's forward, with far less per-call overhead). Sequences follow the rollout layout: prompt
left-padded, response right-padded; ``ids, attn [B, T]`` with ``response_mask [B, R]`` over the
last R columns. A PRM's response score aggregates σ(step logits) with
`rewards.aggregate.aggregate_steps` (min, last, mean or prod).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import BadInput
from ..rewards.aggregate import aggregate_steps
from .llama import hidden_states
from .train import left_pad

HEADS = {"orm": LlamaForSequenceClassification, "prm": LlamaForTokenClassification}
AUTO_HEADS = {"orm": AutoModelForSequenceClassification, "prm": AutoModelForTokenClassification}


def build_reward_model(kind: str, config: LlamaConfig, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """A fresh ORM ("orm") or PRM ("prm") on a copy of `config`: one output, no dropout, pad id set."""
    config = LlamaConfig.from_dict(config.to_dict())
    config.num_labels, config.classifier_dropout, config.pad_token_id = 1, 0.0, pad_token_id
    torch.manual_seed(seed)
    return HEADS[kind](config)


def reward_model_from(kind: str, policy: PreTrainedModel, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """An ORM or PRM whose backbone is a copy of a causal LM's (`policy.model`); the head is fresh."""
    model = build_reward_model(kind, policy.config, pad_token_id, seed)
    model.model.load_state_dict(policy.model.state_dict())
    return model.to(policy.device)


def orm_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """ORM scores [B]: the head at the last real token of ids [B, T] (attn [B, T], 0 on pads)."""
    h = hidden_states(model.model, ids, attn)  # [B, T, D]
    last = (torch.arange(ids.shape[1], device=ids.device) * attn).argmax(-1)  # [B]
    return model.score(h[torch.arange(ids.shape[0], device=ids.device), last]).squeeze(-1)


def prm_token_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """PRM logits [B, T] at every token of ids [B, T]; the caller picks the step ends."""
    return model.score(hidden_states(model.model, ids, attn)).squeeze(-1)


def step_end_mask(response_ids: torch.Tensor, response_mask: torch.Tensor, newline_id: int) -> torch.Tensor:
    """Where each step of a response ends, [B, R] bool, from right-padded response_ids, mask [B, R].

    A step is a non-empty line: it ends at its newline, or at the response's last token (the EOS,
    or the last token of a truncated response) when no newline closes it. Blank lines end nothing.
    """
    real = response_mask.bool()
    newline = response_ids == newline_id
    after_content = F.pad(real & ~newline, (1, 0), value=False)[:, :-1]  # the previous token is text
    last = real & ~F.pad(real, (0, 1), value=False)[:, 1:]
    return real & (newline | last) & after_content


def pack(tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], device: str | torch.device = "cpu"):
    """Texts in the rollout layout: ids, attn [B, P + R] and response_mask [B, R]; responses get EOS."""
    p_ids = tok(prompts, add_special_tokens=False).input_ids
    r_ids = [torch.tensor(r + [tok.eos_token_id]) for r in tok(responses, add_special_tokens=False).input_ids]
    prompt_ids, prompt_mask = left_pad(p_ids, tok.pad_token_id, device)
    response_ids = pad_sequence(r_ids, batch_first=True, padding_value=tok.pad_token_id).to(device)
    response_mask = pad_sequence([torch.ones_like(r) for r in r_ids], batch_first=True).to(device)
    return torch.cat((prompt_ids, response_ids), 1), torch.cat((prompt_mask, response_mask), 1), response_mask


@dataclass
class RewardModel:
    """A trained ORM or PRM with its tokenizer; `kind` is "orm" or "prm" (from the head class)."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    aggregation: str = "min"  # how a PRM's step scores become one score

    @property
    def kind(self) -> str:
        return "prm" if isinstance(self.model, LlamaForTokenClassification) else "orm"

    @property
    def newline_id(self) -> int:
        ids = self.tok.encode("\n", add_special_tokens=False)
        if len(ids) != 1:
            raise BadInput(f"reward model tokenizer: expected '\\n' to be one token, found {len(ids)} tokens")
        return ids[0]

    def step_scores(self, ids: torch.Tensor, attn: torch.Tensor, response_mask: torch.Tensor):
        """PRM logits [B, R] over the response columns and the step-end mask [B, R] (dense rewards)."""
        R = response_mask.shape[1]
        logits = prm_token_scores(self.model, ids, attn)[:, -R:]
        return logits, step_end_mask(ids[:, -R:], response_mask, self.newline_id)

    def score(self, ids: torch.Tensor, attn: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """One score per response [B]: the ORM logit, or the PRM's aggregated step probabilities."""
        if self.kind == "orm":
            return orm_scores(self.model, ids, attn)
        return aggregate_steps(*self.step_scores(ids, attn, response_mask), self.aggregation)

    @torch.inference_mode()
    def score_texts(self, prompts: list[str], responses: list[str], batch_size: int = 256) -> torch.Tensor:
        """`score` of each (prompt, response) text pair, [N], on the CPU."""
        scores = []
        for i in range(0, len(prompts), batch_size):
            batch = pack(self.tok, prompts[i:i + batch_size], responses[i:i + batch_size], self.model.device)
            scores.append(self.score(*batch).float().cpu())
        return torch.cat(scores)

    @torch.inference_mode()
    def step_logits_texts(self, prompts: list[str], responses: list[str], batch_size: int = 256) -> list[torch.Tensor]:
        """PRM logits at the step ends of each response: one 1-D tensor [S_i] per response, on the CPU."""
        out: list[torch.Tensor] = []
        for i in range(0, len(prompts), batch_size):
            batch = pack(self.tok, prompts[i:i + batch_size], responses[i:i + batch_size], self.model.device)
            logits, ends = self.step_scores(*batch)
            out += [row[end].float().cpu() for row, end in zip(logits, ends)]
        return out


def load_reward_model(path: str | Path, device: str = "cpu", aggregation: str = "min") -> RewardModel:
    """Load an ORM or PRM folder (the head class in config.json decides which) and its tokenizer."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: expected a reward model folder with config.json, found none")
    architectures = AutoConfig.from_pretrained(p).architectures or []
    kinds = [k for k, head in HEADS.items() if head.__name__ in architectures]
    if not kinds:
        raise BadInput(f"{p}/config.json: field 'architectures': expected one of "
                       f"{', '.join(h.__name__ for h in HEADS.values())}, found {architectures}")
    tok = AutoTokenizer.from_pretrained(p)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AUTO_HEADS[kinds[0]].from_pretrained(p, dtype=torch.float32).to(device).eval()
    return RewardModel(model, tok, aggregation)
