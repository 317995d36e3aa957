"""Where a tool may write: the one rule every writing tool (tools/, launch/, the converters) applies before work.

  1. An output that is, contains or lies inside one of the tool's inputs is refused (real paths: symlinks and
     `..` resolved), whatever the flags: `hf-to-mot --hf X --out X` would replace the model it reads.
  2. An output that already exists (a non-empty directory, a file, a corpus prefix's files) is refused, unless
     `--overwrite` is given AND it carries this project's mark of the same kind. So nothing a user made is ever
     replaced or deleted, and an earlier output of the same tool is replaced only when asked.
  3. A path that cannot be created (a parent that is a file, or not writable) is refused before any work.

The marks: a directory holds MARKER, a JSON file {"written_by": kind}; a PNG carries a text chunk (studies/png_files.py)
{"mot_parallel": kind}; a corpus prefix is marked by its own sidecar (<prefix>.mot.json with a "mot_parallel/..."
format); other files get a kind-specific recogniser (`is_ours`). Staging directories (`<out>.writing`) are marked
too, so a leftover is removed only when it is ours. Errors are `OutputError` (one line: the flag, the path, the fix).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Iterable, Optional, Sequence, Tuple

MARKER = ".mot_parallel_output"
Inputs = Iterable[Tuple[str, Optional[str]]]  # (flag naming it, path); None paths are skipped
# the checkpoint directories the converters write, by kind (their marks; here so a tool checks --out without
# importing the writers, which load torch or megatron)
UNIVERSAL, EXPORT, HF, MEGATRON = "universal checkpoint", "single-file export", "Hugging Face checkpoint", \
    "Megatron start"


class OutputError(ValueError):
    """An output the rules above refuse; the message names the flag, the path and the fix."""


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def refuse_overlap(flag: str, out: str, inputs: Inputs, what: str = "the input") -> None:
    """Rule 1 for one output path (`what`: how the message calls the other paths; two outputs must not overlap
    either)."""
    real = os.path.realpath(out)
    for in_flag, path in inputs:
        if not path:
            continue
        other = os.path.realpath(path)
        how = "is" if real == other or _same_file(real, other) else "lies inside" if _inside(real, other) else \
            "contains" if _inside(other, real) else None
        if how:
            raise OutputError(f"{flag} {out} {how} {what} {path} ({in_flag}); write the output elsewhere")


def _same_file(a: str, b: str) -> bool:
    """Two names of one file (a hard link): real paths differ, the inode is the same."""
    try:
        return os.path.samefile(a, b)
    except OSError:   # either does not exist (yet)
        return False


NAME_MAX = 255   # bytes in one path component on Linux, macOS and Windows file systems


def _check_creatable(flag: str, path: str) -> None:
    """Rule 3: a name the file system can hold, and the nearest existing ancestor is a writable directory."""
    if not path:
        raise OutputError(f"{flag}: an empty name; give a path")
    long = [c for c in os.path.abspath(path).split(os.sep) if len(os.fsencode(c)) > NAME_MAX]
    if long:
        raise OutputError(f"{flag} {path}: the name {long[0][:40]}... is longer than {NAME_MAX} bytes; choose a "
                          f"shorter {flag}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"{flag} {path}: cannot be created, {parent} is a file; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {parent} is not writable; choose another {flag}")


def written_by(directory: str) -> Optional[str]:
    """The kind recorded by this project's mark in `directory`, or None (no mark, or not readable)."""
    path = os.path.join(directory, MARKER)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            kind = json.loads(f.read().decode("utf-8")).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def mark(directory: str, kind: str) -> None:
    with open(os.path.join(directory, MARKER), "w") as f:
        json.dump({"written_by": kind}, f)


def _refuse_existing(flag: str, path: str, ours: bool, what: str) -> None:
    if not ours:
        raise OutputError(f"{flag} {path}: exists and was not written by this tool (no {what}); it is never "
                          f"replaced: choose another {flag}")


def check_dir(flag: str, out: str, kind: str, inputs: Inputs = (), overwrite: bool = False) -> None:
    """Rules 1-3 for an output directory `out` that the tool writes as a whole (marked `kind`)."""
    refuse_overlap(flag, out, inputs)
    if os.path.islink(out) or (os.path.exists(out) and not os.path.isdir(out)):
        raise OutputError(f"{flag} {out}: exists and is not a directory; choose another {flag}")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise OutputError(f"{flag} {out}: exists and is not empty; choose a new {flag}, or add --overwrite to "
                              f"replace an earlier output of this tool")
        other = written_by(out)
        if other not in (None, kind):
            raise OutputError(f"{flag} {out}: holds a {other}, not a {kind}; it is never replaced by another kind of "
                              f"output: choose another {flag}")
        _refuse_existing(flag, out, other == kind, f"{MARKER} marking a {kind}")
    _check_creatable(flag, out)


def check_files(flag: str, paths: Sequence[str], is_ours: Callable[[], bool], inputs: Inputs = (),
                overwrite: bool = False) -> None:
    """Rules 1-3 for the files one output consists of (a PNG; a corpus prefix's .bin/.idx/...): `is_ours()`
    recognises an earlier output of this tool among them."""
    for path in paths:
        refuse_overlap(flag, path, inputs)
        if os.path.isdir(path):
            raise OutputError(f"{flag}: {path} is a directory; give a file name")
    there = [p for p in paths if os.path.lexists(p)]
    if there:
        if not overwrite:
            raise OutputError(f"{flag}: {there[0]} exists; choose a new {flag}, or add --overwrite to replace an "
                              f"earlier output of this tool")
        _refuse_existing(flag, there[0], is_ours() and not any(os.path.islink(p) for p in there), "mark of ours")
    _check_creatable(flag, paths[0])


# ------------------------------------------------------------------------------------------ kinds of output

def new_file(path: str, mode: str = "wb"):
    """Open a temporary file that must not exist yet, never through a symbolic link (O_EXCL | O_NOFOLLOW): a link
    planted at a predictable name like <prefix>.bin.tmp.<pid> would make the writer truncate its target."""
    exclusive = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        return open(path, mode, opener=lambda p, flags: os.open(p, flags | exclusive, 0o644))
    except FileExistsError:
        raise OutputError(f"{path}: exists (a link, or a leftover temporary file of this process id); remove it "
                          "and run again") from None


def make_parent(path: str) -> str:
    """Create the directories above a checked output file (right before writing it); returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def corpus_files(prefix: str, extra: Sequence[str] = ()) -> list:
    return [prefix + ext for ext in (".bin", ".idx", ".mot.json", *extra)]


def corpus_is_ours(prefix: str, kind: Optional[str] = None) -> bool:
    """A corpus prefix whose sidecar this project wrote (format 'mot_parallel/<n>'), and, given a `kind`, whose
    sidecar says it was written by that kind of writer ("written_by": CORPUS_* below)."""
    try:
        with open(prefix + ".mot.json", "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
        fmt = meta.get("format")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    return isinstance(fmt, str) and fmt.startswith("mot_parallel/") and (kind is None or meta.get("written_by") == kind)


# the corpus writers, by the "written_by" of their sidecars (a tool's --overwrite replaces only its own kind)
CORPUS_PREPROCESSED, CORPUS_DEMO, CORPUS_PICTURES, CORPUS_REAL = "preprocess_data", "demo corpus", "demo pictures", \
    "real corpus"


def check_corpus(flag: str, prefix: str, inputs: Inputs = (), overwrite: bool = False,
                 extra: Sequence[str] = (), kind: Optional[str] = None) -> None:
    """A corpus prefix (<prefix>.bin/.idx/.mot.json and `extra` suffixes); with a `kind`, only a corpus of that
    writer is ours to replace (the library writers pass none: any corpus this project wrote)."""
    if not os.path.basename(prefix):
        raise OutputError(f"{flag} {prefix}: a prefix names files (e.g. data/corpus), not a directory")
    check_files(flag, corpus_files(prefix, extra), lambda: corpus_is_ours(prefix, kind), inputs, overwrite)


# ------------------------------------------------------------------------------------------ writing directories

def staging_dir(path: str) -> str:
    return os.path.abspath(path) + ".writing"


def fresh_staging(path: str, kind: str) -> str:
    """An empty, marked staging directory for `path`; a leftover of an interrupted write is removed only when
    it carries our mark (any other directory of that name is refused)."""
    tmp = staging_dir(path)
    if os.path.islink(tmp) or os.path.isfile(tmp):
        raise OutputError(f"{tmp}: exists and is not a staging directory of this project; move it away")
    if os.path.isdir(tmp):
        if os.listdir(tmp) and written_by(tmp) is None:
            raise OutputError(f"{tmp}: exists and was not written by this project; move it away")
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    mark(tmp, kind)
    return tmp


def replace_dir(tmp: str, path: str) -> None:
    """Put the finished staging directory `tmp` at `path`: an existing `path` is replaced only when it is empty or
    marked with the same kind as `tmp` (the last guard, whatever the caller checked)."""
    kind = written_by(tmp)
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        raise OutputError(f"{path}: exists and is not a directory; nothing was replaced")
    if os.path.isdir(path):
        if os.listdir(path) and (kind is None or written_by(path) != kind):
            raise OutputError(f"{path}: exists and was not written as a {kind} by this project; it is never "
                              f"replaced (the new output is in {tmp})")
        shutil.rmtree(path)
    os.replace(tmp, path)


def fresh_dir(path: str, kind: str) -> str:
    """An empty directory marked `kind` at a path `check_dir` accepted: an earlier output of ours there (--overwrite)
    is removed first; anything else is refused (the last guard)."""
    if os.path.isdir(path) and os.listdir(path):
        if written_by(path) != kind or os.path.islink(path):
            raise OutputError(f"{path}: exists and is not a {kind} of this project; nothing was removed")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    mark(path, kind)
    return path


def check_own_dir(flag: str, path: str, kind: str) -> None:
    """A directory a tool keeps using across runs (a work directory, a study it continues): new, empty, or marked
    as its `kind`; anything else is refused."""
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)
                                      and (written_by(path) == kind or not os.listdir(path))):
        raise OutputError(f"{flag} {path}: exists and is not a {kind} of this project (no {MARKER}); choose "
                          f"another {flag}")
    _check_creatable(flag, path)


def claim_scratch(path: str, kind: str, flag: str = "the work directory") -> str:
    """A working directory of ours at `path` (checked by check_own_dir, then created and marked)."""
    check_own_dir(flag, path, kind)
    os.makedirs(path, exist_ok=True)
    mark(path, kind)
    return path


def remove_scratch(path: str, kind: str) -> None:
    """Delete a working directory only if it carries our mark."""
    if written_by(path) == kind and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
