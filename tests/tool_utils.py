"""Helpers for tests of the command-line tools."""
import os

import pytest


def one_error_line(call, words=(), out=None):
    """call() must exit with one `error:` line holding each of `words` and leave the directory `out` empty;
    returns the message."""
    with pytest.raises(SystemExit) as e:
        call()
    message = str(e.value.code)
    assert message.startswith("error:") and "\n" not in message, message
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    if out is not None:
        assert os.listdir(out) == [], "nothing is left behind"
    return message
