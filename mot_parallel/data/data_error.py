"""The data package's one error type, below every module that raises it (the corpus format, its sidecar)."""


class DataError(ValueError):
    """Malformed data; the message names the file and the position."""
