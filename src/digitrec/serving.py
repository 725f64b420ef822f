"""``digitrec serve``: the drawing page and the HTTP API, FastAPI on uvicorn.

Routes::

    GET  /               the drawing page (package data under digitrec/web, served offline)
    POST /v1/predict     raw image body, multipart upload, or JSON {"pixels": 28x28}
    GET  /v1/models      the loaded model
    GET  /healthz        alive (the event loop answers)
    GET  /readyz         the model is loaded
    GET  /metrics        Prometheus text format
    GET  /openapi.json   the API description

How a prediction request goes, and why:

0. Each connection has a deadline in every phase (:class:`GuardedH11Protocol`):
   ``idle_timeout`` waiting for a request, ``header_timeout`` from a request's first
   byte to the end of its head, ``body_timeout`` for the body: a slow or idle client
   holds a connection (a file descriptor, buffers) for a bounded time only.
1. An ASGI middleware rejects a declared ``Content-Length`` above the body cap
   with 413 before a byte of the body is read, and counts the bytes of every
   body as they stream in (chunked uploads included), so no request can make
   the server hold more than the cap. An answer sent while the body is still
   coming closes the connection the way nginx's lingering close does, so that
   clients that send the whole body before reading (urllib) get it, not a reset.
2. At most ``max_uploads`` prediction bodies are received at once (one more is
   answered 503 at once), each within ``body_timeout`` (a client that stalls gets 408).
3. Only then, with its body in, is a request admitted: at most ``max_inflight``
   at once (bounded memory: (max_uploads + max_inflight) x body cap); one more is
   answered 503 at once, not queued. Slow uploads never take these slots.
4. An admitted request waits at most ``queue_timeout`` for one of the
   ``decode_processes`` (503 after that), which decodes and normalizes it
   (:class:`digitrec.pipeline.DecodePool`); then its 28x28 input waits at most
   ``batch_window`` for those of concurrent requests and is scored with them in
   one model call in a thread (:class:`digitrec.pipeline.Batcher`). With
   ``batch_window`` 0, and for ``multi=true``, the request instead waits for one
   of ``threads`` inference slots, where decoding, normalization and inference
   run together. Either way the event loop never runs model code, so
   ``/healthz`` stays fast under load.

Every error is ``{"error": "..."}``. Bad input is a 4xx; a 500 means a bug.
SIGTERM: uvicorn stops accepting connections and finishes the requests in
flight (up to ``graceful_timeout`` seconds; a request still running then gets
503 with ``Retry-After``); then :func:`serve` returns (exit 0).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import io
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, cast

import anyio
import anyio.to_thread
import h11
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import __version__
from .calibration import SEVERAL_DIGITS_BELOW
from .errors import DigitrecError
from .pipeline import ApiError, Batcher, DecodePool, image_error_message, parse_pixels

__all__ = ["ApiError", "ServeConfig", "create_app", "parse_pixels", "serve"]

log = logging.getLogger("digitrec.serve")

CONFIG_ENV = "DIGITREC_SERVE_CONFIG"  # JSON ServeConfig handed to each worker process (--workers > 1)
# prometheus_client's multi-process mode: each process writes its metrics to files in this
# folder, and /metrics, in whichever process answers, adds them all up (--workers > 1).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKERS_ENV = "DIGITREC_SERVE_WORKERS"  # --workers, for each worker's default --decode-processes
BACKENDS = ("auto", "torch", "onnx")

# Media types a raw body may have; the decoder sniffs the real format, these only say "an image".
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
SUPPORTED_MEDIA_TYPES = (*IMAGE_MEDIA_TYPES, "multipart/form-data", "application/json")

# Latency histogram bucket upper bounds, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Batch size histogram bucket upper bounds, inputs per model call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Security headers on every response. The CSP also proves the page is offline: the browser
# would refuse any script, style, font or image from another origin.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass(frozen=True)
class ServeConfig:
    """What one server process needs; plain values so it travels to workers as JSON."""

    run: str | None = None  # run directory; None: the bundled default model
    max_body_bytes: int = 2 * 1024 * 1024
    max_inflight: int = 32  # prediction requests admitted at once (body in); one more gets 503
    max_uploads: int = 128  # prediction bodies being received at once; one more gets 503
    threads: int = 2  # inference worker threads (torch uses 1 intra-op thread each)
    queue_timeout: float = 5.0  # seconds an admitted request may wait for a thread before 503
    header_timeout: float = 10.0  # seconds from a request's first byte to the end of its head
    body_timeout: float = 10.0  # seconds from the end of the head to the end of the body (408)
    idle_timeout: float = 5.0  # seconds a connection may wait for its next request
    show_run_path: bool = False  # /v1/models: the run directory's path, not only its name
    # What scores: "torch"; "onnx" (onnxruntime; a run's model exported at startup, the bundled
    # one's shipped copy); "auto": "onnx" for the bundled model where its copy is usable, else "torch".
    backend: str = "auto"
    # Seconds the first input of a batch waits for others; 0: no batching, no decode pool: each
    # request is decoded, normalized and scored alone in one of `threads` threads (the path before batching).
    batch_window: float = 0.002
    max_batch: int = 32  # inputs per model call at most
    decode_processes: int = 0  # decode/normalize processes per server process; 0: 2 x CPUs / workers
    onnx_file: str | None = None  # set by serve() for --workers > 1: the model exported once, by the parent
    second_look: bool = True  # an unsure digit read again: thinner and thicker pens, narrower (Recognizer)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inflight", "max_uploads", "threads", "max_batch"):
            if getattr(self, name) < 1:
                raise DigitrecError(
                    f"serve: {name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("queue_timeout", "header_timeout", "body_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise DigitrecError(f"serve: {name.replace('_', '-')} must be > 0, got {value}")
        if not (math.isfinite(self.batch_window) and 0 <= self.batch_window <= 1):
            raise DigitrecError(f"serve: batch-window must be 0-1000 ms, got {self.batch_window * 1000:g} ms")
        if self.decode_processes < 0:
            raise DigitrecError(f"serve: decode-processes must be >= 0, got {self.decode_processes}")
        if self.backend not in BACKENDS:
            raise DigitrecError(f"serve: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        return cls(**json.loads(text))


# --------------------------------------------------------------------------------------------
# The model: the one place the server touches the Recognizer.


def load_recognizer(run: str | None, backend: str = "auto", onnx_file: str | None = None) -> Any:
    """The Recognizer the CLI uses: ``run``'s model, or the bundled default model.

    backend "onnx": the same model exported to ONNX in memory (about 5 s, once per start;
    ``onnx_file``: an export already made, by serve() for its workers) and scored by
    onnxruntime on one thread. The exported graph is the served model itself, so it cannot
    be stale as an .onnx file next to it could. The bundled model ships its copy, used after
    checking it was exported from the bundled weights. "auto": that copy for the bundled
    model, else "torch"."""
    from .recognition import Recognizer

    if run is None and onnx_file is None and backend in ("auto", "onnx"):
        # One intra-op thread: the parallelism is the decode processes' and the batches'.
        shipped = Recognizer.bundled_onnx(threads=1)
        if shipped is not None:
            return shipped
    if backend in ("auto", "torch"):
        # The model runs in inference threads beside the event loop's: traced, it never waits
        # for the GIL (models.traced_for_inference).
        return Recognizer.from_run(run, concurrent=True) if run else Recognizer.default(concurrent=True)
    recognizer = Recognizer.from_run(run) if run else Recognizer.default()
    from .onnx_runtime import OnnxScorer

    data = Path(onnx_file).read_bytes() if onnx_file else export_onnx_bytes(run)
    # One intra-op thread: the parallelism is the decode processes' and the batches'.
    scorer = OnnxScorer(onnx_file or "<exported at startup>", threads=1, data=data)
    return Recognizer.from_scorer(scorer, {**recognizer.info(), "backend": "onnx", "device": "cpu"})


def export_onnx_bytes(run: str | None) -> bytes:
    """The ONNX export of ``run``'s model (or the bundled one), quietly: the exporter prints."""
    from .export import onnx_bytes
    from .runs import default_model_dir

    with contextlib.redirect_stdout(io.StringIO()):
        return onnx_bytes(run or default_model_dir())


def recognize(
    recognizer: Any, payload: bytes | np.ndarray, *, multi: bool, min_confidence: float | None
) -> Any:
    """One Prediction for an encoded image (bytes) or (28, 28) uint8 MNIST-style pixels."""
    if isinstance(payload, np.ndarray) and not multi:
        return recognizer.predict_pixels(payload, min_confidence=min_confidence)
    # Pixels with multi=true go through segmentation like any image (a 28x28 row of digits).
    return recognizer.predict(payload, multi=multi, min_confidence=min_confidence)


# --------------------------------------------------------------------------------------------
# Metrics, in the Prometheus text exposition format (version 0.0.4).


# Label values taken from a request come from fixed sets, anything else is "other": h11 accepts any
# token as a method, so 3,000 requests "X000001 /healthz", "X000002 ..." would otherwise add 3,000
# series that live as long as the process (measured before the cap: /metrics 2 KB -> 32 MB).
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_LABELS = frozenset(int(status) for status in HTTPStatus)


def method_label(method: str) -> str:
    return method if method in METHOD_LABELS else "other"


def status_label(status: int) -> str:
    return str(status) if status in STATUS_LABELS else "other"


class Metrics:
    """The server's metrics, kept by prometheus_client and updated on the event loop.

    Every label has a bounded set of values (route templates, :data:`METHOD_LABELS`, the
    standard status codes, error kinds named in this module), so the page has a bounded size.

    Single process: a registry of this app's own (not the global one). With ``--workers N``
    ($PROMETHEUS_MULTIPROC_DIR set by :func:`serve`), every process writes its values to
    files there and :meth:`render` adds up all processes' files: counters and histograms are
    summed, the gauges as their ``multiprocess_mode`` says.
    """

    def __init__(self) -> None:
        import prometheus_client as prom
        from prometheus_client import multiprocess

        # The *_created series double the page and say nothing a scraper needs.
        prom.disable_created_metrics()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        own = None if self.multiprocess else prom.CollectorRegistry(auto_describe=True)
        self.registry = own or prom.CollectorRegistry()
        if self.multiprocess:
            multiprocess.MultiProcessCollector(self.registry)
        self.requests = prom.Counter(
            "digitrec_http_requests_total",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=own,
        )
        self.errors = prom.Counter(
            "digitrec_http_errors_total",
            "Requests answered with an error, by route and kind.",
            ["route", "kind"],
            registry=own,
        )
        self.latency = prom.Histogram(
            "digitrec_http_request_duration_seconds",
            "Time from request to last response byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.timeouts = prom.Counter(
            "digitrec_http_connection_timeouts_total",
            "Connections closed by a deadline, by phase.",
            ["phase"],
            registry=own,
        )
        for phase in CONNECTION_PHASES:
            self.timeouts.labels(phase)  # on the page from the start, at 0
        self.batch_size = prom.Histogram(
            "digitrec_predict_batch_size",
            "Inputs scored per model call (--batch-window > 0; 1 each with --batch-window 0).",
            buckets=BATCH_BUCKETS,
            registry=own,
        )

        def gauge(name: str, help_text: str, mode: Any) -> Any:
            return prom.Gauge(name, help_text, registry=own, multiprocess_mode=mode)

        # Across --workers processes: counts add up (livesum), a per-process cap is the same in
        # each (livemax), "ready" only when every process is (livemin).
        self.ready = gauge("digitrec_model_ready", "1 when the model is loaded.", "livemin")
        self.processes = gauge("digitrec_serve_processes", "Server processes running.", "livesum")
        self.uploads = gauge("digitrec_predict_uploads", "Prediction bodies being received now.", "livesum")
        self.uploads_limit = gauge(
            "digitrec_predict_uploads_limit", "Upload cap per process (--max-uploads).", "livemax"
        )
        self.inflight = gauge("digitrec_predict_inflight", "Prediction requests admitted now.", "livesum")
        self.inflight_limit = gauge(
            "digitrec_predict_inflight_limit", "Admission cap per process (--max-inflight).", "livemax"
        )
        self.processes.set(1)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method_label(method), status_label(status)).inc()
        self.latency.labels(route).observe(seconds)

    def error(self, route: str, kind: str) -> None:
        self.errors.labels(route, kind).inc()

    def timeout(self, phase: str) -> None:
        self.timeouts.labels(phase).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def close(self) -> None:
        """This process is stopping: its live gauges leave the multi-process view."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def route_label(scope: Scope) -> str:
    """A bounded label: the route's template, never the raw path (a 404 flood adds no series)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path or "/"
    return "other"


# --------------------------------------------------------------------------------------------
# Server state and the ASGI middleware (body cap, metrics, security headers).


@dataclass
class ServerState:
    config: ServeConfig
    metrics: Metrics
    recognizer: Any = None  # set once the model is loaded (readyz turns 200)
    uploads: int = 0  # prediction bodies being received; touched only on the event loop
    inflight: int = 0  # admitted prediction requests (body in); touched only on the event loop
    slots: Any = None  # anyio.Semaphore(threads), made in the lifespan (needs the running loop)
    limiter: Any = None  # anyio.CapacityLimiter(threads) for to_thread
    decoder: DecodePool | None = None  # with batch_window > 0: the decode processes
    batcher: Batcher | None = None  # with batch_window > 0: scores the decoded inputs in batches


# On an answer sent before the request body is all in: the rest is not worth reading.
CLOSE = (b"connection", b"close")


class PayloadTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the cap."""


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class LimitsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): sees the body stream, so it can cap it."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, ServerErrorMiddleware sends a 500
        started = False
        limit = self.state.config.max_body_bytes

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge
            return message

        try:
            declared = _content_length(scope)
            if declared is None or declared <= limit:
                await self.app(scope, counting_receive, send_with_headers)
            else:
                # Answer before reading any of the body, then close: the connection drops the
                # rest of the body for a while first (lingering close, GuardedH11Protocol).
                self.state.metrics.error(_early_label(scope), "payload_too_large")
                message = f"request body too large: {declared} bytes > {limit}"
                await _send_json(send_with_headers, 413, message, [CLOSE])
        except asyncio.CancelledError:
            # Nothing in the app cancels a request's task: this is uvicorn giving up on a request
            # still running when --graceful-timeout ran out. Left alone, uvicorn would log a
            # traceback and send a plain-text 500; the client deserves "try again elsewhere".
            _uncancel()
            where = f"{method_label(scope.get('method', ''))} {_early_label(scope)}"
            if started:
                log.warning("shutdown: %s cut off mid-response after the graceful timeout", where)
                return
            log.warning("shutdown: %s still running after the graceful timeout; answered 503", where)
            headers = [(b"retry-after", b"1"), CLOSE]
            await _send_json(send_with_headers, 503, "server shutting down; retry", headers)
        finally:
            label = route_label(scope) if "route" in scope else _early_label(scope)
            self.state.metrics.observe(label, scope.get("method", "?"), status, time.perf_counter() - start)


API_PATHS = ("/v1/predict", "/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json")


def _early_label(scope: Scope) -> str:
    """Route label for a request answered before routing (a 413 on the declared length)."""
    path = scope.get("path", "")
    return path if path in API_PATHS else "other"


def _content_length(scope: Scope) -> int | None:
    """The declared body size; the server (h11, httptools) has already rejected a malformed one."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _uncancel() -> None:
    """Clear the current task's cancellation request (Python 3.11+), so that the awaits of the
    answer that follows are not cut off too."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


async def _send_json(
    send: Callable[[Message], Awaitable[None]],
    status: int,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = _error_body(message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------
# Request parsing and the work done in a worker thread.


def png_data_url(pixels: np.ndarray) -> str:
    """A (28, 28) uint8 array as a ``data:image/png;base64,...`` URL (white ink on black, as MNIST)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _jsonable(value: Any) -> Any:
    """NumPy scalars/arrays and tuples inside Recognizer results -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not isinstance(v, np.ndarray) or v.ndim < 2}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def prediction_json(prediction: Any, *, multi: bool, include_input: bool) -> dict[str, Any]:
    # Whatever the Prediction reports (digit, confidence, probabilities; number and digits
    # in multi mode; any field added later) goes out as it is, in plain JSON values.
    out: dict[str, Any] = _jsonable(prediction.to_dict())
    if multi:
        out.setdefault("number", prediction.number)
        out.setdefault("digits", _jsonable(prediction.digits or []))
    if include_input:
        image = prediction.input_image
        out["input_image"] = None if image is None else png_data_url(image)
        if multi:
            out["input_images"] = [png_data_url(pixels) for pixels in prediction.input_images or []]
    return out


def predict_payload(
    recognizer: Any, kind: str, data: bytes, *, multi: bool, min_confidence: float | None, include_input: bool
) -> dict[str, Any]:
    """Runs in a worker thread: parse, decode, normalize, infer, encode. Raises ApiError for bad input."""
    from .recognition import ImageError

    payload: bytes | np.ndarray = parse_pixels(data) if kind == "json" else data
    try:
        prediction = recognize(recognizer, payload, multi=multi, min_confidence=min_confidence)
    except ImageError as exc:
        raise ApiError(400, image_error_message(exc), "bad_image") from None
    except DigitrecError as exc:
        raise ApiError(422, str(exc), "bad_input") from None
    return prediction_json(prediction, multi=multi, include_input=include_input)


async def read_request(request: Request, config: ServeConfig) -> tuple[str, bytes]:
    """("image" | "json", body bytes) from a raw image, JSON or multipart request."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in SUPPORTED_MEDIA_TYPES:
        shown = media or "none"
        raise ApiError(
            415,
            f"unsupported content type {shown!r}; send {', '.join(IMAGE_MEDIA_TYPES[:3])}, "
            "multipart/form-data (field 'file') or application/json ({\"pixels\": ...})",
            "unsupported_media_type",
        )
    with anyio.move_on_after(config.body_timeout) as timer:
        try:
            if media == "multipart/form-data":
                data = await _read_upload(request, config)
            else:
                data = await request.body()
        except ClientDisconnect:
            # The client went away (or the connection hit its body deadline): nobody reads this
            # answer, but it must not be a 500 and a traceback in the log.
            raise ApiError(400, "client disconnected before the body was received", "disconnected") from None
    if timer.cancelled_caught:
        message = f"request body not received within {config.body_timeout:g} s"
        raise ApiError(408, message, "timeout", {"Connection": "close"})
    return ("json" if media == "application/json" else "image"), data


async def _read_upload(request: Request, config: ServeConfig) -> bytes:
    async with request.form(max_files=1, max_fields=8, max_part_size=config.max_body_bytes) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "multipart: expected a file field named 'file'", "bad_upload")
        return await upload.read()


# --------------------------------------------------------------------------------------------
# The application.


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong, in one line")


class PredictResponse(BaseModel):
    digit: int | None = Field(
        description="the digit read; null when none is found, when it is below min_confidence, "
        "or (multi=true) when the number has other than one digit"
    )
    confidence: float = Field(
        description="probability of the most likely digit, 0-1 (multi=true: the product over the digits)"
    )
    probabilities: list[float] = Field(
        description="10 probabilities for the digits 0-9; all 0 when there is no single digit to score"
    )
    rejected: Literal["blank", "not_a_digit", "low_confidence"] | None = Field(
        None,
        description="why digit is null although an image was read: blank (no ink found), not_a_digit "
        "(a letter, a scribble, a picture: the model spreads its belief over many digits), "
        "low_confidence (below min_confidence); null for an answer. multi=true: set when any piece was",
    )
    several_digits: int | None = Field(
        None,
        description="multi=false only: the image seems to hold this many digits (two or more); "
        "send it with multi=true to read them all",
    )
    number: str | None = Field(
        None,
        description="with multi=true: the digits read left to right, '?' for a piece that is not a "
        "digit or below min_confidence; null when none is found",
    )
    digits: list[dict[str, Any]] | None = Field(
        None,
        description="with multi=true: per digit, left to right: digit, confidence, "
        "bbox [x, y, width, height] in the image, probabilities, rejected",
    )
    input_image: str | None = Field(
        None, description="with include_input=true: the 28x28 image the model saw, a PNG data URL"
    )
    input_images: list[str] | None = Field(
        None, description="with include_input=true and multi=true: each digit's 28x28 input, left to right"
    )


_PIXELS_SCHEMA = {
    "type": "object",
    "required": ["pixels"],
    "properties": {
        "pixels": {
            "description": "28 rows of 28 gray values, 0 = background, 255 = ink (MNIST style)",
            "type": "array",
            "minItems": 28,
            "maxItems": 28,
            "items": {
                "type": "array",
                "minItems": 28,
                "maxItems": 28,
                "items": {"type": "number", "minimum": 0, "maximum": 255},
            },
        }
    },
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "An image (any size; PNG, JPEG, WebP, also GIF, BMP, TIFF), "
        "a multipart upload with a 'file' field, or MNIST-style pixels as JSON.",
        "content": {
            **{media: _BINARY for media in IMAGE_MEDIA_TYPES[:3]},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {"schema": _PIXELS_SCHEMA},
        },
    }
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "undecodable image, decompression bomb or malformed JSON",
        408: "the request body did not arrive in time",
        413: "request body larger than the cap",
        415: "unsupported content type",
        422: "invalid parameters or pixels",
        503: "model not loaded yet, or the server is at its concurrency cap (retry)",
    }
    return {code: {"model": ErrorResponse, "description": meaning[code]} for code in codes}


def create_app(config: ServeConfig | None = None, recognizer: Any = None) -> FastAPI:
    """The ASGI app. Without ``recognizer``, the lifespan startup loads ``config.run`` (or the default)."""
    config = config or ServeConfig()
    state = ServerState(config=config, metrics=Metrics(), recognizer=recognizer)
    metrics = state.metrics
    metrics.uploads_limit.set(config.max_uploads)
    metrics.inflight_limit.set(config.max_inflight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state.slots = anyio.Semaphore(config.threads)
        state.limiter = anyio.CapacityLimiter(config.threads)
        if state.recognizer is None:
            # Load before accepting connections: with --workers N, no worker answers 503
            # "loading" while its siblings are ready. A failed load fails the startup.
            state.recognizer = await anyio.to_thread.run_sync(_load, config)
        if config.batch_window > 0:
            state.decoder = DecodePool(decode_processes(config), config.queue_timeout)
            await state.decoder.start()
            recognizer = state.recognizer
            state.batcher = Batcher(
                recognizer.predict_normalized,
                config.batch_window,
                config.max_batch,
                # Its own thread: a batch never waits behind multi=true requests for a thread.
                anyio.CapacityLimiter(1),
                metrics.batch_size.observe,
            )
            state.batcher.start()
        # Start-up leaves a large heap (torch, FastAPI, the model) that the first full collection
        # walks: measured 125-131 ms with every request in flight waiting, once, within the first
        # ~2,000 requests. Frozen, the collector never walks it again.
        gc.collect()
        gc.freeze()
        metrics.ready.set(1)
        try:
            yield
        finally:
            metrics.ready.set(0)
            if state.batcher is not None:
                await state.batcher.stop()
            if state.decoder is not None:
                await state.decoder.close()
            metrics.close()

    app = FastAPI(
        title="digitrec",
        version=__version__,
        description="Handwritten digit recognition: send an image, get the digit.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their JavaScript from a CDN; the server stays offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.add_middleware(LimitsMiddleware, state=state)
    app.mount("/static", StaticFiles(packages=[("digitrec", "web")]), name="static")
    _add_error_handlers(app, state)
    _add_routes(app, state)
    return app


def run_name(run: str) -> str:
    """The run directory's own name, as /v1/models shows it: ``/home/me/runs/lenet-3/`` -> ``lenet-3``."""
    path = Path(run)
    return path.name or path.resolve().name or str(path)  # "." and "runs/x/" have names too


# Decode processes per CPU by default. A decode process idles while the server's process takes its
# answer and hands it the next request (the event loop is busy with HTTP and the model then), so
# one per CPU left the cores idle about an eighth of the time; two per CPU keep them busy. 16
# clients on 2 cores, interleaved runs (docs/speed.md, "Serving"): 4 processes against 2, 352
# against 302 req/s, p99 77 against 106 ms.
DECODE_PROCESSES_PER_CPU = 2


def decode_processes(config: ServeConfig, workers: int | None = None) -> int:
    """--decode-processes, or by default two per CPU this process may use, shared by the --workers."""
    if config.decode_processes:
        return config.decode_processes
    workers = workers or int(os.environ.get(WORKERS_ENV, "1"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, DECODE_PROCESSES_PER_CPU * cpus // workers)


def _one_torch_thread() -> None:
    """Torch, where the backend loaded it, computes on one thread: the parallelism comes from the
    inference threads and the decode processes, not from inside one call. Not imported
    otherwise: the bundled model on onnxruntime starts without it (1.3 s and about 185 MB less)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _load(config: ServeConfig) -> Any:
    recognizer = load_recognizer(config.run, config.backend, config.onnx_file)
    recognizer.second_look = config.second_look
    _one_torch_thread()
    log.info("model loaded: %s", recognizer.info())
    return recognizer


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    def answer(request: Request, status: int, message: str, kind: str, headers: Any = None) -> JSONResponse:
        state.metrics.error(route_label(request.scope), kind)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(request, exc.status, exc.message, exc.kind, exc.headers)

    async def too_large(request: Request, exc: Exception) -> Response:
        limit = state.config.max_body_bytes
        message = f"request body too large: more than {limit} bytes"
        return answer(request, 413, message, "payload_too_large", {"Connection": "close"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return answer(request, exc.status_code, str(exc.detail), f"http_{exc.status_code}", exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for error in exc.errors()[:5]:
            where = " ".join(str(part) for part in error.get("loc", ()))
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return answer(request, 422, "; ".join(problems) or "invalid request", "validation")

    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path, exc_info=exc)
        return answer(request, 500, "internal server error", "internal")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PayloadTooLarge, too_large)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def _add_routes(app: FastAPI, state: ServerState) -> None:
    config = state.config
    metrics = state.metrics

    def ready_recognizer() -> Any:
        if state.recognizer is None:
            raise ApiError(503, "model is not loaded yet", "not_ready", {"Retry-After": "1"})
        return state.recognizer

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        from importlib import resources

        html = resources.files("digitrec").joinpath("web/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"cache-control": "no-cache"})

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        summary="Read the digit (or the number) in an image",
        responses=_errors(400, 408, 413, 415, 422, 503),
        openapi_extra=PREDICT_OPENAPI,
    )
    async def predict(
        request: Request,
        multi: bool = Query(False, description="read a whole number: adds 'number' and 'digits'"),
        min_confidence: float | None = Query(
            None, ge=0.0, le=1.0, allow_inf_nan=False, description="below this confidence, digit is null"
        ),
        include_input: bool = Query(False, description="add the 28x28 image the model saw (PNG data URL)"),
    ) -> Response:
        recognizer = ready_recognizer()
        # The body is read before admission: a client that sends its body slowly holds an
        # upload slot (bounded by --body-timeout), never one of the --max-inflight slots that
        # the requests ready for inference need.
        if state.uploads >= config.max_uploads:
            raise ApiError(
                503,
                f"server busy: {state.uploads} request bodies being received; retry",
                "overloaded",
                {"Retry-After": "1", "Connection": "close"},
            )
        state.uploads += 1
        metrics.uploads.inc()
        try:
            kind, data = await read_request(request, config)
        finally:
            state.uploads -= 1
            metrics.uploads.dec()
        if state.inflight >= config.max_inflight:
            raise ApiError(
                503,
                f"server busy: {state.inflight} requests in flight; retry",
                "overloaded",
                {"Retry-After": "1"},
            )
        state.inflight += 1
        metrics.inflight.inc()
        try:
            if state.batcher is not None and not multi:
                result = await predict_batched(kind, data, min_confidence, include_input)
                return JSONResponse(result)
            await acquire_slot(state.slots)
            try:
                result = await anyio.to_thread.run_sync(
                    lambda: predict_payload(
                        recognizer,
                        kind,
                        data,
                        multi=multi,
                        min_confidence=min_confidence,
                        include_input=include_input,
                    ),
                    limiter=state.limiter,
                )
            finally:
                state.slots.release()
        finally:
            state.inflight -= 1
            metrics.inflight.dec()
        metrics.batch_size.observe(1)
        return JSONResponse(result)

    async def acquire_slot(slots: Any) -> None:
        with anyio.move_on_after(config.queue_timeout) as timer:
            await slots.acquire()
        if timer.cancelled_caught:
            raise ApiError(
                503,
                f"server busy: no inference slot within {config.queue_timeout:g} s; retry",
                "overloaded",
                {"Retry-After": "1"},
            )

    async def predict_batched(
        kind: str, data: bytes, min_confidence: float | None, include_input: bool
    ) -> dict[str, Any]:
        """A decode process makes the model's input (waiting at most --queue-timeout for one, as
        for a thread), then the batcher scores it with the inputs of concurrent requests."""
        assert state.decoder is not None and state.batcher is not None
        pixels = await state.decoder.decode(kind, data)
        if pixels is None:  # no digit found: nothing to score
            prediction = state.recognizer.predict_normalized([None], [min_confidence])[0]
        else:
            prediction = await state.batcher.score(pixels, min_confidence)
            if kind == "image" and (prediction.rejected or prediction.confidence < SEVERAL_DIGITS_BELOW):
                # As Recognizer.predict_batch: an unsure answer may be a row of digits read as one.
                count = await state.decoder.count_digits(data)
                if count >= 2:
                    prediction.several_digits = count
        # The input image's PNG is about 0.1 ms to encode: not worth a thread hop.
        return prediction_json(prediction, multi=False, include_input=include_input)

    @app.get("/v1/models", summary="The loaded model", responses=_errors(503))
    async def models() -> dict[str, Any]:
        info = dict(ready_recognizer().info())
        if config.run and not config.show_run_path:
            # A path tells a client about the server's file system (user names, mounts);
            # the run's name is what tells models apart.
            info["source"] = run_name(config.run)
        return {"models": [_jsonable(info)]}

    @app.get("/healthz", summary="Alive: the server answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: the model is loaded", responses=_errors(503))
    async def readyz() -> dict[str, str]:
        ready_recognizer()
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics_page() -> Response:
        # With --workers N, whichever process answers reads every process's files: one view.
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# --------------------------------------------------------------------------------------------
# Connections: the deadlines uvicorn does not keep, and a lingering close.

# The phases of a connection that have a deadline (the metrics label of a timeout).
CONNECTION_PHASES = ("idle", "header", "body")
BODY_GRACE = 1.0  # a stalled predict body is answered 408 at --body-timeout; the backstop comes later
LINGER_SECONDS = 5.0  # after an answer sent while the body still comes: how long the rest is dropped
LINGER_BYTES = 64 * 1024 * 1024  # ... and how many bytes of it, at most


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline in every phase of a connection, and a lingering close.

    uvicorn arms its keep-alive timer only after a response, so a connection that never sends
    a byte, or trickles its request head, or trickles a body the app does not read, stays open
    forever (200 idle connections and slowloris clients did). Here a connection always has one
    deadline, from its phase:

    - waiting for a request (new, or after a response): ``idle_timeout`` without a byte;
    - part of a request head in: the rest within ``header_timeout`` (else 408, closed);
    - head in, body coming: all of it within ``body_timeout`` (+ BODY_GRACE, so that
      /v1/predict answers its own 408 first);
    - request in: none here; the app's own limits apply.

    When an answer goes out while the client is still sending its body (a 413 on the declared
    length, a 408) or a head h11 refused (a 400), closing at once makes the kernel answer the
    client's next segments with a reset, and clients that send the whole body before they read
    (urllib, requests) report "connection reset" instead of the answer. So the connection
    closes as nginx's lingering close does: the answer, then FIN, then the rest of the body is
    read and dropped until the client closes, or for at most LINGER_SECONDS / LINGER_BYTES.

    The limits come from the app's ServerState, found through uvicorn's middleware chain, so
    each ``--workers`` process uses its own app's config.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        state = _find_server_state(self.app)
        self.limits = state.config if state is not None else ServeConfig()
        self.counters = state.metrics if state is not None else None
        self.raw: asyncio.Transport | None = None  # the socket's transport; uvicorn gets a wrapper
        self._deadline: asyncio.TimerHandle | None = None
        self._seen: Any = None  # the client's h11 state when the deadline was last set
        self._idle_since = 0.0
        self._head_since: float | None = None
        self._body_since = 0.0
        self._lingering = False
        self._linger_left = LINGER_BYTES
        self._lost = False

    # -- uvicorn's hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's socket transport, or another loop's with the same methods (uvloop's
        # TCPTransport is no subclass of asyncio.Transport; tests/serve/test_hardening.py
        # runs this protocol on uvloop).
        self.raw = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, _ConnectionTransport(self.raw, self)))
        self._idle_since = self.loop.time()
        self._rearm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_left -= len(data)  # dropped: the answer has been sent
            if self._linger_left <= 0 and self.raw is not None:
                self.raw.close()
            return
        super().data_received(data)
        self._rearm()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()
        self._rearm()

    def shutdown(self) -> None:
        if self._lingering and self.raw is not None:
            self.raw.close()  # the server is stopping: no more waiting for the client
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a request h11 cannot parse (a bad request line, a head over 16 KiB)
        # in plain text; the API's errors are JSON.
        if self.counters is not None:
            self.counters.error("other", "invalid_http")
        body = _error_body("invalid HTTP request: malformed, or a request line or headers over 16 KiB")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            CLOSE,
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    # -- the deadline

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _rearm(self) -> None:
        """Set the deadline of the phase the connection is in now (after every state change)."""
        self._cancel_deadline()
        if self._lost or self._lingering or self.raw is None or self.raw.is_closing():
            return
        now = self.loop.time()
        state = self.conn.their_state
        if state is not self._seen and state is h11.SEND_BODY:
            self._body_since = now  # the head just came in
        self._seen = state
        phase: str
        if state is h11.IDLE:
            if self.conn.trailing_data[0]:  # bytes of the next request head
                self._head_since = now if self._head_since is None else self._head_since
                phase, deadline = "header", self._head_since + self.limits.header_timeout
            else:
                self._head_since = None
                phase, deadline = "idle", self._idle_since + self.limits.idle_timeout
        elif state is h11.SEND_BODY:
            self._head_since = None
            phase, deadline = "body", self._body_since + self.limits.body_timeout + BODY_GRACE
        else:
            self._head_since = None
            return
        self._deadline = self.loop.call_at(deadline, self._expire, phase)

    def _expire(self, phase: str) -> None:
        self._deadline = None
        raw = self.raw
        if raw is None or self._lost or raw.is_closing():
            return
        if self.counters is not None:
            self.counters.timeout(phase)
        if phase == "header":
            # Not a request yet, so not through h11: a plain HTTP/1.1 answer, then close.
            message = f"request head not received within {self.limits.header_timeout:g} s"
            raw.write(_raw_json_response(408, "Request Timeout", message))
        raw.close()  # idle: nothing to say; body: the app has answered, or cannot hear it any more

    # -- the lingering close

    def _close(self) -> None:
        """uvicorn closes the transport: at once, or, while the client still sends its body, lingering."""
        raw = self.raw
        if raw is None or raw.is_closing():
            return
        # SEND_BODY: the body is still coming; ERROR: a head h11 refused (too long, malformed)
        # may be too, and a client that sends it all before reading should still see the 400.
        still_sending = self.conn.their_state in (h11.SEND_BODY, h11.ERROR)
        if self._lost or not still_sending or not raw.can_write_eof():
            raw.close()
            return
        self._cancel_deadline()
        self._lingering = True
        raw.write_eof()  # after the answer: the client sees the response and our FIN
        raw.resume_reading()  # uvicorn may have paused reading a body the app did not want
        self._deadline = self.loop.call_later(LINGER_SECONDS, raw.close)


class _ConnectionTransport:
    """The transport uvicorn's protocol and request cycles use: ``close`` goes through
    :meth:`GuardedH11Protocol._close`; everything else is the socket's transport."""

    def __init__(self, raw: asyncio.Transport, protocol: GuardedH11Protocol) -> None:
        self._raw = raw
        self._protocol = protocol
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._protocol._close()

    def is_closing(self) -> bool:
        return self._closed or self._raw.is_closing()

    def pause_reading(self) -> None:
        if not self._closed:  # a lingering connection keeps reading (and dropping)
            self._raw.pause_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _find_server_state(app: Any) -> ServerState | None:
    """The ServerState of the digitrec app under uvicorn's middleware (proxy headers, logging)."""
    for _ in range(16):
        state = getattr(getattr(app, "state", None), "serve", None)
        if isinstance(state, ServerState):
            return state
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    body = _error_body(message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# --------------------------------------------------------------------------------------------
# Entry points.


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process builds its app from $DIGITREC_SERVE_CONFIG."""
    return create_app(ServeConfig.from_json(os.environ.get(CONFIG_ENV, "{}")))


def serve(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    graceful_timeout: float = 30.0,
    access_log: bool = True,
    log_level: str = "info",
) -> None:
    """Load the model (a bad --run fails here, before binding), then run uvicorn until SIGINT/SIGTERM."""
    import tempfile

    # What this server keeps on disk, removed when it stops: the metrics files of its
    # processes and the model's ONNX export, made once here for all --workers.
    scratch = tempfile.TemporaryDirectory(prefix="digitrec-serve-")
    try:
        _serve(config, Path(scratch.name), host, port, workers, graceful_timeout, access_log, log_level)
    finally:
        scratch.cleanup()
    print("digitrec serve: stopped", flush=True)


def _serve(
    config: ServeConfig,
    scratch: Path,
    host: str,
    port: int,
    workers: int,
    graceful_timeout: float,
    access_log: bool,
    log_level: str,
) -> None:
    import uvicorn

    # Before the model loads and the decode processes start: a port in use is the user's to fix.
    check_can_listen(host, port)
    from .recognition import Recognizer

    onnx_workers = config.backend == "onnx" and workers > 1
    # The workers share one export made here; the bundled model's shipped copy needs none.
    if onnx_workers and not (config.run is None and Recognizer.bundled_onnx(threads=1) is not None):
        onnx_file = scratch / "model.onnx"
        onnx_file.write_bytes(export_onnx_bytes(config.run))
        config = dataclasses.replace(config, onnx_file=str(onnx_file))
    # Fail fast with a one-line DigitrecError (a bad --run, onnxruntime missing), before binding.
    recognizer = load_recognizer(config.run, config.backend, config.onnx_file)
    recognizer.second_look = config.second_look
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"  # an IPv6 address in a URL (RFC 3986): http://[::1]:8000/
    # Port 0: the system picks a free one when uvicorn binds; uvicorn's own line names it.
    where = f"open http://{shown}:{port}/" if port else "a free port, which uvicorn names below"
    processes = decode_processes(config, workers)
    batching = (
        f"batches within {config.batch_window * 1000:g} ms, {processes} decode processes"
        if config.batch_window > 0
        else "no batching"
    )
    print(
        f"digitrec serve: model {recognizer.info().get('name', '?')} "
        f"({config.run or 'bundled default'}) on {recognizer.info()['backend']}, {batching}; {where}",
        flush=True,
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "timeout_graceful_shutdown": graceful_timeout,
        "access_log": access_log,
        "log_level": log_level,
        "server_header": False,
        # Always h11 (httptools, if installed, would bypass the deadlines), no WebSocket
        # upgrades (the app has no WebSocket route), and uvicorn's own keep-alive timer set
        # to the idle timeout the protocol keeps too.
        "http": GuardedH11Protocol,
        "ws": "none",
        # asyncio's own loop, whatever is installed: uvicorn's "auto" takes uvloop when present
        # (uvicorn[standard]), which measured no faster here (docs/speed.md); one loop, tested.
        "loop": "asyncio",
        "timeout_keep_alive": config.idle_timeout,
    }
    # uvicorn traps SIGTERM, finishes the requests in flight, restores the handler it found and
    # raises SIGTERM again. This handler turns that last signal into a normal return (exit 0).
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if workers == 1:
            _one_torch_thread()
            # One process keeps its metrics in memory. A $PROMETHEUS_MULTIPROC_DIR inherited from
            # the shell (another app's deployment) would make prometheus_client write this
            # server's metrics into that folder, summed with whatever stale files it holds, or
            # fail at start-up when it is missing; --workers N sets its own (below).
            os.environ.pop(MULTIPROC_ENV, None)
            uvicorn.run(create_app(config, recognizer=recognizer), **options)
        else:
            # The workers are spawned: they see these, and import prometheus_client afresh,
            # in its multi-process mode.
            metrics_dir = scratch / "metrics"
            metrics_dir.mkdir()
            os.environ[MULTIPROC_ENV] = str(metrics_dir)
            os.environ[WORKERS_ENV] = str(workers)
            os.environ[CONFIG_ENV] = config.to_json()
            uvicorn.run("digitrec.serving:app_from_env", factory=True, workers=workers, **options)
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_can_listen(host: str, port: int) -> None:
    """DigitrecError (one line) if ``host:port`` cannot be listened on: a port in use, a port
    below 1024 without the right, an address not of this machine. Binds as uvicorn will
    (SO_REUSEADDR, so a port that a stopped server left in TIME_WAIT is free), then closes;
    port 0 (any free port) always passes."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the port is in use (another server?); pass another --port"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges); pass --port 1024 or above"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "not an address of this machine; pass --host 127.0.0.1 or 0.0.0.0"
            else:
                why = exc.strerror or str(exc)
            raise DigitrecError(f"cannot listen on {host}:{port}: {why}") from None


class _Stopped(Exception):
    """SIGTERM after uvicorn's graceful shutdown (or before it started): stop normally."""


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped
