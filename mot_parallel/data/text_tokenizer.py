"""A local Hugging Face text tokenizer, as tools/preprocess_data.py --tokenizer uses it and the sidecar records it.

    tok = load_tokenizer("tok_dir")            # an AutoTokenizer directory (transformers), or
    tok = load_tokenizer("tokenizer.json")     # a tokenizers file (the `tokenizers` library alone)
    ids = tok.encode("some text")              # no special tokens: a document adds its own (below)
    tok.decode(ids)
    meta["tokenizer"] = tok.record()           # name, library, path, vocab size, content hash, special ids
    tok = tokenizer_from_record(meta["tokenizer"], where)   # reloaded for decoding; a changed file is refused

A document is encoded as Megatron's HuggingFaceTokenizer + --append-eod encodes one text: the tokenizer's own
special tokens around it (its template: BOS for Llama-style tokenizers, nothing for GPT-2-style ones) and the
EOD id (the tokenizer's EOS, or --eod-token) at the end. Multi-segment documents take the template's prefix at
their start and its suffix before EOD, not around every text segment. Nothing is downloaded (local files only).
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional, Sequence

from .indexed import DataError

# files a tokenizer directory loads from (hashed in this order when present; model weights never are)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|im_end|>")


class TextTokenizer:
    """One interface over a `tokenizers.Tokenizer` (library 'tokenizers') and a transformers tokenizer."""

    def __init__(self, backend, library: str, path: str, eod_token: Optional[str] = None):
        self.backend, self.library, self.path = backend, library, os.path.abspath(path)
        self.name = os.path.basename(self.path.rstrip(os.sep))
        if library == "transformers":
            vocab = backend.get_vocab()
            self.specials = {k: getattr(backend, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")}
        else:
            vocab = backend.get_vocab(with_added_tokens=True)
            self.specials = {"bos": None, "eos": _named_eos(backend), "pad": None, "unk": None}
        self.vocab_size = max(max(vocab.values(), default=-1) + 1, len(vocab))
        self.eod = self.token_id(eod_token, "--eod-token") if eod_token is not None else self.specials["eos"]
        self.prefix, self.suffix = self._template()
        self.sha256 = content_hash(self.path)

    def encode(self, text: str) -> List[int]:
        if self.library == "transformers":
            return list(self.backend.encode(text, add_special_tokens=False))
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.library == "transformers":
            return self.backend.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return self.backend.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str, option: str) -> int:
        """The id of `token` (an integer, or a token string of this vocabulary); DataError naming `option`."""
        try:
            value = int(token)
        except ValueError:
            value = (self.backend.convert_tokens_to_ids(token) if self.library == "transformers"
                     else self.backend.token_to_id(token))
            unk = self.specials["unk"]
            if value is None or (value == unk and token != self._token(unk)):
                raise DataError(f"{option} {token!r}: not a token of the tokenizer {self.path}") from None
        if not 0 <= value < self.vocab_size:
            raise DataError(f"{option} {token}: outside the tokenizer's vocabulary [0, {self.vocab_size})")
        return int(value)

    def _token(self, i: Optional[int]) -> Optional[str]:
        if i is None:
            return None
        return self.backend.convert_ids_to_tokens(i) if self.library == "transformers" else self.backend.id_to_token(i)

    def _template(self):
        """(prefix, suffix): the special tokens the tokenizer puts around a text of its own accord."""
        if self.library == "transformers":
            plain, full = self.encode("a"), list(self.backend.encode("a", add_special_tokens=True))
        else:
            plain, full = self.encode("a"), self.backend.encode("a", add_special_tokens=True).ids
        for k in range(len(full) - len(plain) + 1):
            if full[k:k + len(plain)] == plain:
                return full[:k], full[k + len(plain):]
        return [], []

    def record(self) -> Dict:
        """The sidecar's `tokenizer` object."""
        return {"name": self.name, "library": self.library, "path": self.path, "vocab_size": self.vocab_size,
                "sha256": self.sha256, "special_ids": dict(self.specials, eod=self.eod),
                "document_prefix": list(self.prefix), "document_suffix": list(self.suffix)}


def _named_eos(backend) -> Optional[int]:
    """A bare tokenizer.json names no EOS: take the one special token with a conventional EOS name, if any."""
    special = {t.content: i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    found = [special[n] for n in EOS_NAMES if n in special]
    return found[0] if len(found) == 1 else None


def content_hash(path: str) -> str:
    """sha256 over the tokenizer's files: the file itself, or a directory's TOKENIZER_FILES (name and bytes)."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else [os.path.join(path, n) for n in TOKENIZER_FILES
                                                   if os.path.isfile(os.path.join(path, n))]
    for f in files:
        h.update(os.path.basename(f).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def load_tokenizer(path: str, eod_token: Optional[str] = None, option: str = "--tokenizer") -> TextTokenizer:
    """A TextTokenizer from a tokenizer.json file or an AutoTokenizer directory; DataError names what is wrong."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked; no Rust thread pool in them
    if os.path.isfile(path):
        return TextTokenizer(_from_file(path, option), "tokenizers", path, eod_token)
    if not os.path.isdir(path):
        raise DataError(f"{option} {path}: not found (give a tokenizer.json file or a tokenizer directory)")
    present = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
    if not present:
        raise DataError(f"{option} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); give a "
                        "directory saved with save_pretrained, or a tokenizer.json file")
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        if "tokenizer.json" in present:
            raise DataError(f"{option} {path}: a tokenizer directory needs transformers (pip install -e "
                            f"'.[data]'), or give its file: {option} {os.path.join(path, 'tokenizer.json')}") from None
        raise DataError(f"{option} {path}: needs transformers: pip install -e '.[data]'") from None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        backend = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a broken directory surfaces as many exception types
        raise DataError(f"{option} {path}: AutoTokenizer.from_pretrained failed "
                        f"({type(e).__name__}: {_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return TextTokenizer(backend, "transformers", path, eod_token)


def _from_file(path: str, option: str):
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"{option} {path}: a tokenizer.json needs HF tokenizers: pip install -e '.[data]'") from None
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - the Rust loader raises plain Exception on a bad file
        raise DataError(f"{option} {path}: not a tokenizers file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def tokenizer_from_record(record: Dict, where: str, path: Optional[str] = None) -> TextTokenizer:
    """Reload the tokenizer a corpus was built with (or `path` instead), refusing one whose files changed."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise DataError(f"{where}: the 'tokenizer' record must be an object with a 'path'")
    special = record.get("special_ids") or {}
    option = "--tokenizer" if path else f"{where}: tokenizer.path"
    tok = load_tokenizer(path or record["path"], special.get("eod") if special.get("eod") is not None else None,
                         option)
    if tok.sha256 != record.get("sha256"):
        raise DataError(f"{where}: the corpus was built with tokenizer files of sha256 {record.get('sha256')}, but "
                        f"{tok.path} hashes to {tok.sha256}: not the same tokenizer; give the one it was built with "
                        "(--tokenizer PATH)")
    return tok
