"""Models: the size ladder, tokenizers, any Hugging Face causal LM as policy, reward model or critic.

`response_logprobs(model, tokenizer, prompts, responses)` is the trainer's own scoring of texts
(`models.scoring`). It is imported on first use, so that torch-free modules (the config reads
`models.presets`) can import from this package without loading torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["response_logprobs"]


def __getattr__(name: str) -> Any:
    if name == "response_logprobs":
        from .scoring import response_logprobs

        return response_logprobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
