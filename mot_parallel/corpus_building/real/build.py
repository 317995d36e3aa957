"""Build the real-data corpus: plan documents, train the text tokenizer, synthesise and quantise speech,
write a multimodal indexed dataset. Cached: a build whose sidecar carries the same build key (options +
the versions of everything the bytes depend on) is not redone.

Files at <prefix>: .bin/.idx (Megatron indexed dataset, one segment per modality run), .mot.json (sidecar:
modalities, token ranges, counts, options, environment, build key), .tokenizer.json (decode text ids with
`tokenizers.Tokenizer.from_file`), .speech_units.npy (float64 [2 + units, 40]: feature mean, std, centres).
The auxiliary files are written (atomically) before the dataset, whose .idx is published last.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from typing import Callable, Dict, List

import numpy as np

from ...data.indexed import SIDECAR, IndexedDataset, IndexedWriter, token_dtype
from ...outputs import CORPUS_REAL, check_corpus
from . import digits, plan, prose, speech, tokenizer, units
from .errors import RealCorpusError

FORMAT = "mot_parallel.real_corpus/1"  # bump when the builder's output changes for the same inputs
MODALITIES = ("text", "image", "speech")
DEFAULT_PREFIX = "runs/real_corpus/real"  # tools/build_real_corpus.py's default; configs/real_cpu.yaml's data.path


@dataclasses.dataclass(frozen=True)
class RealCorpusOptions:
    documents: int = 3000           # the default fits every source once (no scan/chunk/sentence reused)
    seed: int = 0
    text_vocab: int = 2048          # BPE ids; small enough for a CPU model's output layer
    speech_units: int = 128         # k-means units (GSLM used 50-200)
    calibration_utterances: int = 256  # utterances the units are fitted on (independent of `documents`)
    prose_share: float = 0.75       # share of prose chunks kept as prose documents; the rest gives spoken sentences

    def validate(self) -> None:
        checks = [("documents", self.documents >= 1, "at least 1"),
                  ("text_vocab", 128 <= self.text_vocab <= 60000, "in [128, 60000]"),
                  ("speech_units", 2 <= self.speech_units <= 4096, "in [2, 4096]"),
                  ("calibration_utterances", self.calibration_utterances >= 2, "at least 2"),
                  ("prose_share", 0.0 < self.prose_share < 1.0, "strictly between 0 and 1")]
        for name, ok, want in checks:
            if not ok:
                raise RealCorpusError(f"real corpus option {name}={getattr(self, name)!r}: must be {want}")

    def token_ranges(self) -> Dict[str, List[int]]:
        """One shared vocabulary: text ids, then image codes (grey levels), then speech units."""
        t, i = self.text_vocab, self.text_vocab + digits.LEVELS
        return {"text": [0, t], "image": [t, i], "speech": [i, i + self.speech_units]}

    def vocab_size(self) -> int:
        return self.token_ranges()["speech"][1]


def environment(program: str = speech.ESPEAK) -> Dict[str, str]:
    """Versions of everything the corpus bytes depend on (part of the build key and the sidecar)."""
    import sklearn
    return {"python": platform.python_version(), "stdlib": prose.fingerprint(), "numpy": np.__version__,
            "tokenizers": tokenizer.version(), "scikit-learn": sklearn.__version__,
            "espeak-ng": speech.espeak_version(program)}


def preflight(opts: RealCorpusOptions, program: str) -> Dict[str, str]:
    """Every dependency and option checked before any work starts; returns the environment."""
    opts.validate()
    speech.require_espeak(program)
    digits.require_sklearn()
    return environment(program)


def build_key(opts: RealCorpusOptions, env: Dict[str, str]) -> str:
    blob = json.dumps({"format": FORMAT, "options": dataclasses.asdict(opts), "environment": env}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def up_to_date(prefix: str, key: str) -> bool:
    """True when <prefix> holds a complete corpus built with this key."""
    needed = [prefix + ext for ext in (".bin", ".idx", SIDECAR, ".tokenizer.json", ".speech_units.npy")]
    if not all(os.path.isfile(p) for p in needed):
        return False
    try:
        ds = IndexedDataset(prefix)
    except ValueError:
        return False
    meta = ds.meta
    return (meta.get("build_key") == key and meta.get("documents") == ds.num_docs
            and meta.get("tokens") == int(ds.lengths.sum(dtype=np.int64)))


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _text_sources(seed: int, share: float):
    """(all paragraphs, prose chunks, spoken sentences): chunks shuffled and split into disjoint parts;
    spoken sentences that also occur in a prose chunk are dropped (no sentence in two documents)."""
    paras = prose.paragraphs()
    chunks = prose.chunks(paras)
    order = np.random.default_rng([seed, 6]).permutation(len(chunks))
    prose_part, speech_part = prose.split_pool([chunks[i] for i in order], share)
    in_prose = {s for c in prose_part for s in prose.sentences(c)}
    seen, sentences = set(in_prose), []
    for c in speech_part:
        for s in prose.short_sentences(c):
            if s not in seen:
                seen.add(s)
                sentences.append(s)
    return paras, prose_part, sentences


def _speech_units(the_plan: plan.Plan, opts: RealCorpusOptions, scans, sentences, workers: int, program: str,
                  log: Callable[[str], None]):
    """(codebook, units per speech segment in document order)."""
    calib = plan.calibration_utterances(opts.calibration_utterances, opts.seed, scans, sentences)
    said = [seg for doc in the_plan.documents for kind, seg in doc if kind == "speech"]
    t0 = time.perf_counter()
    frames = speech.features(calib + said, workers, program)
    log(f"synthesised {len(calib) + len(said)} utterances ({sum(map(len, frames))} frames) in "
        f"{time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    book = units.fit_codebook(frames[:len(calib)], opts.speech_units, opts.seed)
    log(f"fitted {opts.speech_units} speech units in {time.perf_counter() - t0:.1f} s")
    return book, units.units_of(frames[len(calib):], book)


def _tokenise(the_plan: plan.Plan, opts: RealCorpusOptions, tok, scans, speech_units) -> List[list]:
    """Documents as [(token ids, modality id)] segments in the shared vocabulary."""
    ranges = opts.token_ranges()
    texts = [seg for doc in the_plan.documents for kind, seg in doc if kind == "text"]
    text_ids, said = iter(tokenizer.encode(tok, texts)), iter(speech_units)
    docs = []
    for doc in the_plan.documents:
        out = []
        for kind, seg in doc:
            if kind == "text":
                out.append((np.asarray(next(text_ids), dtype=np.int64), 0))
            elif kind == "image":
                out.append((digits.image_tokens(scans.images[seg], ranges["image"][0]), 1))
            else:
                out.append((ranges["speech"][0] + next(said), 2))
        docs.append(out)
    return docs


AUX = (".tokenizer.json", ".speech_units.npy")  # written next to the dataset


def build_real_corpus(prefix: str, opts: RealCorpusOptions = RealCorpusOptions(), workers: int = 2,
                      program: str = speech.ESPEAK, force: bool = False,
                      log: Callable[[str], None] = print, overwrite: bool = False) -> Dict:
    """Build (or find up to date) the corpus at `prefix`; returns its sidecar. `workers` (synthesis threads)
    does not change the output. Another corpus at `prefix` is replaced only with `overwrite` (or `force`), and
    only one this project wrote (mot_parallel/outputs.py: OutputError otherwise)."""
    check_corpus("--output-prefix", prefix, overwrite=True, extra=AUX, kind=CORPUS_REAL)  # files not ours: refused before any work
    env = preflight(opts, program)
    key = build_key(opts, env)
    if not force and up_to_date(prefix, key):
        log(f"{prefix}: up to date (build key {key}); nothing to do")
        with open(prefix + SIDECAR) as f:
            return json.load(f)
    check_corpus("--output-prefix", prefix, overwrite=overwrite or force, extra=AUX, kind=CORPUS_REAL)
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    scans = digits.load_scans()
    paras, prose_chunks, sentences = _text_sources(opts.seed, opts.prose_share)
    the_plan = plan.plan_documents(opts.documents, opts.seed, scans, prose_chunks, sentences)
    tok = tokenizer.train_tokenizer([p.text for p in paras] + digits.all_captions() + list(plan.BRIDGES),
                                    opts.text_vocab)
    log(f"read {len(paras)} prose paragraphs, trained a {tok.get_vocab_size()}-id tokenizer "
        f"({time.perf_counter() - t0:.1f} s)")
    book, speech_units = _speech_units(the_plan, opts, scans, sentences, workers, program, log)
    docs = _tokenise(the_plan, opts, tok, scans, speech_units)
    _atomic_write(prefix + ".tokenizer.json", tok.to_str().encode())
    with open(f"{prefix}.speech_units.npy.tmp.{os.getpid()}", "wb") as f:
        np.save(f, book.to_array())
    os.replace(f"{prefix}.speech_units.npy.tmp.{os.getpid()}", prefix + ".speech_units.npy")
    meta = _sidecar(opts, env, key, the_plan, docs, len(sentences), len(prose_chunks))
    with IndexedWriter(prefix, token_dtype(opts.vocab_size()), multimodal=True, overwrite=True) as w:  # checked
        for doc in docs:
            w.add_document(doc)
        w.close(meta)
    log(f"wrote {prefix}.bin/.idx/.mot.json: {meta['documents']} documents, {meta['tokens']} tokens "
        f"{meta['tokens_per_modality']} in {time.perf_counter() - t0:.1f} s")
    return meta


def _sidecar(opts, env, key, the_plan, docs, n_sentences, n_chunks) -> Dict:
    per_mod = np.zeros(len(MODALITIES), dtype=np.int64)
    for doc in docs:
        for toks, m in doc:
            per_mod[m] += len(toks)
    reused = dict(the_plan.reused)
    return {"format": "mot_parallel/1", "written_by": CORPUS_REAL, "modalities": list(MODALITIES),
            "vocab_size": opts.vocab_size(),
            "documents": len(docs), "tokens": int(per_mod.sum()),
            "source": f"real_corpus(documents={opts.documents}, seed={opts.seed})",
            "token_ranges": opts.token_ranges(),
            "tokens_per_modality": {m: int(n) for m, n in zip(MODALITIES, per_mod)},
            "documents_per_kind": plan.kind_counts(the_plan),
            "sources": {"scans": "sklearn.datasets.load_digits (1797 scans)", "prose_chunks": n_chunks,
                        "spoken_sentences": n_sentences, "prose": "Python standard library docstrings"},
            "reused": reused, "options": dataclasses.asdict(opts), "environment": env,
            "builder": FORMAT, "build_key": key}
