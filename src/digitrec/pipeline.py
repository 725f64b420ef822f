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
import logging
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import DigitrecError

log = logging.getLogger("digitrec.serve")


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
    """In a pool process: the model's (28, 28) uint8 input for a request body, or its 4xx.
    The body is read as Recognizer.predict reads bytes (and predict a file): a plain PNG
    decoded straight to an array, a large JPEG at reduced size."""
    from .image_io import ImageError
    from .images import normalize_digit

    try:
        if kind == "count":  # how many digits a body seems to hold (asked only for an unsure answer)
            from .images import segment_digits

            return ("ok", len(segment_digits(data)))
        if kind == "json":
            grid = parse_pixels(data)
            # As Recognizer.predict_pixels: an all-black grid is "no digit found".
            return ("ok", grid if grid.max() > 0 else None)
        return ("ok", normalize_digit(data))
    except ApiError as exc:
        return ("error", exc.status, exc.message, exc.kind)
    except ImageError as exc:
        return ("error", 400, image_error_message(exc), "bad_image")
    except DigitrecError as exc:
        return ("error", 422, str(exc), "bad_input")


# A task is one byte naming the body's kind, then the body; the answer a pickled Decoded.
KINDS = {"image": b"i", "json": b"j", "count": b"c"}
NAMES = {code[0]: name for name, code in KINDS.items()}
BLANK = json.dumps({"pixels": [[0] * 28] * 28}).encode()  # a first task: no digit, no error
BIG_BODY = 256 * 1024  # bytes: a larger body is written to its worker's pipe from a thread


def _worker_main(conn: Any) -> None:
    """A decode process: answer tasks from the server, one at a time, until the pipe closes."""
    # Ctrl-C (SIGINT to the process group) and a SIGTERM to the whole group (systemd's default)
    # are the server's to handle: it finishes the requests in flight, which need this process,
    # then closes the pipe. If the server dies, the pipe closes too (EOF), and this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from . import image_io, images  # noqa: F401  (imported before the first request, not during it)

    images.one_thread_per_process()

    while True:
        try:
            task = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            result = decode(NAMES[task[0]], task[1:])
        except Exception:  # a bug: the request gets a 500, the traceback goes to the server's log
            traceback.print_exc()
            result = ("error", 500, "internal server error", "internal")
        if result[0] == "error":  # keep the answer under PIPE_BUF: written, and read, in one piece
            result = (*result[:2], str(result[2])[:1000], *result[3:])
        conn.send_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


class _Worker:
    """One decode process and the server's end of its pipe."""

    def __init__(self, context: Any) -> None:
        ours, theirs = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main, args=(theirs,), daemon=True, name="digitrec-decode"
        )
        self.process.start()
        theirs.close()
        self.conn = ours
        self.future: asyncio.Future[Decoded] | None = None  # the task it works on
        self.alive = True  # False once its pipe broke (it may still wait in the idle queue)


class DecodePool:
    """``processes`` decode processes, each with its own pipe, read by the event loop.

    Leaner than a ProcessPoolExecutor, whose every task goes through a manager thread, a
    feeder thread and a wakeup pipe: under load, those hand-offs cost the event loop's
    process about a quarter of its time. Here a task is one write to an idle worker's pipe,
    its answer (under PIPE_BUF, so it arrives whole) one read when the loop sees the pipe
    readable. A worker is taken from the idle queue for one task, and comes back when its
    answer is in; a request waits at most ``queue_timeout`` seconds for one (then 503). A
    worker that dies (killed from outside) fails its task with a 500 and is replaced.
    """

    def __init__(self, processes: int, queue_timeout: float) -> None:
        import multiprocessing

        self.processes = processes
        self.queue_timeout = queue_timeout
        # One core per process: BLAS threads inside each (scipy.ndimage, NumPy) would only
        # compete with the other processes. Spawned children read these when NumPy loads.
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        # spawn, not fork: the server has threads (and maybe torch's) that a fork would copy mid-state.
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: list[_Worker] = []
        self._closed = False
        self._replacing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the processes (each imports NumPy, Pillow and SciPy: about a second) and wait
        until each has answered a first task."""
        import anyio.to_thread

        workers = await anyio.to_thread.run_sync(
            lambda: [_Worker(self._context) for _ in range(self.processes)]
        )
        for worker in workers:
            self._adopt(worker)
        for _ in range(self.processes):  # a first task each: all are up when the server is ready
            await self.decode("json", BLANK)

    def _adopt(self, worker: _Worker) -> None:
        asyncio.get_running_loop().add_reader(worker.conn.fileno(), self._readable, worker)
        self._workers.append(worker)
        self._idle.put_nowait(worker)

    def _readable(self, worker: _Worker) -> None:
        future, worker.future = worker.future, None
        try:
            result = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            self._lost(worker, future)
            return
        if future is not None and not future.done():
            future.set_result(result)
        self._idle.put_nowait(worker)  # free again only now: a cancelled request's task ran to its end

    def _lost(self, worker: _Worker, future: asyncio.Future[Decoded] | None) -> None:
        if not worker.alive:
            return
        worker.alive = False
        if not self._closed:
            log.warning("a decode process (pid %s) died; starting another", worker.process.pid)
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.conn.fileno())
        worker.conn.close()
        self._workers.remove(worker)
        if future is not None and not future.done():
            future.set_exception(
                ApiError(500, "internal server error: a decoder process died; retry", "internal")
            )
        if not self._closed:
            task = loop.create_task(self._replace())
            self._replacing.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._replacing.discard)

    async def _replace(self) -> None:
        import anyio.to_thread

        worker = await anyio.to_thread.run_sync(lambda: _Worker(self._context))
        if self._closed:
            worker.conn.close()
            return
        self._adopt(worker)

    async def decode(self, kind: str, data: bytes) -> np.ndarray | None:
        """The (28, 28) uint8 input of a request body (None: no digit); ApiError for bad input,
        or 503 when no worker is free within ``queue_timeout``."""
        import anyio.to_thread

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        while True:
            try:
                worker = await asyncio.wait_for(self._idle.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise ApiError(
                    503,
                    f"server busy: no inference slot within {self.queue_timeout:g} s; retry",
                    "overloaded",
                    {"Retry-After": "1"},
                ) from None
            if worker.alive:  # a worker that died while idle stays in the queue: skip it
                break
        future: asyncio.Future[Decoded] = loop.create_future()
        worker.future = future
        task = KINDS[kind] + data
        try:
            if len(task) > BIG_BODY:  # the write waits for the worker to read: not on the loop
                await anyio.to_thread.run_sync(worker.conn.send_bytes, task)
            else:
                worker.conn.send_bytes(task)
        except (OSError, ValueError):  # the worker died (broken pipe; a closed connection)
            worker.future = None
            self._lost(worker, future)
        result = await future
        if result[0] == "error":
            _, status, message, kind_label = result
            raise ApiError(status, message, kind_label)
        pixels: np.ndarray | None = result[1]
        return pixels

    async def count_digits(self, data: bytes) -> int:
        """How many digits an image body seems to hold (for the several_digits hint)."""
        return int(await self.decode("count", data))  # type: ignore[arg-type]  # "count" answers an int

    async def close(self) -> None:
        """Close the pipes (each worker then exits) and wait for the processes."""
        import anyio.to_thread

        self._closed = True
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            loop.remove_reader(worker.conn.fileno())
            worker.conn.close()

        def join() -> None:
            for worker in self._workers:
                worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.kill()

        await anyio.to_thread.run_sync(join)


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
            if len(results) != len(batch):
                raise RuntimeError(f"{len(batch)} inputs scored, {len(results)} results")
        except Exception as exc:  # a bug in scoring: every request of the batch gets it (a 500)
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)
