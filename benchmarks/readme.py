"""Generated tables in the README: the benchmark's and ``scripts/results_table.py``'s.

Each table stands between two markers, ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``;
a new run replaces what is between them and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from digitrec.errors import DigitrecError
from digitrec.fileio import write_bytes_atomic


def replace_marked_block(path: str | os.PathLike[str], name: str, content: str) -> None:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``path`` (a
    README) with ``content``, atomically. Raises DigitrecError if the markers are missing."""
    target = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    try:
        text = target.read_text("utf-8")
    except OSError as exc:
        raise DigitrecError(f"{target}: cannot read ({exc.strerror})") from None
    if start not in text or end not in text.split(start, 1)[1]:
        raise DigitrecError(f"{target}: markers {start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_bytes_atomic(target, f"{head}{start}\n{content}\n{end}{tail}".encode())
