"""A package's public names, imported from their submodules on first use (PEP 562 module `__getattr__`), so that
importing one light submodule (a tool checking its arguments) does not load torch through its siblings."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Dict


def lazy_exports(package: str, exports: Dict[str, str]) -> Callable[[str], object]:
    """The `__getattr__` of `package`, serving `exports` (public name -> submodule name). An exported name may not
    be a submodule's name: importing that submodule would set the package attribute to the module, hiding the
    export (an eager `from .search import search` rebinds it; a lazy export cannot)."""
    folder = os.path.dirname(sys.modules[package].__file__)
    clash = sorted(n for n in exports if os.path.exists(os.path.join(folder, n + ".py"))
                   or os.path.isdir(os.path.join(folder, n)))
    if clash:
        raise ValueError(f"{package}: exports {clash} are also submodule names; import them eagerly")

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__
