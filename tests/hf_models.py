"""Checkpoints the project did not create: tiny random models of several architectures saved by plain
`transformers`, with a byte-level BPE tokenizer trained here on the arithmetic task's text (no download).

The BPE runs without the usual pre-tokenizer split, so its merges cross the newline: "=\\n",
"\\nanswer" and the like are single tokens, and '\\n' is rarely a token of its own in context.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from rlhfscale.tasks.arithmetic import ArithmeticTask

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=256)
CONFIGS = {
    "llama": lambda **k: LlamaConfig(**SHAPE, **k),
    "qwen2": lambda **k: Qwen2Config(**SHAPE, **k),
    "qwen3": lambda **k: Qwen3Config(head_dim=16, **SHAPE, **k),
    "mistral": lambda **k: MistralConfig(sliding_window=24, **SHAPE, **k),  # shorter than prompt + response
    "gemma2": lambda **k: Gemma2Config(head_dim=16, sliding_window=24, **SHAPE, **k),
}


def corpus(task: ArithmeticTask, n: int = 1500) -> list[str]:
    return [e.prompt + e.solution for e in task.examples("train", n)]


def bpe_tokenizer(texts: list[str], vocab_size: int = 400, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`; ids 0-2 are <pad> <s> </s>."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  padding_side="left", clean_up_tokenization_spaces=False)
    if chat_template:
        tok.chat_template = chat_template
    return tok


def tiny_model(arch: str, tok: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> PreTrainedModel:
    """A random causal LM of `arch` (fp32, eval mode) sized to the tokenizer."""
    ids = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = CONFIGS[arch](vocab_size=len(tok), **ids, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny(arch: str, tok: PreTrainedTokenizerFast, folder: Path, seed: int = 0, **overrides) -> Path:
    """`tiny_model` and the tokenizer saved with `save_pretrained` into `folder`."""
    tiny_model(arch, tok, seed, **overrides).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def plain_logprobs(model: PreTrainedModel, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    """log p of each response token from one unpadded forward of plain transformers."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    P = len(prompt_ids)
    return [logp[P - 1 + t, tok].item() for t, tok in enumerate(response_ids)]
