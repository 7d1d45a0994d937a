"""The forward of responses that share prompts: each distinct prompt goes through the model once.

An RL batch holds n responses to each of its prompts. A causal model's states
at a prompt's tokens do not depend on the response that follows, so the n
copies of a prompt would compute the same thing n times: at `micro` with 16
prompt and 16 response tokens, half of the tokens of a GRPO step's reference
and policy forwards. Here the distinct prompts [U, P] and the responses
[B, R] go through the layers as one flat list of U·P + B·R tokens (every op
but the attention acts on each token alone), and the attention reads the
prompt's keys and values for every response row that follows it:

    prompt tokens:   causal self-attention within their prompt       [U, H, P, P]
    response tokens: attention over [prompt keys ; response keys]    [B, H, R, P + R]

The results equal the full forward of the concatenated rows (tested); the
gradient reaches each prompt token once, summed over the responses that read it.
The prompt rows are repeated with `index_select`, whose backward (`index_add_`)
sums a bf16 gradient in float and rounds once, 6x faster on a CPU than the
advanced-indexing backward, which rounds after every add. In bf16 on a CPU the
attention is `seq_attention`'s kernel instead, which reads each prompt's keys
and values where they sit and sums their gradient over the responses itself.
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, LlamaModel

from . import seq_attention
from .llama import Rope, attention_mask_4d, decoder, next_token_logprobs, positions_of, self_attention


def distinct_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The distinct rows of left-padded prompts [B, P] in the order they first appear: their ids and mask [U, P] and
    each row's index among them [B].

    The rows are looked up in a dict, a row a tuple: at 128 rows of 16 tokens 0.13 ms on a CPU, where
    `torch.unique(dim=0)`'s sort took 0.32 (and it runs three times an RL step: sampler, reference, policy)."""
    keyed = prompt_ids.masked_fill(prompt_mask == 0, -1).tolist()  # pads compare equal whatever their id
    index: dict[tuple[int, ...], int] = {}
    first, inverse = [], []  # the first row holding each distinct prompt; each row's distinct prompt
    for i, row in enumerate(map(tuple, keyed)):
        j = index.setdefault(row, len(index))
        if j == len(first):
            first.append(i)
        inverse.append(j)
    rows = torch.tensor(first, device=prompt_ids.device)
    return prompt_ids[rows], prompt_mask[rows], torch.tensor(inverse, device=prompt_ids.device)


def response_hidden_states(
    backbone: LlamaModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Final-normed hidden states [B, R, D] at the positions that predict each response token.

    prompt_ids, prompt_mask: [B, P], left-padded; response_ids, response_mask:
    [B, R], right-padded. Row t is the state that predicts response token t:
    the prompt's last token for t = 0, response token t - 1 after. Equal to
    `llama.hidden_states` of the concatenated rows at columns P-1 .. P+R-2.
    """
    (B, R), P = response_ids.shape, prompt_ids.shape[1]
    ids_u, mask_u, inverse = distinct_prompts(prompt_ids, prompt_mask)
    U, emb = len(ids_u), backbone.embed_tokens.weight
    full_mask = torch.cat((prompt_mask, response_mask), 1)  # [B, P + R]
    positions = torch.cat((positions_of(mask_u).flatten(), positions_of(full_mask)[:, P:].flatten()))
    rope = Rope.of(backbone.config, P + R, emb.dtype, emb.device)
    prompt_causal = attention_mask_4d(mask_u)  # [U, 1, P, P]
    response_causal = attention_mask_4d(full_mask)[:, :, P:]  # [B, 1, R, P + R]

    def attend(i, q, k, v):  # q [U·P + B·R, H, Dh], k, v [U·P + B·R, Hkv, Dh] -> [U·P + B·R, H·Dh]
        (qp, qr), (kp, kr), (vp, vr) = (t.split((U * P, B * R)) for t in (q, k, v))
        if seq_attention.applies(q):  # the prompts' keys read in place by their responses
            prompts = [t.view(U, P, *t.shape[1:]) for t in (qp, kp, vp)]
            responses = [t.view(B, R, *t.shape[1:]) for t in (qr, kr, vr)]
            out_p = seq_attention.attention(*prompts, torch.arange(U, device=q.device), None, None, prompt_causal)
            out_r = seq_attention.attention(responses[0], *prompts[1:], inverse, *responses[1:], response_causal)
            return torch.cat((out_p.view(U * P, -1), out_r.view(B * R, -1)))
        qp, kp, vp = (t.view(U, P, *t.shape[1:]).transpose(1, 2) for t in (qp, kp, vp))  # [U, heads, P, Dh]
        qr, kr, vr = (t.view(B, R, *t.shape[1:]).transpose(1, 2) for t in (qr, kr, vr))  # [B, heads, R, Dh]
        out_p = self_attention(qp, kp, vp, prompt_causal)
        kp, vp = kp.index_select(0, inverse), vp.index_select(0, inverse)  # each response row's prompt
        out_r = self_attention(qr, torch.cat((kp, kr), 2), torch.cat((vp, vr), 2), response_causal)
        return torch.cat((out_p.transpose(1, 2).reshape(U * P, -1), out_r.transpose(1, 2).reshape(B * R, -1)))

    h = decoder(backbone, torch.cat((ids_u.flatten(), response_ids.flatten())), *rope.at(positions), attend)
    h_prompt, h_response = h.split((U * P, B * R))
    last_prompt = h_prompt.view(U, P, -1)[:, -1:].index_select(0, inverse)  # [B, 1, D]: left padding puts it last
    return torch.cat((last_prompt, h_response.view(B, R, -1)[:, :-1]), 1)


def response_logprobs(
    model: LlamaForCausalLM,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(response token t | prompt, tokens < t) [B, R] under softmax(logits / temperature), float32.

    With `with_entropy`, also the entropy [B, R] of each of those next-token distributions.
    """
    h = response_hidden_states(model.model, prompt_ids, prompt_mask, response_ids, response_mask)
    return next_token_logprobs(model, h, response_ids, temperature, with_entropy)
