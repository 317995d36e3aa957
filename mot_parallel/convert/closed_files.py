"""A checkpoint is a closed set of regular files: the error every checkpoint reader raises, and the scan that
lists a directory's regular files without following anything. Shared by training checkpoints (manifests,
training/checkpoint_files.py) and universal checkpoints (convert/universal.py), so it lives below both."""
from __future__ import annotations

import os
import stat
from typing import Dict, List, Tuple


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message names the path and the fix."""


def regular_files(path: str) -> Tuple[Dict[str, int], List[str]]:
    """(relative path -> bytes of every regular file below `path`, what is wrong with anything else there).
    Nothing is followed: a symbolic link anywhere (file or directory) is reported, not entered."""
    files, bad, pending = {}, [], [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(path, rel_dir)) as entries:
            for entry in entries:
                rel = os.path.join(rel_dir, entry.name)
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    pending.append(rel)
                elif stat.S_ISREG(mode):
                    files[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    bad.append(f"{os.path.join(path, rel)}: {kind}; a checkpoint holds only the regular files it "
                               "wrote (it was put there by hand: remove it, or resume another checkpoint)")
    return files, bad
