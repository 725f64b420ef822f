"""Files: atomic writes (a temp file in the same folder, fsync, ``os.replace``), and finding and
hashing the data files that datasets are read from.

A kill at any moment leaves either the old file or the new one, never half of
either. Everything digitrec writes to disk goes through :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DigitrecError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and move it into place.

    ``path`` may be missing, a regular file, or a link to one (the link is replaced, its target
    left as it was); not a device, FIFO or socket: moving a file over /dev/full would replace the
    device itself (as root), where a plain open() would have written into it."""
    target = Path(path)
    try:
        kind = os.stat(target).st_mode
    except OSError:
        kind = None  # missing (or unreachable: the write below says so)
    if kind is not None and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
        raise DigitrecError(f"{target}: not a regular file (a device, FIFO or socket); name a file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _write_error(target, exc) from None
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask).
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)  # nothing half-written stays behind, and its space comes back
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from None
        raise
    _fsync_dir(target.parent)


def _write_error(target: Path, exc: OSError) -> DigitrecError:
    """One line naming the file: a full disk is a user's problem to solve, not a traceback."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DigitrecError(f"{target}: no space left on the device; nothing was written")
    return DigitrecError(f"{target}: cannot write ({exc.strerror or exc}); nothing was written")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets you open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_cache_file(path: str | os.PathLike[str], save: Callable[[IO[Any]], None]) -> None:
    """Write a cache entry with ``save(handle)`` atomically, or not at all: an unwritable cache
    folder (a read-only home, $DIGITREC_CACHE_DIR through a file) costs time on the next run, it
    never stops this one."""
    with contextlib.suppress(DigitrecError), atomic_write(path) as handle:
        save(handle)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_data_file(folder: Path, stem: str) -> Path:
    """``folder/stem``, or its gzipped ``stem.gz``; one clear error when neither is there."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DigitrecError(f"{folder}: missing {stem} (or {stem}.gz)")
