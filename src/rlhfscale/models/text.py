"""From text to the token ids a model sees: prompts through the tokenizer's chat template when it has one.

Tasks speak in plain prompt and response strings. A tokenizer with a chat template (an instruct
checkpoint's) expects its prompts wrapped as a user turn followed by the assistant's header, so
every place that turns a prompt into ids (SFT, RL, evaluation, reward-model data and scoring)
goes through `encode_prompts`; responses are tokenized as they are, after it, with no special
tokens added. The ladder's character tokenizer has no template: its prompts are the text itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


def has_chat_template(tok: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tok, "chat_template", None))


def prompt_text(tok: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text the model is conditioned on: `prompt` as a user turn with the generation header when the
    tokenizer has a chat template, else `prompt` itself."""
    if not has_chat_template(tok):
        return prompt
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def encode_prompts(tok: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (`prompt_text`), with no special tokens beyond what the template writes."""
    if not prompts:
        return []
    return tok([prompt_text(tok, p) for p in prompts], add_special_tokens=False).input_ids


def encode_responses(tok: PreTrainedTokenizerBase, responses: Sequence[str], eos: bool = False) -> list[list[int]]:
    """Token ids of each response text, with the EOS token appended when `eos`."""
    if not responses:
        return []
    ids = tok(list(responses), add_special_tokens=False).input_ids
    return [r + [tok.eos_token_id] for r in ids] if eos else ids
