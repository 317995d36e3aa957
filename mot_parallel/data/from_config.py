"""Open the corpus a config asks for; with `data.path: demo`, build the offline demo corpus first.

The demo corpus is written under <run.output_dir>/demo_corpus/ by whichever rank gets there first, with
the builder registered in data/demo_registry.py (the runtime never imports the builders); writes are
atomic (pid-suffixed temp files renamed into place), so concurrent builders are harmless and produce
identical bytes.

`check_data(cfg, full)` is the data part of the preflight (mot_parallel/preflight.py): the corpus exists,
its index is sound and it fits the model; `full` also scans (or reads the cached scan of) every token id
and derives the token-range segments, which `open_corpus` does anyway."""
from __future__ import annotations

import os

from ..config import Config, atomic_modalities
from ..config.blend_spec import parse_blend
from ..config.schema import DEMO_CORPUS
from .corpus import Corpus, check_fits
from .corpus_set import check_splittable
from .demo_registry import DemoCorpus, registered_demo
from .indexed import DataError, IndexedDataset


def _demo_kind(cfg: Config) -> str:
    """The demo a config gets with data.path=demo: the picture demo (Transfusion) for a model with
    continuous modalities, else the token demo."""
    return "pictures" if cfg.model.continuous else "demo"


def _demo(cfg: Config) -> DemoCorpus:
    return registered_demo(_demo_kind(cfg))


def _demo_patch(cfg: Config) -> int:
    """The patch side the picture demo is cut into: the config's, where the demo offers it (else its first
    side, which check_demo_fits then names as needed); 0 for the token demo."""
    image, patches = cfg.model.continuous.get("image"), _demo(cfg).patches
    return (image.patch if image.patch in patches else patches[0]) if image is not None and patches else 0


def demo_prefix(cfg: Config) -> str:
    image = cfg.model.continuous.get("image")
    kind = f"{_demo_kind(cfg)}_p{image.patch}" if image is not None else _demo_kind(cfg)
    return os.path.join(cfg.run.output_dir, "demo_corpus", f"{kind}_{cfg.data.demo_documents}")


def check_demo_fits(cfg: Config) -> None:
    demo = _demo(cfg)
    keys = ("source", "channels", "patch", "grid")
    image = cfg.model.continuous.get("image")
    want = demo.continuous(_demo_patch(cfg) or demo.patches[0])["image"] if cfg.model.continuous else {}
    continuous_ok = not cfg.model.continuous or (set(cfg.model.continuous) == {"image"} and all(
        getattr(image, k) == want[k] for k in keys))
    if list(cfg.model.modalities) != list(demo.modalities) or cfg.model.vocab_size < demo.vocab_size or \
            not continuous_ok:
        need = f" and model.continuous.image {dict((k, want[k]) for k in keys)} (patch one of {list(demo.patches)})" \
            if cfg.model.continuous else ""
        raise DataError(f"data.path={DEMO_CORPUS} asks for the demo corpus: it needs model.modalities = "
                        f"{list(demo.modalities)} and model.vocab_size >= {demo.vocab_size}{need} (got "
                        f"{cfg.model.modalities}, {cfg.model.vocab_size}); or give data.path")


def check_corpus_files(prefix: str, key: str = "data.path") -> None:
    """`key` (data.path, data.valid_path) names a prefix: say so when it names one of the files, a directory, or
    nothing."""
    if os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin"):
        return
    for ext in (".bin", ".idx", ".mot.json"):
        if prefix.endswith(ext) and os.path.isfile(prefix[: -len(ext)] + ".idx"):
            raise DataError(f"{key}={prefix} names a file of the corpus; give its prefix: "
                            f"{key}={prefix[: -len(ext)]}")
    missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
    what = "is a directory; " if os.path.isdir(prefix) else ""
    demo = f", or set data.path={DEMO_CORPUS} for the demo corpus" if key == "data.path" else ""
    raise DataError(f"{key}={prefix} {what}has no corpus: {' and '.join(missing)} not found (a corpus is "
                    f"<prefix>.bin + <prefix>.idx; build one with tools/preprocess_data.py{demo})")


def check_trainable(corpus: Corpus) -> None:
    """Refuse a corpus nothing can be learned from (the step's loss normaliser would be 0)."""
    if corpus.num_docs == 0 or not corpus.doc_len.any():
        raise DataError(f"{corpus.prefix}: the corpus has no tokens ({corpus.num_docs} documents); rebuild it")
    if int(corpus.doc_len.max()) < 2:
        raise DataError(f"{corpus.prefix}: every document has a single token, so no token has a next-token target "
                        "(documents are never joined); rebuild the corpus with whole documents")


def check_data(cfg: Config, full: bool = True) -> None:
    """The data preflight, for every corpus of data.path and data.valid_path (a prefix or a blend);
    `full=False` reads metadata only (no token scan, no segment derivation)."""
    for key in ("path", "valid_path"):
        spec = getattr(cfg.data, key)
        if key == "path" and spec == DEMO_CORPUS:
            check_demo_fits(cfg)
            continue
        if spec is None:
            continue
        split = cfg.data.valid_fraction if key == "path" and cfg.data.valid_path is None else 0.0
        for _, prefix in parse_blend(spec, f"data.{key}"):
            if full:
                check_splittable(open_prefix(cfg, prefix, f"data.{key}").num_docs, split, prefix)
                continue
            check_corpus_files(prefix, f"data.{key}")
            ds = IndexedDataset(prefix)
            check_fits(ds, cfg.model.modalities, cfg.model.vocab_size, bool(cfg.data.modality_token_ranges))
            check_splittable(ds.num_docs, split, prefix)


def open_prefix(cfg: Config, prefix: str, key: str = "data.path") -> Corpus:
    """One corpus of the config's data (of `key`), checked: its files, its fit to the model, its token ids."""
    check_corpus_files(prefix, key)
    corpus = _corpus(prefix, cfg)
    check_trainable(corpus)
    return corpus


def _corpus(prefix: str, cfg: Config) -> Corpus:
    continuous = {name: {"patch_dim": c.channels * c.patch * c.patch, "channels": c.channels, "patch": c.patch,
                         "grid": list(c.grid), "source": c.source} for name, c in cfg.model.continuous.items()}
    return Corpus(prefix, cfg.model.modalities, cfg.model.vocab_size, cfg.data.modality_token_ranges or None,
                  atomic=atomic_modalities(cfg), continuous=continuous)


def open_corpus(cfg: Config) -> Corpus:
    prefix = cfg.data.path
    if prefix == DEMO_CORPUS:
        check_demo_fits(cfg)
        prefix = demo_prefix(cfg)
        if not os.path.isfile(prefix + ".idx"):
            _demo(cfg).write(prefix, cfg.data.demo_documents, 0, _demo_patch(cfg))  # overwrites only its own
    else:
        check_corpus_files(prefix)
    corpus = _corpus(prefix, cfg)
    check_trainable(corpus)
    return corpus
