"""``digitrec serve``'s prediction pipeline off the event loop: a decode pool and a micro-batcher.

A single-digit prediction goes through two stages (``--batch-window`` > 0):

1. :class:`DecodePool`: parse the JSON pixels or decode and normalize the image, in one of
   ``--decode-processes`` worker *processes*. Decoding and MNIST-style normalization are
   mostly Python and NumPy calls that hold the GIL: two threads measured no faster than one
   on 2 cores (22.5 vs 23.9 ms per 280x280 PNG), two processes about twice as fast.
2. :class:`Batcher`: the (28, 28) uint8 inputs of concurrent requests wait at most
   ``--batch-window`` seconds (or until ``--max-batch`` are queued) and are scored in one
   model call, in a thread: one forward pass of 16 costs far less than 16 of one.

This module is what the pool's processes import (it is named in the pickled task), so it
imports only NumPy and digitrec's torch-free modules at the top, never FastAPI or torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DigitrecError


class ApiError(Exception):
    """An HTTP error answered as ``{"error": message}``; ``kind`` labels it in /metrics."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.headers = headers


def parse_pixels(body: bytes) -> np.ndarray:
    """JSON ``{"pixels": 28 rows of 28 numbers in 0-255}`` -> (28, 28) uint8 (rounded)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        raise ApiError(400, f"malformed JSON: {str(exc)[:200]}", "bad_json") from None
    if not isinstance(data, dict) or "pixels" not in data:
        raise ApiError(422, 'JSON body: expected an object {"pixels": [28 rows of 28 numbers]}', "bad_pixels")
    rows = data["pixels"]
    if not isinstance(rows, list) or len(rows) != 28:
        got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
        raise ApiError(422, f"pixels: expected 28 rows, got {got}", "bad_pixels")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 28:
            got = f"{len(row)} numbers" if isinstance(row, list) else type(row).__name__
            raise ApiError(422, f"pixels: row {i}: expected 28 numbers, got {got}", "bad_pixels")
        for value in row:
            # bool is an int in Python, but true/false are not pixel values.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ApiError(422, f"pixels: row {i}: {value!r} is not a number", "bad_pixels")
            if not (0 <= value <= 255):  # also rejects NaN
                raise ApiError(422, f"pixels: row {i}: {value!r} is outside 0-255", "bad_pixels")
    return np.rint(np.asarray(rows, dtype=np.float64)).astype(np.uint8)  # (28, 28)


def image_error_message(exc: Exception) -> str:
    # The decoder names its source "<bytes>"; here the source is the request body.
    return f"image: {str(exc).removeprefix('<bytes>: ')}"


# What a decode task returns: ("ok", (28, 28) uint8 input or None when no digit was found)
# or ("error", status, message, kind). Not an exception: ApiError's constructor does not
# survive pickling back from the worker process.
Decoded = tuple[Any, ...]


def decode(kind: str, data: bytes) -> Decoded:
    """In a pool process: the model's (28, 28) uint8 input for a request body, or its 4xx."""
    from .image_io import ImageError, load_image
    from .images import normalize_digit

    try:
        if kind == "json":
            grid = parse_pixels(data)
            # As Recognizer.predict_pixels: an all-black grid is "no digit found".
            return ("ok", grid if grid.max() > 0 else None)
        return ("ok", normalize_digit(load_image(data)))
    except ApiError as exc:
        return ("error", exc.status, exc.message, exc.kind)
    except ImageError as exc:
        return ("error", 400, image_error_message(exc), "bad_image")
    except DigitrecError as exc:
        return ("error", 422, str(exc), "bad_input")


def _worker_init(parent: int) -> None:
    # Ctrl-C (SIGINT to the process group) and a SIGTERM to the whole group (systemd's default)
    # are the server's to handle: it finishes the requests in flight, which need this process,
    # then shuts the pool down. A worker whose server died without that (SIGKILL) exits by itself:
    # its task queue would otherwise keep it waiting forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    # Import the decoder before the first request, not during it.
    from . import image_io, images  # noqa: F401


class DecodePool:
    """``processes`` worker processes that run :func:`decode`; a dead worker is replaced."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        # One core per process: BLAS threads inside each (scipy.ndimage, NumPy) would only
        # compete with the other processes. Spawned children read these when NumPy loads.
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing

        # spawn, not fork: the server has threads (and maybe torch's) that a fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            self.processes, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
        )

    def warm_up(self) -> None:
        """Start every process now (each imports NumPy, Pillow and SciPy: about a second)."""
        futures = [self._executor.submit(decode, "json", b"") for _ in range(self.processes)]
        for future in futures:
            future.result()

    async def decode(self, kind: str, data: bytes) -> np.ndarray | None:
        """The (28, 28) uint8 input of a request body (None: no digit); ApiError for bad input."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            result = await loop.run_in_executor(executor, decode, kind, data)
        except BrokenProcessPool:
            # A worker died (killed from outside, out of memory): the pool refuses all further
            # work, so start a new one for the next requests; this one is a server failure.
            if executor is self._executor:
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()
            raise ApiError(500, "internal server error: a decoder process died; retry", "internal") from None
        if result[0] == "error":
            _, status, message, kind_label = result
            raise ApiError(status, message, kind_label)
        pixels: np.ndarray | None = result[1]
        return pixels

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Waiting:
    pixels: np.ndarray  # (28, 28) uint8
    min_confidence: float | None
    future: asyncio.Future[Any]
    since: float  # loop time when queued, seconds


class Batcher:
    """Scores queued (28, 28) inputs in batches: one model call per batch, in a thread.

    A batch starts when ``max_batch`` inputs wait, or ``window`` seconds after its oldest
    input was queued, whichever is first; one batch is scored at a time, and the inputs that
    arrive meanwhile make the next one (so under load, batches grow with no added wait).
    ``run_batch(inputs, min_confidences)`` returns one result per input; ``on_batch(size)``
    is told each batch's size (the /metrics histogram).
    """

    def __init__(
        self,
        run_batch: Callable[[list[np.ndarray], list[float | None]], list[Any]],
        window: float,
        max_batch: int,
        limiter: Any,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._run_batch = run_batch
        self._window = window
        self._max_batch = max_batch
        self._limiter = limiter
        self._on_batch = on_batch
        self._queue: list[_Waiting] = []
        self._changed = asyncio.Event()  # set when the queue gets an input
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="digitrec-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiting in self._queue:
            if not waiting.future.done():
                waiting.future.set_exception(ApiError(503, "server shutting down; retry", "overloaded"))
        self._queue.clear()

    async def score(self, pixels: np.ndarray, min_confidence: float | None) -> Any:
        """The result for one input, once its batch has been scored."""
        if self._task is None or self._task.done():  # stopped, or crashed: nobody would answer
            raise ApiError(503, "server shutting down; retry", "overloaded", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Waiting(pixels, min_confidence, future, loop.time()))
        self._changed.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._changed.wait()
            self._changed.clear()
            if not self._queue:
                continue
            deadline = self._queue[0].since + self._window
            while len(self._queue) < self._max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    break
                self._changed.clear()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if self._queue:
                self._changed.set()  # the rest makes the next batch, at once
            # A request cancelled while it waited (shutdown past the graceful timeout) needs no score.
            batch = [waiting for waiting in batch if not waiting.future.done()]
            if not batch:
                continue
            await self._score(batch)

    async def _score(self, batch: list[_Waiting]) -> None:
        import anyio.to_thread

        inputs = [waiting.pixels for waiting in batch]
        thresholds = [waiting.min_confidence for waiting in batch]
        try:
            self._on_batch(len(batch))
            results = await anyio.to_thread.run_sync(
                lambda: self._run_batch(inputs, thresholds), limiter=self._limiter
            )
        except Exception as exc:  # a bug in scoring: every request of the batch gets it (a 500)
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)
