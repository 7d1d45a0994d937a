"""The trainer's scoring of texts, as a public function: check it against any reference forward.

`response_logprobs(model, tokenizer, prompts, responses)` encodes the texts as the trainer does
(the prompt through the chat template when the tokenizer has one, the response as it is) and
runs exactly the forward the RL trainer computes its log-probs with for that model
(`models.forward.response_logprobs`: the fast Llama path where it is proven equal, the model's
own forward otherwise; responses that share a prompt share its forward). So for a saved policy

    AutoModelForCausalLM.from_pretrained(folder)(prompt_ids + response_ids).logits

gives the same log-probs (within float error) at the response positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import forward
from .text import encode_prompts, encode_responses
from .train import left_pad


def response_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str],
    *, temperature: float = 1.0, eos: bool = False, batch_size: int = 64,
) -> list[list[float]]:
    """log p(token | prompt, earlier response tokens) of every token of each response, one list per response.

    prompts, responses: N texts each. The response tokens are ``tokenizer(response, add_special_tokens=False)``
    (and the EOS token when `eos`); the log-probs are under softmax(logits / temperature), in float32,
    computed without gradients in batches of `batch_size` responses.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"response_logprobs: {len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = encode_prompts(tokenizer, list(prompts))
    response_ids = encode_responses(tokenizer, list(responses), eos)
    device, out = forward.input_device(model), []
    for i in range(0, len(prompt_ids), batch_size):
        p_ids, r_ids = prompt_ids[i:i + batch_size], response_ids[i:i + batch_size]
        ids_p, mask_p = left_pad(p_ids, tokenizer.pad_token_id, device)
        rows = [torch.tensor(r or [tokenizer.pad_token_id]) for r in r_ids]
        ids_r = pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id).to(device)
        mask_r = pad_sequence([torch.full((len(r),), int(bool(ids))) for r, ids in zip(rows, r_ids)],
                              batch_first=True).to(device)
        with torch.no_grad():
            logp = forward.response_logprobs(model, ids_p, mask_p, ids_r, mask_r, temperature)
        out += [row[:len(r)].tolist() for row, r in zip(logp.float().cpu(), r_ids)]
    return out
