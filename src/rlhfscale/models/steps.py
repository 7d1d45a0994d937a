"""Where a response's steps end, found in its text and mapped to token positions, for any tokenizer.

A process RM reads one logit per step, at the token where the step is known to be over. Steps
are found in the text, as the tasks split them (`step_split`):

- ``"line"``: a step is a line with non-blank content; it is over at the newline that closes it;
- ``"paragraph"``: a step is a block between blank lines; it is over at the newline that
  completes the blank line (a newline alone may continue the block).

The step's end token is the token holding that character, or, for a last step no separator
closes, the response's last token (its EOS; the last token of a truncated response). On the
character tokenizer that is the newline token itself. A byte-level BPE may merge the newline
with the characters around it ("=\\n", "\\nanswer"): the end is then the merged token, the
first position at which the step is over. Two steps whose ends fall in one token get one end
(the later step's is dropped), which `rm.data.encode_steps` reports as a step-count mismatch.

Token texts come from a per-tokenizer table (special tokens are empty text). For a tokenizer
whose only token holding a newline is the newline alone (the character tokenizer) the ends of
``"line"`` steps are computed on the ids as tensors (`line_end_mask`), equal to the text rule
(tested) and free of per-row Python.
"""

from __future__ import annotations

import bisect
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

SEPARATORS = {"line": re.compile(r"\n"), "paragraph": re.compile(r"\n[^\S\n]*\n")}


def check_step_split(step_split: str) -> None:
    if step_split not in SEPARATORS:
        raise ValueError(f"unknown step_split {step_split!r}; valid: {', '.join(SEPARATORS)}")


def step_end_positions(pieces: Sequence[str], step_split: str = "line") -> list[int]:
    """Indices of the tokens where each step ends, in order, for a response whose tokens read `pieces`."""
    check_step_split(step_split)
    text, ends, total = "".join(pieces), [], 0
    for piece in pieces:
        total += len(piece)
        ends.append(total)  # ends[i]: the offset just past token i
    out: list[int] = []
    start = 0
    for sep in SEPARATORS[step_split].finditer(text):
        if text[start:sep.start()].strip():
            out.append(bisect.bisect_right(ends, sep.end() - 1))  # the token holding the separator's last char
        start = sep.end()
    if text[start:].strip() and pieces:
        out.append(len(pieces) - 1)
    return [p for i, p in enumerate(out) if i == 0 or p > out[i - 1]]


@dataclass
class Vocab:
    """The text of every token id of a tokenizer ("" for special tokens) and what the tensor rule needs."""

    pieces: list[str]
    newline_id: int | None  # the one token holding a newline, when it is a newline alone, else None
    content: torch.Tensor  # [V] bool: the token's text has a non-blank character


_VOCABS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab(tok: PreTrainedTokenizerBase) -> Vocab:
    """The tokenizer's `Vocab`, built once per tokenizer object."""
    if tok in _VOCABS:
        return _VOCABS[tok]
    size = max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)
    pieces = tok.batch_decode([[i] for i in range(size)], skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)
    for i in tok.all_special_ids:
        pieces[i] = ""
    holding = [i for i, p in enumerate(pieces) if "\n" in p]
    newline_id = holding[0] if len(holding) == 1 and pieces[holding[0]] == "\n" else None
    found = Vocab(pieces, newline_id, torch.tensor([bool(p.strip()) for p in pieces]))
    _VOCABS[tok] = found
    return found


def line_end_mask(response_ids: torch.Tensor, response_mask: torch.Tensor, newline_id: int,
                  content: torch.Tensor) -> torch.Tensor:
    """The ends of ``"line"`` steps [B, R] bool of right-padded response_ids, response_mask [B, R], where
    `newline_id` is the only token holding a newline.

    content: [V] bool, whether each token id has non-blank text (special tokens have none).
    A step ends at its newline, or at the response's last token when no newline closes it; a line
    without content ends nothing.
    """
    real = response_mask.bool()
    newline = (response_ids == newline_id) & real
    has = real & content.to(response_ids.device)[response_ids]
    count = has.long().cumsum(-1)  # content tokens up to and including t
    at_newline = torch.where(newline, count, 0)
    before_line = F.pad(at_newline.cummax(-1).values, (1, 0))[:, :-1]  # the count at the last newline before t
    last = real & ~F.pad(real, (0, 1), value=False)[:, 1:]
    return real & (newline | last) & (count > before_line)


def step_end_mask(tok: PreTrainedTokenizerBase, response_ids: torch.Tensor, response_mask: torch.Tensor,
                  step_split: str = "line") -> torch.Tensor:
    """Where each step of each response ends, [B, R] bool, from right-padded response_ids, response_mask [B, R]."""
    check_step_split(step_split)
    v = vocab(tok)
    in_table = response_ids.numel() == 0 or int(response_ids.max()) < len(v.pieces)
    if step_split == "line" and v.newline_id is not None and in_table:
        return line_end_mask(response_ids, response_mask, v.newline_id, v.content)
    out = torch.zeros(response_ids.shape, dtype=torch.bool)
    for row, (ids, n) in enumerate(zip(response_ids.tolist(), response_mask.sum(-1).tolist())):
        pieces = [v.pieces[i] if i < len(v.pieces) else "" for i in ids[:int(n)]]
        out[row, step_end_positions(pieces, step_split)] = True
    return out.to(response_ids.device)
