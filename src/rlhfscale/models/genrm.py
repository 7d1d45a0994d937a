"""Generative verifiers (Zhang et al. 2024, "Generative Verifiers: Reward Modeling as Next-Token
Prediction"): a causal LM reads prompt + response + a fixed verification question and predicts a
verdict token, Yes or No; its reward is log p(Yes) − log p(No) (`rewards.losses.genrm_score`).

The model stays a plain `<Arch>ForCausalLM`; its config carries ``genrm = {"question", "yes", "no"}``
(the question text and the two verdict tokens as text), so a saved folder loads with
`AutoModelForCausalLM` and nothing of ours, and `models.reward.load_reward_model` recognises it as a
generative RM. The verdict tokens must each be one token of the tokenizer: the defaults "Y" and "N"
are single characters, one token in the ladder's character tokenizer and in byte-level BPE ones.

Layout: sequences arrive in the rollout layout (``ids, attn [B, T]``, pads where attn == 0, left of
the prompt and right of the response); `with_question` moves each row's real tokens to the right
end and appends the question, so the last column is the position whose next token is the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import BadInput
from ..rewards.losses import genrm_score
from .forward import hidden_states

DEFAULT_QUESTION = "\nIs the answer correct? "
DEFAULT_TOKENS = ("Y", "N")


@dataclass(frozen=True)
class Verdict:
    """The verification question's token ids and the Yes / No token ids of one tokenizer."""

    question: list[int]
    yes: int
    no: int


def single_token(tok: PreTrainedTokenizerBase, text: str, setting: str) -> int:
    """The id of `text` when the tokenizer encodes it as exactly one token; BadInput naming `setting` otherwise."""
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) != 1 or ids[0] == tok.unk_token_id:
        raise BadInput(f"{setting}: expected {text!r} to be one known token of the tokenizer, found "
                       f"{tok.convert_ids_to_tokens(ids)}; pick verdict tokens that are single tokens")
    return ids[0]


def verdict_of(tok: PreTrainedTokenizerBase, question: str, yes: str, no: str,
               setting: str = "rm.genrm_yes / rm.genrm_no") -> Verdict:
    """Map the question and the verdict tokens through `tok` (each verdict must be one distinct token)."""
    yes_id, no_id = single_token(tok, yes, setting), single_token(tok, no, setting)
    if yes_id == no_id:
        raise BadInput(f"{setting}: expected two different verdict tokens, found {yes!r} and {no!r} as one token")
    q = tok(question, add_special_tokens=False).input_ids
    if not q:
        raise BadInput("rm.genrm_question: expected a question of at least one token, found none")
    return Verdict(q, yes_id, no_id)


def mark(model: PreTrainedModel, question: str, yes: str, no: str) -> None:
    """Write the generative-RM fields into the model's config (saved with it)."""
    model.config.genrm = {"question": question, "yes": yes, "no": no}


def is_generative(config) -> bool:
    return isinstance(getattr(config, "genrm", None), dict)


def model_verdict(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> Verdict:
    """The `Verdict` that the model's config names, mapped through `tok`."""
    g = model.config.genrm
    return verdict_of(tok, g["question"], g["yes"], g["no"], "config.json genrm")


def with_question(ids: torch.Tensor, attn: torch.Tensor, question: list[int], pad_id: int):
    """ids, attn [B, T] (pads anywhere in a row, real tokens contiguous) -> ids, attn [B, T + Q]: each row's real
    tokens left-padded, followed by the Q question tokens."""
    order = torch.argsort(attn.long(), dim=1, stable=True)  # pads first, then the real tokens in order
    ids, attn = ids.gather(1, order), attn.gather(1, order)
    ids = torch.where(attn.bool(), ids, pad_id)
    q = torch.tensor(question, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
    return torch.cat((ids, q), 1), torch.cat((attn, torch.ones_like(q, dtype=attn.dtype)), 1)


def verdict_logits(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, verdict: Verdict) -> torch.Tensor:
    """Logits [B, 2] of (Yes, No) after each row's question (ids, attn [B, T] already end with the question)."""
    h = hidden_states(model, ids, attn)[:, -1]  # [B, D]: left-padded, the last column is the question's end
    head = model.get_output_embeddings()
    w = head.weight[[verdict.yes, verdict.no]]  # [2, D]
    out = h @ w.T
    return out + head.bias[[verdict.yes, verdict.no]] if getattr(head, "bias", None) is not None else out


def genrm_scores(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, verdict: Verdict,
                 pad_id: int) -> torch.Tensor:
    """log p(Yes) − log p(No) [B] of sequences ids, attn [B, T] in the rollout layout (the question appended)."""
    ids, attn = with_question(ids, attn, verdict.question, pad_id)
    return genrm_score(verdict_logits(model, ids, attn, verdict), 0, 1)
