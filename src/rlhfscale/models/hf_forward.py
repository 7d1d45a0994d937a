"""The generic forward: any `transformers` model through its own `forward`, in the rollout layout.

Every model the fast Llama path (`models.llama`) does not cover runs here: Qwen2, Qwen3, Mistral,
Gemma 2, Llama variants with features the fast path lacks, anything `AutoModelForCausalLM` loads.
The layout is the rollout's: prompts left-padded, responses right-padded, positions counting
real tokens only (``attention_mask.cumsum(-1) - 1``, as HF `generate` gives padded rows), so a
padded row gets the numbers of its unpadded forward.

Responses that share a prompt (RL samples n per prompt) reuse its keys and values: the U
distinct prompts are prefilled once with ``use_cache=True``, the cache is expanded to the B rows
that continue them, and the B responses run against it, U·P + B·R tokens instead of B·(P + R).
Where no prompt repeats (U = B) that saves nothing, and the rows run as one full forward; so do they
under gradient checkpointing (`recomputes`), whose layers drop the cache. The
gradient flows through the cache into the prompt's tokens, once per prompt.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

import torch
from transformers import PreTrainedModel

from .llama import positions_of
from .shared_prefix import distinct_prompts


@cache
def _kwarg_names(cls: type) -> tuple[str, bool]:
    """The name `cls.forward` takes its KV cache under ("cache" since transformers 5.x, else
    "past_key_values") and whether it takes ``logits_to_keep``."""
    params = inspect.signature(cls.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _call(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, positions: torch.Tensor,
          past=None, keep: int = 0, use_cache: bool = False):
    """``model(ids, attn, positions)`` with `past` as its cache; returns (output tensor, cache).

    The output tensor is the logits of a causal LM (only the last `keep` columns when keep > 0) or
    the last hidden states [B, T, D] of a backbone."""
    cache_kw, has_keep = _kwarg_names(type(model))
    kwargs = {cache_kw: past, "use_cache": use_cache}
    if keep and has_keep:
        kwargs["logits_to_keep"] = keep
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, **kwargs)
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    if keep and tensor.shape[1] > keep:
        tensor = tensor[:, -keep:]
    past = getattr(out, "cache", None)
    return tensor, past if past is not None else getattr(out, "past_key_values", None)


def recomputes(model: PreTrainedModel) -> bool:
    """Whether `model`'s layers recompute their activations in this forward (gradient checkpointing while training
    with gradients on): transformers' layers then drop a KV cache they are given, so a shared prompt's cache cannot
    be used."""
    flag = getattr(model, "is_activation_checkpointing", None)
    flag = getattr(model, "is_gradient_checkpointing", False) if flag is None else flag
    return bool(flag) and model.training and torch.is_grad_enabled()


def backbone_states(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states [B, T, D] of ids [B, T] (pads: attn == 0) from `model.base_model`."""
    return _call(model.base_model, ids, attn, positions_of(attn))[0]


def causal_logits(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, T, V] of ids [B, T] from the causal LM's own forward (softcaps included)."""
    return _call(model, ids, attn, positions_of(attn))[0]


def response_outputs(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The model's output at the positions that predict each response token: ``[B, R, X]``.

    model: a causal LM (X = V, logits) or a backbone (X = D, hidden states). prompt_ids, prompt_mask:
    [B, P], left-padded; response_ids, response_mask: [B, R], right-padded. Row t is the output at
    the prompt's last token for t = 0, at response token t - 1 after: the full forward's columns
    P-1 .. P+R-2. Each distinct prompt runs once when some prompt repeats.
    """
    P, R = prompt_ids.shape[1], response_ids.shape[1]
    full_mask = torch.cat((prompt_mask, response_mask), 1)
    positions = positions_of(full_mask)
    ids_u, mask_u, inverse = distinct_prompts(prompt_ids, prompt_mask)
    if len(ids_u) == len(prompt_ids) or recomputes(model):  # nothing shared: one forward of the whole rows
        ids = torch.cat((prompt_ids, response_ids), 1)
        return _call(model, ids, full_mask, positions, keep=R + 1)[0][:, :R]
    last_prompt, past = _call(model, ids_u, mask_u, positions_of(mask_u), keep=1, use_cache=True)
    past.batch_select_indices(inverse)  # the U prompts' keys and values, one copy per row
    out, _ = _call(model, response_ids, full_mask, positions[:, P:], past=past, use_cache=True)
    return torch.cat((last_prompt.index_select(0, inverse), out[:, :-1]), 1)


@dataclass
class HFDecodeCache:
    """The decoding state of the generic path: the model's own KV cache and what HF needs beside it.

    past: the model's cache (a `DynamicCache`) of B rows; mask: [B, L] the attention mask of the
    L tokens fed so far (0 on prompt pads); positions: [B], the position of each row's next token.
    `select` narrows the cache in place (the sampler never reuses the wider one).
    """

    past: object
    mask: torch.Tensor
    positions: torch.Tensor

    def select(self, rows: torch.Tensor) -> HFDecodeCache:
        """The state of the batch rows `rows` [B'] only (duplicates allowed: a prompt's n copies)."""
        self.past.batch_select_indices(rows)
        return HFDecodeCache(self.past, self.mask[rows], self.positions[rows])


def prefill(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, HFDecodeCache]:
    """Run left-padded prompts ids, attn [B, P]: next-token logits [B, V] at each row's last token, and the cache."""
    logits, past = _call(model, ids, attn, positions_of(attn), keep=1, use_cache=True)
    return logits[:, -1], HFDecodeCache(past, attn, attn.long().sum(-1))


def decode_step(model: PreTrainedModel, state: HFDecodeCache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens [B]; returns next-token logits [B, V] and advances the state."""
    state.mask = torch.cat((state.mask, state.mask.new_ones(len(tokens), 1)), 1)
    logits, state.past = _call(model, tokens[:, None], state.mask, state.positions[:, None], past=state.past,
                               keep=1, use_cache=True)
    state.positions = state.positions + 1
    return logits[:, -1]
