"""The size ladder: Llama-architecture presets built with `transformers.LlamaConfig`.

Sizes are named by their non-embedding parameter count (run
`python -m rlhfscale.models.ladder` to print the exact numbers):
nano ≈0.1M, micro ≈0.5M, tiny ≈2M, small ≈8M, base ≈27M, and large ≈0.5B for a GPU.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .presets import LADDER, Preset, preset

__all__ = ["LADDER", "Preset", "preset", "llama_config", "build_model", "non_embedding_params", "count_non_embedding"]


def llama_config(size: str, vocab_size: int, max_len: int = 256, **special_ids: int) -> LlamaConfig:
    """The `LlamaConfig` for a ladder size (tied embeddings, no GQA, RoPE θ=10000)."""
    p = preset(size)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        intermediate_size=p.ffn,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.heads,
        max_position_embeddings=max_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        **special_ids,
    )


def build_model(size: str, vocab_size: int, seed: int = 0, max_len: int = 256, **special_ids: int) -> LlamaForCausalLM:
    """A freshly initialized `LlamaForCausalLM` of the given ladder size (deterministic in `seed`)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(size, vocab_size, max_len, **special_ids))


def non_embedding_params(size: str) -> int:
    """Exact non-embedding parameter count of a ladder size (attention, MLP and norms)."""
    p = preset(size)
    per_layer = 4 * p.hidden * p.hidden + 3 * p.hidden * p.ffn + 2 * p.hidden
    return p.layers * per_layer + p.hidden


def count_non_embedding(model: torch.nn.Module) -> int:
    """Non-embedding parameters of a built model (tied lm_head counted once, as the embedding)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


if __name__ == "__main__":
    for name in LADDER:
        print(f"{name:6s} {non_embedding_params(name):>12,d} non-embedding parameters")
