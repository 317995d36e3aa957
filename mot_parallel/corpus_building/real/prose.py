"""Real English prose: the docstrings of the Python standard library, cleaned into paragraphs.

Why the standard library: it is installed wherever Python is, needs no download, and its files are the
same on every machine with the same Python build, unlike numpy/torch whose versions float. Docstrings
are read with `ast` from the source files (no module is imported, so no code runs), in sorted path
order, and kept only where they look like prose: paragraphs without doctest/shell lines, mostly letters,
at least 8 words, starting with a capital and ending like a sentence. Text is folded to printable ASCII
(NFKD) with whitespace collapsed, and exact duplicate paragraphs are dropped (first occurrence wins) so
that no paragraph can sit in two documents of a train/validation split.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
import unicodedata
from typing import Iterator, List, NamedTuple, Optional, Tuple

# directories of the stdlib tree that are not the library's own prose (tests, tools, vendored code)
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
              "dist-packages", "pydoc_data", "__pycache__"}
_SHELL_PREFIXES = (">>>", "...", "$", "%", "#")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")


class Paragraph(NamedTuple):
    source: str  # path relative to the stdlib root
    text: str


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def source_files(root: str) -> List[str]:
    """Relative paths of the library's .py files, sorted (directory walk order is not portable)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-")]
        rel = os.path.relpath(dirpath, root)
        out.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if f.endswith(".py"))
    return sorted(out)


def fingerprint(root: Optional[str] = None) -> str:
    """Identity of the prose source: a hash of every file read (tens of ms); changes with the Python build."""
    root = root or stdlib_root()
    h = hashlib.sha256()
    for rel in source_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f"{rel}\0".encode() + hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16]


def to_ascii(text: str) -> str:
    """Fold to printable ASCII and collapse whitespace (keeps the tokenizer's alphabet ~95 symbols)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"\s+", " ", text).strip()


def _docstrings(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are templates or other encodings: not prose, skip them
    stack = [tree]  # depth-first in source order: a module's, class's and method's docstrings stay together
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
        stack.extend(reversed(children))


def prose_paragraphs(doc: str) -> List[str]:
    """The paragraphs of one docstring that read as English sentences."""
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = [line.strip() for line in para.splitlines()]
        if any(line.startswith(_SHELL_PREFIXES) for line in lines):
            continue
        text = to_ascii(" ".join(lines))
        if len(text) < 40 or len(text.split()) < 8 or not text[0].isupper() or text[-1] not in ".:":
            continue
        if sum(c.isalpha() or c == " " for c in text) < 0.85 * len(text):
            continue
        out.append(text)
    return out


def paragraphs(root: Optional[str] = None) -> List[Paragraph]:
    """Every distinct prose paragraph of the library, in file order then docstring order (memoised per
    library fingerprint: parsing ~600 files takes seconds)."""
    root = root or stdlib_root()
    return list(_paragraphs(root, fingerprint(root)))


@functools.lru_cache(maxsize=2)
def _paragraphs(root: str, _fingerprint: str) -> tuple:
    seen, out = set(), []
    for rel in source_files(root):
        for doc in _docstrings(os.path.join(root, rel)):
            for text in prose_paragraphs(doc):
                if text not in seen:
                    seen.add(text)
                    out.append(Paragraph(rel, text))
    return tuple(out)


def _cut(text: str, max_chars: int) -> str:
    """Cut an over-long paragraph at the last sentence end within max_chars (or the last space)."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = head.rfind(". ")
    return head[:end + 1] if end > 0 else head[:head.rfind(" ")]


def chunks(paras: List[Paragraph], max_chars: int = 1000) -> List[str]:
    """Consecutive paragraphs of one source file joined up to max_chars: the prose documents."""
    out: List[str] = []
    current: List[str] = []
    source, size = None, 0
    for p in paras:
        text = _cut(p.text, max_chars)
        if current and (p.source != source or size + 1 + len(text) > max_chars):
            out.append(" ".join(current))
            current, size = [], -1
        current.append(text)
        source, size = p.source, size + 1 + len(text)
    if current:
        out.append(" ".join(current))
    return out


def sentences(chunk: str) -> List[str]:
    return re.split(r"(?<=[.!?])\s+", chunk)


def short_sentences(chunk: str, min_words: int = 5, max_words: int = 16) -> List[str]:
    """Sentences of a chunk short and plain enough to be read aloud (words and light punctuation only)."""
    out = []
    for sent in sentences(chunk):
        words = sent.split()
        if not (min_words <= len(words) <= max_words) or not sent[0].isupper() or sent[-1] != ".":
            continue
        if all(_WORD.fullmatch(w.strip(",;:.")) for w in words):
            out.append(sent)
    return out


def split_pool(items: List[str], fraction: float) -> Tuple[List[str], List[str]]:
    """Split an (already shuffled) list in two disjoint parts: the first `fraction` and the rest."""
    cut = int(round(len(items) * fraction))
    return items[:cut], items[cut:]
