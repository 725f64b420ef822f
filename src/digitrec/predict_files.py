"""``digitrec predict`` on many files: folders expanded, images normalized in worker processes.

Normalizing an image (decode, background, components, 28x28) costs far more CPU than the
model's forward pass on it, and is plain NumPy/OpenCV: it runs in a pool of ``--jobs``
processes (spawned, torch-free), while the parent scores each chunk of 28x28 inputs in one
forward pass and writes the results, always in input order. Module-level imports stay
light: a worker sets its thread counts before NumPy and OpenCV load.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import DigitrecError

# Extensions of the formats load_image accepts (image_io.FORMATS); a folder's other files
# (notes, CSVs, hidden files) are not images to read.
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
# Images handed to a worker at a time: large enough to amortize the inter-process hop
# (about 0.1 ms), small enough that both workers stay busy to the end of a short run.
WORKER_CHUNK = 4
# Starting a worker takes about a second (a fresh interpreter importing NumPy, SciPy and
# OpenCV): a handful of files is read sooner in the main process.
POOL_MIN_FILES = 9


def default_jobs() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _wanted(name: str, pattern: str | None) -> bool:
    if name.startswith("."):
        return False
    if pattern is None:
        return name.lower().endswith(IMAGE_SUFFIXES)
    return fnmatch.fnmatchcase(name, pattern)


def expand(paths: Sequence[str], pattern: str | None = None) -> list[str]:
    """The files to read, in order: each path as given, a folder replaced by the files under it
    (every sub-folder, sorted by path; hidden entries, FIFOs and devices skipped) whose name
    matches ``pattern`` (shell-style, case-sensitive; default: an image extension). A path that does not exist
    stays, to be reported as a file not found. Raises DigitrecError for a folder with no
    matching file, or one that cannot be listed."""
    files: list[str] = []
    for path in paths:
        if path == "-" or not os.path.isdir(path):
            files.append(path)
            continue
        found: list[str] = []
        errors: list[OSError] = []
        for folder, subfolders, names in os.walk(path, onerror=errors.append):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            # Not a FIFO, socket or device (skipped as grep -r skips them): reading one would
            # block the run or never end. A broken link stays, to be reported.
            paths_here = (os.path.join(folder, name) for name in names if _wanted(name, pattern))
            found += [path for path in paths_here if os.path.isfile(path) or not os.path.exists(path)]
        if errors:
            raise DigitrecError(f"{errors[0].filename}: cannot list the folder ({errors[0].strerror})")
        if not found:
            what = f"no file matches --glob {pattern!r}" if pattern else "no image files (.png, .jpg, ...)"
            raise DigitrecError(f"{path}: {what} in the folder or its sub-folders")
        files += sorted(found, key=lambda name: Path(name).parts)
    return files


def _init_worker() -> None:
    """One thread per worker: the pool is the parallelism (threads inside would oversubscribe)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    from .images import one_thread_per_process

    one_thread_per_process()


def prepare_one(task: tuple[Any, bool]) -> tuple[Any, str | None]:
    """(source, multi) -> (prepared input, None) or (None, the ImageError's message)."""
    from .image_io import ImageError
    from .recognition import prepare

    source, multi = task
    try:
        return prepare(source, multi=multi), None
    except ImageError as exc:
        return None, str(exc)


class PreparedInOrder:
    """prepare_one of each source, in order, as an iterator; with ``jobs`` > 1 (and at least
    POOL_MIN_FILES sources) in that many worker processes, which start at once and work
    ahead while the caller loads its model. ``close()`` stops them (also when unused)."""

    def __init__(self, sources: Sequence[Any], multi: bool, jobs: int) -> None:
        tasks = [(source, multi) for source in sources]
        self._pool: Any = None
        if jobs <= 1 or len(tasks) < POOL_MIN_FILES:
            self._results: Iterator[tuple[Any, str | None]] = map(prepare_one, tasks)
            return
        import multiprocessing

        # Spawned, not forked: the parent may hold torch's thread pools, which a fork copies broken.
        context = multiprocessing.get_context("spawn")
        self._pool = context.Pool(min(jobs, len(tasks)), initializer=_init_worker)
        self._results = self._pool.imap(prepare_one, tasks, chunksize=WORKER_CHUNK)

    @property
    def pooled(self) -> bool:
        """Whether worker processes do the work (they then use the cores given to them)."""
        return self._pool is not None

    def __iter__(self) -> PreparedInOrder:
        return self

    def __next__(self) -> tuple[Any, str | None]:
        return next(self._results)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
