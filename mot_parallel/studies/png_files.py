"""PNG outputs of the tools (plots, sample grids): outputs.py's rules for a picture file, its mark, its writer.

A PNG of ours carries the text chunk {PNG_KEY: kind}; `check_png` refuses a name matplotlib would not write as
given, and an existing PNG without the mark (rule 2); `save_png` writes through a new file renamed over the name.
"""
from __future__ import annotations

import os

from ..outputs import Inputs, OutputError, check_files, make_parent, new_file

PNG_KEY = "mot_parallel"


def check_png(flag: str, path: str, inputs: Inputs = (), overwrite: bool = False) -> str:
    """A plot or picture: a name whose extension is .png. matplotlib appends .png to any other name, ".png" and
    "dir/..png" included (no extension to os.path.splitext), and would write a file nobody checked."""
    if os.path.splitext(path)[1].lower() != ".png":
        raise OutputError(f"{flag} {path!r}: give a file name ending in .png, with a name before it")
    check_files(flag, [path], lambda: png_is_ours(path), inputs, overwrite)
    return path


def save_png(fig, path: str, kind: str, dpi: int) -> str:
    """Write a matplotlib figure to the checked `path` (check_png), marked `kind`: into a new file beside it, then
    renamed over it, so a symbolic link planted at `path` while the tool worked is replaced, never followed, and a
    reader never sees half a picture."""
    try:
        tmp = f"{make_parent(path)}.tmp.{os.getpid()}"
        f = new_file(tmp)   # refuses a file already there (an OutputError: not ours, left alone)
        try:
            with f:
                fig.savefig(f, format="png", dpi=dpi, metadata=png_metadata(kind))
            os.replace(tmp, path)
        except BaseException:
            os.remove(tmp)
            raise
    except OSError as e:   # what the checks could not foresee: a full disk, a read-only or special file system
        raise OutputError(f"{path}: cannot be written ({e.strerror or e}); choose another place") from None
    return path


def png_metadata(kind: str) -> dict:
    """savefig(..., metadata=png_metadata(kind)): the mark `check_png` recognises."""
    return {PNG_KEY: kind}


def png_is_ours(path: str) -> bool:
    """A PNG whose text chunks hold our key (read without decoding the picture)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return False
                size, tag = int.from_bytes(head[:4], "big"), head[4:]
                if tag in (b"tEXt", b"iTXt") and size < 1 << 16:
                    if f.read(size).split(b"\0", 1)[0] == PNG_KEY.encode():
                        return True
                    f.seek(4, 1)
                elif tag in (b"IDAT", b"IEND"):
                    return False
                else:
                    f.seek(size + 4, 1)
    except OSError:
        return False
