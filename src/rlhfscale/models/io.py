"""Creating, saving and loading policies; every checkpoint folder is a plain HF folder.

A folder written here loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` and nothing of ours.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import BadInput
from .ladder import build_model
from .tokenizer import build_tokenizer


def new_policy(size: str, seed: int, max_len: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialized ladder model and the local character tokenizer."""
    tok = build_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return build_model(size, len(tok), seed=seed, max_len=max_len, **ids), tok


def load_policy(path: str | Path, device: str = "cpu") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load an HF causal LM folder (ours or any Llama checkpoint) and its tokenizer."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: expected a Hugging Face model folder with config.json, found none")
    tok = AutoTokenizer.from_pretrained(p)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).to(device)
    return model, tok


def save_policy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """`save_pretrained` the model (safetensors) and the tokenizer into `path`."""
    p = Path(path)
    model.save_pretrained(p)
    tok.save_pretrained(p)
    return p

