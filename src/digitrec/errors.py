"""The one exception type that means "the user gave us something wrong".

The CLI turns a :class:`DigitrecError` into a single line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DigitrecError(Exception):
    """A user-facing error: bad input, a missing file, a bad option value."""
