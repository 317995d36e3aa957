"""Where each discrete modality's ids live in the one vocabulary, as tools/preprocess_data.py writes them.

Text ids come from the text tokenizer as they are. The other discrete modalities are given as *codes* (a VQ's
codebook ids, a code grid .npy, speech units): code c of modality m is stored as id first(m) + c, with
first(m) from `data.modality_token_ranges` of --config (the Chameleon setting: image codes inside the one 65,536
vocabulary), or, without it, each such modality gets its own slice after the tokenizer's vocabulary, in
model.modalities order (--codebook-size gives the slice's size; a VQ gives its codebook's). Checked: every code
inside its modality's slice, and every text id outside all code slices (a text id inside the image range would
be read as an image token by a corpus opened by ranges). The layout is recorded in the sidecar (`token_ranges`,
`image_codes`), so the corpus decodes without the options it was built with.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.indexed import DataError
from . import image_tokenizer as vq_lib
from .image_specs import agree, size_pair


@dataclass(frozen=True)
class CodeSpec:
    """A discrete modality given as codes: ids [first, first + size); image modalities have a grid."""
    name: str
    first: int
    size: int
    grid: Optional[Tuple[int, int]] = None          # codes per image (rows, cols); None: any length
    image_size: Optional[Tuple[int, int]] = None    # pixels a picture is scaled to before the VQ
    vq: Optional[str] = None                        # the VQModel directory (absolute)
    vq_sha256: Optional[str] = None
    boi_token: Optional[int] = None
    eoi_token: Optional[int] = None

    def sidecar(self) -> dict:
        return {"first": self.first, "codebook_size": self.size, "grid": list(self.grid) if self.grid else None,
                "image_size": list(self.image_size) if self.image_size else None, "vq": self.vq,
                "vq_sha256": self.vq_sha256, "boi_token": self.boi_token, "eoi_token": self.eoi_token}


@dataclass
class TokenLayout:
    """The vocabulary's layout: code slices per modality id, the text modality, EOD and the document template."""
    vocab_size: int
    text_mode: Optional[int]                         # the first discrete modality: text, markers, EOD
    codes: Dict[int, CodeSpec] = field(default_factory=dict)
    eod: Optional[int] = None
    prefix: List[int] = field(default_factory=list)  # the tokenizer's own leading special tokens (BOS)
    suffix: List[int] = field(default_factory=list)

    def __post_init__(self):
        self._in_code_range = np.zeros(self.vocab_size, bool)
        for spec in self.codes.values():
            self._in_code_range[spec.first:spec.first + spec.size] = True

    def check_text_ids(self, ids: np.ndarray) -> Optional[int]:
        """The first text id that falls inside a code slice (or the vocabulary's end), or None."""
        bad = (ids >= self.vocab_size) | (ids < 0)
        bad[~bad] = self._in_code_range[ids[~bad]]
        return int(ids[np.argmax(bad)]) if bad.any() else None

    def code_owner(self, token: int) -> str:
        return next((s.name for s in self.codes.values() if s.first <= token < s.first + s.size), "beyond the vocab")

    def token_ranges(self, modalities: Sequence[str]) -> Dict[str, List[int]]:
        return {modalities[m]: [s.first, s.first + s.size] for m, s in sorted(self.codes.items())}


def parse_sizes(items: Optional[Sequence[str]], option: str = "--codebook-size") -> Dict[str, int]:
    """['image=8192', 'speech=512'] -> {'image': 8192, 'speech': 512}; DataError on anything else."""
    out: Dict[str, int] = {}
    for item in items or ():
        name, _, value = item.partition("=")
        if not name or not value.isdigit() or int(value) < 1 or name in out:
            raise DataError(f"{option} {item}: expected MODALITY=SIZE, a positive integer, once per modality")
        out[name] = int(value)
    return out


def code_slices(modalities: Sequence[str], sizes: Dict[str, int], configured: Dict[str, List[int]],
                text_vocab: Optional[int], discrete: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """{modality: (first, size)} of every modality given as codes (see the module docstring)."""
    for name in list(sizes) + list(configured):
        if name not in modalities or name not in discrete:
            kind = "not one of the modalities" if name not in modalities else "continuous, not discrete codes"
            source = "data.modality_token_ranges" if name in configured else "--codebook-size / --image-modality"
            raise DataError(f"{source}: codes for {name!r}: {kind} {list(modalities)}")
    if configured:
        out = {}
        for name, (lo, hi) in configured.items():
            size = sizes.get(name, hi - lo)
            if size > hi - lo:
                raise DataError(f"{name}: a codebook of {size} codes does not fit data.modality_token_ranges."
                                f"{name}=[{lo}, {hi}) ({hi - lo} ids)")
            out[name] = (lo, size)
        missing = [n for n in sizes if n not in configured]
        if missing:
            raise DataError(f"{missing[0]}: codes given but data.modality_token_ranges has no range for it; "
                            "add one to the config")
        return out
    if sizes and text_vocab is None:
        raise DataError(f"codes for {', '.join(sizes)} need a place in the vocabulary: give --tokenizer (they follow "
                        "its vocabulary) or data.modality_token_ranges in --config")
    out, end = {}, text_vocab or 0
    for name in modalities:
        if name in sizes:
            out[name] = (end, sizes[name])
            end += sizes[name]
    return out


def check_vocabulary(vocab_size: Optional[int], layout_end: int, what: Sequence[Tuple[str, Optional[int]]]) -> int:
    """The vocabulary size (given, or the layout's end) after checking every id in `what` fits it."""
    vocab = vocab_size if vocab_size else layout_end
    for label, ids_end in what:
        if ids_end is not None and ids_end > vocab:
            raise DataError(f"{label} needs ids up to {ids_end - 1}, beyond the vocabulary [0, {vocab}); raise "
                            "--vocab-size (or model.vocab_size)")
    return vocab


def build_layout(args, cfg, modalities: Sequence[str], continuous: Sequence[str], tokenizer, vocab: Optional[int]
                 ) -> Tuple[TokenLayout, object]:
    """(TokenLayout, the VQModel or None) of tools/preprocess_data.py's options (--codebook-size, --image-tokenizer, --image-modality,
    --grid, --image-size, BOI/EOI resolved to ids, --eod-token / --no-append-eod) and --config's ranges."""
    discrete = [m for m in modalities if m not in continuous]
    text_mode = modalities.index(discrete[0]) if discrete else None
    sizes, image = parse_sizes(args.codebook_size), args.image_modality or "image"
    if args.image_modality is not None and args.image_tokenizer is None and args.grid is None:
        raise DataError("--image-modality names the modality of --image-tokenizer or --grid codes; neither is given")
    text = modalities[text_mode] if text_mode is not None else None
    if text in sizes or text in (cfg.data.modality_token_ranges if cfg is not None else {}):
        raise DataError(f"codes for {text!r}: it is the text modality (the tokenizer's ids, from 0); give codes "
                        "ranges only to the other discrete modalities")
    vq = None
    if args.image_tokenizer is not None:
        vq = vq_lib.load_vq(args.image_tokenizer)
        if sizes.setdefault(image, vq_lib.codebook_size(vq)) != vq_lib.codebook_size(vq):
            raise DataError(f"--codebook-size {image}={sizes[image]}, but the VQ has {vq_lib.codebook_size(vq)} codes")
    if vq is not None and image not in discrete:
        raise DataError(f"--image-modality {image}: not a discrete modality of {list(modalities)} (image codes need "
                        "one; continuous images take --continuous)")
    configured = dict(cfg.data.modality_token_ranges) if cfg is not None else {}
    slices = code_slices(modalities, sizes, configured, tokenizer.vocab_size if tokenizer else None, discrete)
    codes = {modalities.index(n): CodeSpec(n, lo, size) for n, (lo, size) in slices.items()}
    if image in slices:
        spec = _image_spec(args, image, *slices[image], vq)
        codes[modalities.index(image)] = spec or codes[modalities.index(image)]
    eod = tokenizer.eod if tokenizer is not None and args.append_eod else None
    if tokenizer is not None and args.append_eod and eod is None:
        raise DataError(f"--tokenizer {args.tokenizer}: names no EOS token to end documents with; give --eod-token "
                        "TOKEN (an id or a token of its vocabulary) or --no-append-eod")
    end = max([tokenizer.vocab_size if tokenizer else 0] + [s.first + s.size for s in codes.values()])
    vocab = check_vocabulary(vocab, end, [("the tokenizer", tokenizer.vocab_size if tokenizer else None)] +
                             [(f"{s.name}'s codes [{s.first}, {s.first + s.size})", s.first + s.size)
                              for s in codes.values()])
    for m, v in (("boi", args.boi_token), ("eoi", args.eoi_token)):
        if v is not None and not 0 <= v < vocab:
            raise DataError(f"{m} token {v} (--{m}-token) is outside the vocabulary [0, {vocab})")
        if v is not None and any(s.first <= v < s.first + s.size for s in codes.values()):
            raise DataError(f"{m} token {v} (--{m}-token) lies inside a code range; markers are text tokens")
    return TokenLayout(vocab, text_mode, codes, eod, list(tokenizer.prefix) if tokenizer else [],
                       list(tokenizer.suffix) if tokenizer else []), vq


def _image_spec(args, name: str, first: int, size: int, vq) -> Optional[CodeSpec]:
    """The discrete image modality's CodeSpec: pictures through the VQ (grid = --image-size / its downsampling), or
    precomputed code grids of --grid; None when neither is given (codes of any length)."""
    grid = size_pair(args.grid, "--grid")
    if vq is None:
        return CodeSpec(name, first, size, grid, boi_token=args.boi_token, eoi_token=args.eoi_token) if grid else None
    image_size = size_pair(args.image_size, "--image-size")
    if image_size is None:
        raise DataError("--image-tokenizer: give --image-size (the pixels a picture is scaled to)")
    f = vq_lib.downsampling(vq)
    if image_size[0] % f or image_size[1] % f:
        raise DataError(f"--image-size {image_size[0]} {image_size[1]} is not a multiple of {f} (the VQ's "
                        "downsampling)")
    grid = agree(f"{name} code grid", [("--grid", list(grid) if grid else None),
                                        ("--image-size", [image_size[0] // f, image_size[1] // f])])
    path = os.path.abspath(args.image_tokenizer)
    return CodeSpec(name, first, size, (int(grid[0]), int(grid[1])), image_size, path, vq_lib.vq_hash(path),
                    args.boi_token, args.eoi_token)
