"""Creating, saving and loading policies; every checkpoint folder is a plain HF folder, and any causal LM
`transformers` loads is a policy (its forward is chosen per model by `models.forward`).

A folder written here loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` and nothing of ours.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import BadInput
from .ladder import build_model
from .tokenizer import build_tokenizer

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the config's `dtype` names


def new_policy(size: str, seed: int, max_len: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialized ladder model and the local character tokenizer."""
    tok = build_tokenizer()
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return build_model(size, len(tok), seed=seed, max_len=max_len, **ids), tok


def load_policy(path: str | Path, device: str = "cpu", dtype: str = "fp32") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any causal LM `transformers` loads (a local HF folder, or a hub id such as ``Qwen/Qwen2.5-0.5B``)
    and its tokenizer, in `dtype` (a `DTYPES` name), with a pad token (the EOS when it has none) and left padding."""
    source = model_source(path)
    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype]).to(device)
    except (OSError, ValueError) as e:
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        raise BadInput(f"{source}: expected a causal LM that transformers loads, found: {first_line}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model, tok


def model_source(path: str | Path) -> str:
    """A local folder with config.json, or a hub id (``owner/name``, not an existing path) as it is."""
    p = Path(path)
    if (p / "config.json").is_file() or (not p.exists() and HUB_ID.fullmatch(str(path))):
        return str(path)
    raise BadInput(f"{p}: expected a Hugging Face model folder with config.json (or a hub id), found none")


def save_policy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """`save_pretrained` the model (safetensors) and the tokenizer into `path`."""
    p = Path(path)
    model.save_pretrained(p)
    tok.save_pretrained(p)
    return p

