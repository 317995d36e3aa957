"""A small BPE tokenizer for the corpus' English text, trained on that text.

HF `tokenizers` (Rust) is the trainer: a well-kept, fast BPE implementation (0.3 s for 2,048 ids on a
megabyte of prose) whose tokenizer.json any HF tooling can load to decode samples, and it is already
installed with transformers. Its BPE training is deterministic in the configuration used here (no
continuing-subword prefix, fixed alphabet: merges tie-break on pair ids that follow the sorted alphabet;
the corpus tests check byte-identical rebuilds in fresh processes). Words are split at spaces
(Metaspace, so decoding restores spaces), punctuation and single digits; the alphabet is printable ASCII
because the text is folded to ASCII first (prose.to_ascii). Id 0 is <unk>, which folded text never needs.
"""
from __future__ import annotations

import string
from typing import List, Sequence

from .errors import RealCorpusError

UNK = "<unk>"
ALPHABET = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]


def _require():
    try:
        import tokenizers
    except ImportError as e:
        raise RealCorpusError("the real-data corpus trains its text tokenizer with HF `tokenizers`, which is not "
                              "installed: pip install -e '.[study]'") from e
    return tokenizers


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A BPE `tokenizers.Tokenizer` with at most `vocab_size` ids, trained on `texts` in order."""
    tk = _require()
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tk.Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(True)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[UNK], initial_alphabet=ALPHABET,
                                  limit_alphabet=len(ALPHABET) + 1, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return tok


def encode(tok, texts: Sequence[str]) -> List[List[int]]:
    return [e.ids for e in tok.encode_batch(list(texts))]


def version() -> str:
    return _require().__version__
