"""Reward models: an outcome RM (one score per response), a process RM (one score per step) and a
generative verifier (a causal LM's Yes / No verdict, `models.genrm`; it scores like an ORM).

Both are Hugging Face classification heads on any causal LM's backbone (Llama, Qwen2, Qwen3,
Mistral, Gemma 2, ...), one output each, so a saved folder loads with
`AutoModelForSequenceClassification` / `AutoModelForTokenClassification` and nothing of ours,
and an RM trained elsewhere in that format (TRL's or OpenRLHF's reward models: a sequence
classifier with num_labels=1) loads as a reward source:

- ORM: `<Arch>ForSequenceClassification`, num_labels=1; score = w·h at the last real token (the
  attention mask's, the EOS appended to each response; HF's own pooling reads the last token that
  is not the pad id, the same token whenever the pad id is not the EOS id).
- PRM: `<Arch>ForTokenClassification`, num_labels=1, no dropout; a logit w·h + b at every token,
  read where each step ends (`models.steps`: found in the text, ``config.step_split`` "line" or
  "paragraph", mapped to tokens for any tokenizer).

h are the final-normed hidden states of `models.forward.hidden_states` (the fast Llama forward for
the ladder's models, the model's own forward otherwise). Sequences follow the rollout layout:
prompt left-padded, response right-padded; ``ids, attn [B, T]`` with ``response_mask [B, R]``
over the last R columns. A generative RM (``kind`` "generative": a ``*ForCausalLM`` whose config holds
``genrm``) scores log p(Yes) − log p(No) after its question; a likelihood RM (``kind`` "likelihood", a causal LM
whose config holds ``likelihood_rm``, `models.llrm`) scores β / |y| · log π(y | x). A PRM's response score
aggregates σ(step logits) with `rewards.aggregate.aggregate_steps` (min, last, mean or prod).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import BadInput
from ..rewards.aggregate import aggregate_steps
from . import genrm, llrm, steps
from .forward import hidden_states
from .text import encode_prompts, encode_responses
from .train import left_pad

# the kinds that score one number per response (a PRM scores steps), with the short name of their metrics
OUTCOME_KINDS = {"orm": "orm", "generative": "genrm", "likelihood": "llrm"}
HEAD_SUFFIXES = {"orm": "ForSequenceClassification", "prm": "ForTokenClassification"}
AUTO_HEADS = {"orm": AutoModelForSequenceClassification, "prm": AutoModelForTokenClassification}


def head_config(config: PretrainedConfig, pad_token_id: int) -> PretrainedConfig:
    """A copy of a model's config for a one-output head: num_labels 1, no classifier dropout, the pad id set."""
    config = type(config).from_dict(config.to_dict())
    config.num_labels, config.classifier_dropout, config.pad_token_id = 1, 0.0, pad_token_id
    return config


def build_reward_model(kind: str, config: PretrainedConfig, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """A fresh ORM ("orm") or PRM ("prm") of the architecture of `config` (any causal LM's config)."""
    torch.manual_seed(seed)
    return AUTO_HEADS[kind].from_config(head_config(config, pad_token_id))


def reward_model_from(kind: str, policy: PreTrainedModel, pad_token_id: int, seed: int = 0) -> PreTrainedModel:
    """An ORM or PRM whose backbone is a copy of a causal LM's (`policy.base_model`); the head is fresh."""
    model = build_reward_model(kind, policy.config, pad_token_id, seed)
    model.base_model.load_state_dict(policy.base_model.state_dict())
    return model.to(policy.device)


def head_kind(architecture: str) -> str | None:
    """"orm" or "prm" for a sequence or token classification class name, else None."""
    return next((kind for kind, suffix in HEAD_SUFFIXES.items() if architecture.endswith(suffix)), None)


def orm_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """ORM scores [B]: the head at the last real token of ids [B, T] (attn [B, T], 0 on pads)."""
    h = hidden_states(model, ids, attn)  # [B, T, D]
    last = (torch.arange(ids.shape[1], device=ids.device) * attn).argmax(-1)  # [B]
    return model.score(h[torch.arange(ids.shape[0], device=ids.device), last]).squeeze(-1)


def prm_token_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """PRM logits [B, T] at every token of ids [B, T]; the caller picks the step ends."""
    return model.score(hidden_states(model, ids, attn)).squeeze(-1)


def pack(tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], device: str | torch.device = "cpu"):
    """Texts in the rollout layout: ids, attn [B, P + R] and response_mask [B, R]. Prompts go through the chat
    template when the tokenizer has one (`models.text`); responses get EOS."""
    r_ids = [torch.tensor(r) for r in encode_responses(tok, responses, eos=True)]
    prompt_ids, prompt_mask = left_pad(encode_prompts(tok, prompts), tok.pad_token_id, device)
    response_ids = pad_sequence(r_ids, batch_first=True, padding_value=tok.pad_token_id).to(device)
    response_mask = pad_sequence([torch.ones_like(r) for r in r_ids], batch_first=True).to(device)
    return torch.cat((prompt_ids, response_ids), 1), torch.cat((prompt_mask, response_mask), 1), response_mask


@dataclass
class RewardModel:
    """A trained ORM, PRM, generative or likelihood RM with its tokenizer; `kind` is "orm" or "prm" (from the head
    class), "generative" (a causal LM whose config names its question and verdict tokens, `models.genrm`) or
    "likelihood" (a causal LM whose config names its β, `models.llrm`).

    step_split: how a PRM's steps are found in the text ("line" or "paragraph", `models.steps`); it is
    written into the model's config, so a saved PRM folder splits the same way when loaded."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    aggregation: str = "min"  # how a PRM's step scores become one score
    step_split: str = "line"

    def __post_init__(self) -> None:
        steps.check_step_split(self.step_split)
        if self.kind == "prm":
            self.model.config.step_split = self.step_split
        self.verdict = genrm.model_verdict(self.model, self.tok) if self.kind == "generative" else None

    @property
    def kind(self) -> str:
        if genrm.is_generative(self.model.config):
            return "generative"
        if llrm.is_likelihood(self.model.config):
            return "likelihood"
        return head_kind(type(self.model).__name__) or "orm"

    def step_scores(self, ids: torch.Tensor, attn: torch.Tensor, response_mask: torch.Tensor):
        """PRM logits [B, R] over the response columns and the step-end mask [B, R] (dense rewards)."""
        R = response_mask.shape[1]
        logits = prm_token_scores(self.model, ids, attn)[:, -R:]
        return logits, steps.step_end_mask(self.tok, ids[:, -R:], response_mask, self.step_split)

    def score(self, ids: torch.Tensor, attn: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """One score per response [B]: the ORM logit, the generative RM's log p(Yes) − log p(No), the likelihood
        RM's β / |y| · log π(y | x), or the PRM's aggregated step probabilities."""
        if self.kind == "orm":
            return orm_scores(self.model, ids, attn)
        if self.kind == "generative":
            return genrm.genrm_scores(self.model, ids, attn, self.verdict, self.tok.pad_token_id)
        if self.kind == "likelihood":
            return llrm.likelihood_scores(self.model, ids, attn, response_mask)
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
    """Load an ORM, PRM, generative or likelihood RM folder (the head class in config.json decides which, any
    architecture; a causal LM with ``genrm`` / ``likelihood_rm`` in its config is a generative / likelihood RM) and
    its tokenizer; a PRM's step split comes
    from ``step_split`` in its config ("line" when absent)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: expected a reward model folder with config.json, found none")
    config = AutoConfig.from_pretrained(p)
    architectures = config.architectures or []
    kinds = [kind for kind in map(head_kind, architectures) if kind]
    if (genrm.is_generative(config) or llrm.is_likelihood(config)) and any(a.endswith("ForCausalLM")
                                                                          for a in architectures):
        tok = AutoTokenizer.from_pretrained(p)
        tok.pad_token = tok.pad_token or tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).to(device).eval()
        return RewardModel(model, tok, aggregation)
    if not kinds:
        raise BadInput(f"{p}/config.json: field 'architectures': expected a *ForSequenceClassification (outcome RM), "
                       f"*ForTokenClassification (process RM) or *ForCausalLM with a 'genrm' or 'likelihood_rm' field "
                       f"class, found {architectures}")
    if config.num_labels != 1:
        raise BadInput(f"{p}/config.json: field 'num_labels': expected 1 (a scalar reward), found {config.num_labels}")
    tok = AutoTokenizer.from_pretrained(p)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AUTO_HEADS[kinds[0]].from_pretrained(p, dtype=torch.float32).to(device).eval()
    return RewardModel(model, tok, aggregation, getattr(config, "step_split", "line"))
