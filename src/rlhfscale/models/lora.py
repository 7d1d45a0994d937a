"""LoRA adapters through `peft`: attach them, switch them off for the reference, save them in peft's format.

`attach` wraps a transformers model with peft's `get_peft_model` and returns the wrapper; the
trainers get `adapted(wrapper)`, the transformers model itself with the LoRA layers injected, so
every forward of `models.forward` runs on it unchanged (a model with adapters is never run
through the fast Llama path: `forward.fast_path_reason`). Only the adapters (and, for a reward
model, its score head) require gradients; the base weights stay bit-identical to what was loaded.

`save` writes the adapters as peft does (``adapter_config.json``, ``adapter_model.safetensors``:
``PeftModel.from_pretrained(base, folder)`` loads them) and the merged model as a plain HF folder
(``AutoModelFor*.from_pretrained`` loads it without peft), the one later stages read.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import BadInput

TASK_TYPES = {"policy": "CAUSAL_LM", "orm": "SEQ_CLS", "prm": "TOKEN_CLS"}  # what the model is -> peft task type
HEADS = {"orm": ["score"], "prm": ["score"]}  # heads that train whole beside the adapters


def has_adapters(model: Any) -> bool:
    """Whether `model` (a transformers model) carries peft adapters."""
    return bool(getattr(model, "peft_config", None))


def attach(model: PreTrainedModel, lora: Any, kind: str, setting: str) -> Any:
    """`model` with LoRA adapters (`lora`: a `config.LoraConfig` with rank > 0) as a `peft.PeftModel`.

    kind: "policy", "orm" or "prm" (`TASK_TYPES`); setting: the config path named in errors (rl.lora)."""
    import peft

    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type=TASK_TYPES[kind],
                             modules_to_save=HEADS.get(kind))
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # target modules that match nothing
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise BadInput(f"{setting}.target_modules={lora.target_modules}: expected modules of a "
                       f"{type(model).__name__}, found: {first}") from None


def adapted(wrapper: Any) -> PreTrainedModel:
    """The transformers model inside a `peft.PeftModel`, its LoRA layers injected (what the trainers run)."""
    return wrapper.base_model.model


def _tuner_layer_type() -> type:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def _tuner_layers(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, _tuner_layer_type())]


@contextmanager
def adapters_off(model: Any) -> Iterator[None]:
    """Run `model` (a transformers model with LoRA layers) as its base model: the adapters are off inside
    (peft's ``disable_adapter()`` on the injected model), on again after."""
    layers = _tuner_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merged_copy(model: Any) -> PreTrainedModel:
    """A copy of `model` (a transformers model with LoRA layers) with the adapters merged into plain layers:
    the same outputs, no peft modules (a ladder model takes the fast path again); `sync_merged` refreshes it."""
    out = copy.deepcopy(model)
    for name, layer in [(n, m) for n, m in out.named_modules() if isinstance(m, _tuner_layer_type())]:
        layer.merge()
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent), attr, layer.get_base_layer())
    del out.peft_config
    return out


@torch.no_grad()
def sync_merged(target: PreTrainedModel, model: Any) -> None:
    """Copy the merged weights of `model`'s LoRA layers (base + (alpha / r) B A) into `merged_copy` `target`
    (in its dtype); the other weights are frozen and equal already."""
    for name, layer in model.named_modules():
        if isinstance(layer, _tuner_layer_type()):
            base = layer.get_base_layer().weight
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
            target.get_submodule(name).weight.copy_(base + delta)


def fast_merged(model: Any) -> bool:
    """Whether `model` carries adapters and its merged copy would take the fast Llama path (a ladder model)."""
    from .forward import fast_path_reason

    return has_adapters(model) and fast_path_reason(model, adapters=False) is None


def for_inference(model: Any) -> Any:
    """What generates for `model`: a merged copy where that takes the fast path (`fast_merged`), else `model`."""
    return merged_copy(model).eval() if fast_merged(model) else model


def trainable(model: Any) -> list[str]:
    """Names of the parameters that require gradients."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save(wrapper: Any, tok: PreTrainedTokenizerBase, merged: str | Path, adapter: str | Path) -> PreTrainedModel:
    """Save the adapters into `adapter` (peft's format), then merge them into the base weights and save that
    model (plain transformers) and the tokenizer into `merged`. Returns the merged model (the wrapper's
    transformers model, adapters gone); the wrapper is spent."""
    wrapper.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    model = wrapper.merge_and_unload()
    model.save_pretrained(merged)
    tok.save_pretrained(merged)
    return model
