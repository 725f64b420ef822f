"""Generated tables in the README: the benchmark's and ``scripts/results_table.py``'s.

Each table stands between two markers, ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``;
a new run replaces what is between them and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def publish(
    results: dict[str, Any], name: str, table: str, *, out: str | None, readme: str | None, header: str = ""
) -> Path:
    """The end of every benchmark run: the JSON result to ``out`` (default
    ``benchmarks/results/NAME-<date>.json``, from ``results["date"]``), the table printed, and, with
    ``readme``, the table between the NAME markers there. Returns the JSON path."""
    from datetime import datetime

    from digitrec.fileio import write_json_atomic

    stamp = datetime.fromisoformat(results["date"]).strftime("%Y%m%d-%H%M%S")
    path = Path(out) if out else Path("benchmarks/results") / f"{name}-{stamp}.json"
    write_json_atomic(path, results)
    print(f"{header}wrote {path}")
    print(table)
    if readme:
        replace_marked_block(readme, name, table)
        print(f"updated {readme}")
    return path
