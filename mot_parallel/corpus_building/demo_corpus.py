"""An offline, deterministic demo corpus where the text decides what the other modalities contain.

A tiny world of objects: a caption names a count, size, colour, shape and position
("the picture shows two large red stars at the top"). Then
  image  (atomic, 8x8 = 64 codes): a background code with `count` blocks of the object's code
         (colour x shape) of the given size, placed in the named region (small seeded jitter);
  speech (units): the caption read aloud, each word a fixed 2-3 unit pronunciation, pauses between;
  text   also free-running "prose" from a seeded Markov chain over filler words.
Documents mix these: caption->image, image->caption, sentence->speech, interleaved
[text, image, text, speech], and prose. Image and speech losses can only fall by learning the
text->image / text->speech mapping, so per-modality losses are meaningful. No download; rebuilding
4000 documents takes about a second.

Two controlled variants for the fidelity study (docs/fidelity.md) each change one property; everything else,
document by document, is the default `variant="caption"`:
  textured  each image's background is a striped texture (two of 16 texture codes, a period of 2-4, rows or
            columns) drawn per image and never named by the caption: part of every image is predictable only
            from the image itself;
  vague     captions leave out the object's colour and its shape, each with probability 1/2 (the image still
            shows them): the caption no longer decides the image, which must be read partly from itself.

Vocabulary (512 ids): text 0-255, image codes 256-447, speech units 448-511.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np

from ..data.indexed import IndexedWriter, token_dtype
from ..outputs import CORPUS_DEMO

MODALITIES = ("text", "image", "speech")
VOCAB_SIZE = 512
TEXT, IMAGE, SPEECH = (0, 256), (256, 448), (448, 512)
GRID = 8
VARIANTS = ("caption", "textured", "vague")
_TEXTURE0, _TEXTURES = IMAGE[0] + 65, 16  # after the background (0) and the 64 object codes (1-64)

_FUNCTION = ["the", "a", "picture", "shows", "image", "of", "at", "and", "is", "there", "here", "we", "see",
             "hear", "voice", "says", "in", "on", "with", "."]
_COUNTS = ["one", "two", "three", "four"]
_SIZES = ["small", "medium", "large"]
_COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
_SHAPES = ["circle", "square", "triangle", "star", "ring", "cross", "heart", "moon"]
_PLACES = ["left", "right", "top", "bottom"]
WORDS = _FUNCTION + _COUNTS + _SIZES + _COLORS + _SHAPES + _PLACES
_FILLER0 = len(WORDS)  # the remaining text ids are filler words for prose
W = {w: i for i, w in enumerate(WORDS)}


def _pronunciations(rng: np.random.Generator) -> List[np.ndarray]:
    n_units = SPEECH[1] - SPEECH[0] - 1  # the last unit is a pause
    return [SPEECH[0] + rng.integers(0, n_units, size=int(rng.integers(2, 4))) for _ in range(TEXT[1])]


def _markov(rng: np.random.Generator) -> np.ndarray:
    """Sparse transition table over filler words: each word has 4 likely successors."""
    n = TEXT[1] - _FILLER0
    table = np.zeros((n, n))
    for i in range(n):
        table[i, rng.choice(n, size=4, replace=False)] = rng.dirichlet(np.ones(4))
    return table


def _caption(rng) -> Tuple[List[int], Tuple[int, int, int, int, int]]:
    c, s, col, sh, pl = (int(rng.integers(0, k)) for k in (4, 3, 8, 8, 4))
    words = ["the", "picture", "shows", _COUNTS[c], _SIZES[s], _COLORS[col], _SHAPES[sh], "at", "the",
             _PLACES[pl], "."]
    return [W[w] for w in words], (c, s, col, sh, pl)


def _texture(rng) -> np.ndarray:
    """A background the caption does not describe: stripes of two texture codes, period 2-4, rows or columns."""
    a, b = _TEXTURE0 + rng.choice(_TEXTURES, size=2, replace=False)
    period, width = int(rng.integers(2, 5)), int(rng.integers(1, 3))
    stripe = np.where(np.arange(GRID) % period < min(width, period - 1), a, b)
    return np.tile(stripe, (GRID, 1)) if rng.integers(0, 2) else np.tile(stripe[:, None], (1, GRID))


def _image(rng, attrs, texture_rng=None) -> np.ndarray:
    count, size, color, shape, place = attrs
    grid = _texture(texture_rng) if texture_rng is not None else np.full((GRID, GRID), IMAGE[0], dtype=np.int64)
    code = IMAGE[0] + 1 + color * 8 + shape
    block = size + 1
    rows = {"top": (0, 4), "bottom": (4, 8)}.get(_PLACES[place], (0, 8))
    cols = {"left": (0, 4), "right": (4, 8)}.get(_PLACES[place], (0, 8))
    for k in range(count + 1):
        r = rows[0] + (k * block + int(rng.integers(0, 2))) % max(1, rows[1] - rows[0] - block + 1)
        q = cols[0] + (k * 2 + int(rng.integers(0, 2))) % max(1, cols[1] - cols[0] - block + 1)
        grid[r:r + block, q:q + block] = code
    return grid.reshape(-1)


def _speech(words: List[int], pron) -> np.ndarray:
    pause = SPEECH[1] - 1
    return np.concatenate([np.r_[pron[w], pause] for w in words])


def _prose(rng, table, n) -> List[int]:
    w = int(rng.integers(0, table.shape[0]))
    out = []
    for _ in range(n):
        out.append(_FILLER0 + w)
        w = int(rng.choice(table.shape[0], p=table[w]))
    return out


def documents(n_docs: int, seed: int = 0, variant: str = "caption") -> Iterator[List[Tuple[np.ndarray, int]]]:
    """Yield documents as [(tokens, modality id)] segments; deterministic in (n_docs, seed, variant)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    # its own stream: every document keeps the default variant's caption, objects, speech and prose
    textured = np.random.default_rng([seed, 2]) if variant == "textured" else None
    vague = np.random.default_rng([seed, 3]) if variant == "vague" else None
    world = np.random.default_rng([seed, 0])
    pron, table = _pronunciations(world), _markov(world)
    rng = np.random.default_rng([seed, 1])
    t, i, s = 0, 1, 2
    for _ in range(n_docs):
        kind = rng.choice(5, p=[0.3, 0.15, 0.2, 0.15, 0.2])
        cap, attrs = _caption(rng)
        if vague is not None:  # drop the colour (index 5) and/or the shape (6) word
            cap = [w for j, w in enumerate(cap) if not (j in (5, 6) and vague.random() < 0.5)]
        if kind == 0:    # caption -> image
            yield [(np.array(cap), t), (_image(rng, attrs, textured), i)]
        elif kind == 1:  # image -> caption
            yield [(_image(rng, attrs, textured), i), (np.array(cap), t)]
        elif kind == 2:  # sentence -> speech
            yield [(np.array(cap), t), (_speech(cap, pron), s)]
        elif kind == 3:  # interleaved
            said = [W["we"], W["hear"], W["a"], W["voice"], W["."]]
            yield [(np.array(cap), t), (_image(rng, attrs, textured), i), (np.array(said), t), (_speech(cap, pron), s)]
        else:            # prose
            yield [(np.array(_prose(rng, table, int(rng.integers(20, 120)))), t)]


def write_demo_corpus(prefix: str, n_docs: int = 4000, seed: int = 0, variant: str = "caption",
                      overwrite: bool = False) -> str:
    """Build the demo corpus as a multimodal Megatron indexed dataset at `prefix` (atomic write; an existing corpus
    there is replaced only with `overwrite`, and only one this project wrote)."""
    with IndexedWriter(prefix, token_dtype(VOCAB_SIZE), multimodal=True, overwrite=overwrite) as w:
        n_tok = 0
        for doc in documents(n_docs, seed, variant):
            w.add_document(doc)
            n_tok += sum(len(x) for x, _ in doc)
        w.close({"format": "mot_parallel/1", "written_by": CORPUS_DEMO, "modalities": list(MODALITIES),
                 "vocab_size": VOCAB_SIZE,
                 "documents": n_docs, "tokens": n_tok, "source": f"demo_corpus(seed={seed})" if variant == "caption" else
                 f"demo_corpus(seed={seed}, variant={variant})"})
    return prefix
