"""A character-level tokenizer built locally with the `tokenizers` library.

Every printable ASCII character and the newline is one token, so digits and
operators are single tokens. The tokenizer is wrapped in
`PreTrainedTokenizerFast` and saved with `save_pretrained`, so a checkpoint
folder loads with `AutoTokenizer.from_pretrained` and nothing of ours.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # letters, digits, punctuation, space, \n


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character tokenizer: ids 0-3 are <pad> <s> </s> <unk>, then one id per character."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
