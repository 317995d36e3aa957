"""The one error type of the real-data corpus builder: its message says what is missing and how to fix it."""
from ...data.indexed import DataError


class RealCorpusError(DataError):
    """Bad options or a missing dependency (package, program); raised before any work starts."""
