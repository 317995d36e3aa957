"""Which megatron-core releases the plug-in is tested with, checked once when the plug-in is imported.

The range is setup.py's `megatron` extra (a test keeps the two equal): CI runs tests/megatron/test_*.py on the
oldest (the newest release pip offers Python 3.11) and the newest (`tests/run.sh --megatron 0.19.2`).
Older releases lack APIs the plug-in relies on (process-group collections, the layer-offset signature), so
they are refused; a newer release may well work, but nothing has tested it, so it is a warning.
"""
import warnings

from packaging.version import Version

OLDEST = Version("0.16")      # inclusive
NEWER_THAN = Version("0.20")  # exclusive: any 0.19.x is tested
SETUP_SPEC = f"megatron-core>={OLDEST},<{NEWER_THAN}"
TESTED = f"{OLDEST}.x to {NEWER_THAN.major}.{NEWER_THAN.minor - 1}.x"


class UntestedMegatronWarning(UserWarning):
    """megatron-core is newer than the newest release the plug-in was tested with."""


def check_megatron_version(version: str) -> None:
    """Raise ImportError below the tested range, warn above it (pre-releases of a tested minor count as it)."""
    v = Version(version)
    if v.release[:2] < OLDEST.release[:2]:
        raise ImportError(f"mot_parallel.megatron needs megatron-core {TESTED} (tested); found {version}: "
                          f"pip install '{SETUP_SPEC}'")
    if v.release[:2] >= NEWER_THAN.release[:2]:
        warnings.warn(f"megatron-core {version} is newer than the releases mot_parallel.megatron was tested with "
                      f"({TESTED}); if something fails, pip install '{SETUP_SPEC}'", UntestedMegatronWarning,
                      stacklevel=3)
