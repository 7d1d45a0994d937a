"""Which forward a model runs through: the fast Llama path where it is proven equal, transformers' own otherwise.

Every forward the project runs (SFT and RL log-probs, the sampler, reward-model and critic hidden
states) goes through this module, which picks one of two implementations per model:

- the fast path (`models.llama`, `models.shared_prefix`): the hand-written Llama forward on the
  HF weights, with the shared-prompt forward and an in-place KV cache. Only for exactly the
  classes and features it implements (`fast_path_reason`); tests show its logits equal
  `LlamaForCausalLM`'s on the same weights within 1e-5;
- the generic path (`models.hf_forward`): the model's own `forward`, with its KV cache reused
  across the responses that share a prompt. Everything else, whatever `transformers` loads.

So an architecture the fast path does not implement (Qwen3's query/key norms, Mistral's sliding
window, attention biases, another RoPE) is never run through it.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
from transformers import (
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    LlamaModel,
    PreTrainedModel,
)

from . import hf_forward, kv_cache, llama, shared_prefix
from .cache_memory import CacheMemory

FAST_HEADS = (LlamaForCausalLM, LlamaForSequenceClassification, LlamaForTokenClassification)


def fast_path_reason(model: PreTrainedModel, adapters: bool = True) -> str | None:
    """Why `model` cannot take the fast path, or None when it can.

    It can when it is exactly one of `FAST_HEADS` on exactly a `LlamaModel`, and its config asks for
    nothing the hand-written layer leaves out: SiLU MLP without biases, attention without biases,
    dropout or sliding window, 1/√Dh scaling, a RoPE whose frequencies do not depend on the length;
    and it carries no LoRA adapters (`models.lora`; with ``adapters=False``: whether the model with its
    adapters merged could).
    """
    if adapters and getattr(model, "peft_config", None):  # `models.lora.has_adapters`, without importing peft per forward
        return "it carries LoRA adapters (peft), which the hand-written layer does not apply"
    if type(model) not in FAST_HEADS:
        return f"{type(model).__name__} is not one of {', '.join(c.__name__ for c in FAST_HEADS)}"
    if type(model.model) is not LlamaModel:
        return f"its backbone is a {type(model.model).__name__}, not a LlamaModel"
    found = llama.unsupported_features(model.config)
    if any(layer.self_attn.scaling != layer.self_attn.head_dim ** -0.5 for layer in model.model.layers):
        found.append("an attention scaling other than 1/sqrt(head_dim)")
    return f"its config sets {', '.join(found)}" if found else None


def fast_path_ok(model: PreTrainedModel) -> bool:
    """Whether `model` runs through the hand-written Llama forward (see `fast_path_reason`)."""
    return fast_path_reason(model) is None


def hidden_states(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Final-normed hidden states [B, T, D] of the backbone of `model` (a causal LM, RM or critic) on ids [B, T]
    (pads: attn == 0; left pads get the positions of the unpadded row)."""
    if fast_path_ok(model):
        return llama.hidden_states(model.model, ids, attn)
    return hf_forward.backbone_states(model, ids, attn)


def token_logprobs(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(x_t | x_<t) [B, T-1] for t = 1..T-1 of a causal LM under softmax(logits / temperature), float32;
    with `with_entropy`, also the entropies [B, T-1]."""
    if fast_path_ok(model):
        return llama.token_logprobs(model, ids, attn, temperature, with_entropy)
    logits = hf_forward.causal_logits(model, ids, attn)[:, :-1]
    return llama.select_logprobs(logits, ids[:, 1:], temperature, with_entropy)


def response_logprobs(
    model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
    response_mask: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(response token t | prompt, tokens < t) [B, R] of a causal LM, float32 (and the entropies [B, R]).

    prompt_ids, prompt_mask [B, P] left-padded; response_ids, response_mask [B, R] right-padded. Each
    distinct prompt runs once: `shared_prefix` on the fast path, the model's KV cache on the generic one.
    """
    if fast_path_ok(model):
        return shared_prefix.response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                               temperature, with_entropy)
    logits = hf_forward.response_outputs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    return llama.select_logprobs(logits, response_ids, temperature, with_entropy)


def response_hidden_states(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                           response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Backbone hidden states [B, R, D] at the positions that predict each response token (the layout of
    `response_logprobs`); what a critic's value head reads."""
    if fast_path_ok(model):
        return shared_prefix.response_hidden_states(model.model, prompt_ids, prompt_mask, response_ids,
                                                    response_mask)
    return hf_forward.response_outputs(model.base_model, prompt_ids, prompt_mask, response_ids, response_mask)


def prefill(model: PreTrainedModel, ids: torch.Tensor, attn: torch.Tensor, capacity: int,
            memory: CacheMemory | None = None, packs: MutableMapping | None = None):
    """Left-padded prompts ids, attn [B, P] through a causal LM: next-token logits [B, V] at each row's last
    token and a cache for `decode_step` (room for `capacity` >= P tokens on the fast path, where the fused CPU
    kernel's cache takes `memory`, if given, and the packed weights the buffers of `packs`, if given:
    `CacheMemory.packs`; the generic cache grows). The cache has ``select(rows)``, which keeps (or repeats) batch
    rows."""
    if fast_path_ok(model):
        return kv_cache.prefill(model, ids, attn, capacity, memory, packs)
    return hf_forward.prefill(model, ids, attn)


def select_rows(cache, rows: torch.Tensor, memory: CacheMemory | None = None):
    """The cache from `prefill` of batch rows `rows` only (``select``): the fast path's in `memory` where given."""
    if isinstance(cache, kv_cache.KVCache):
        return cache.select(rows, memory)
    return cache.select(rows)


def decode_step(model: PreTrainedModel, cache, tokens: torch.Tensor) -> torch.Tensor:
    """Feed one token per row, tokens [B], to a cache from `prefill`; returns next-token logits [B, V]."""
    if isinstance(cache, kv_cache.KVCache):
        return kv_cache.decode_step(model, cache, tokens)
    return hf_forward.decode_step(model, cache, tokens)


def input_device(model: PreTrainedModel) -> torch.device:
    """The device of the model's input embeddings (where token ids go)."""
    return model.get_input_embeddings().weight.device
