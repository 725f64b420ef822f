"""Load test of ``digitrec serve`` from a separate process, over loopback.

Sends the same 280x280 PNG (an MNIST test digit, dark ink on white paper, as a
person's drawing would arrive) to ``POST /v1/predict`` over N keep-alive
connections, each sending its next request when its answer is in (N clients;
one thread drives them all from a selector loop, as wrk does, or with
``--client threads`` one thread with http.client each), and reports latency
percentiles, errors and throughput::

    python benchmarks/load_serve.py                          # starts a server, 2,000 requests, concurrency 16
    python benchmarks/load_serve.py --run runs/X             # serve that run's model instead of the default
    python benchmarks/load_serve.py --url http://127.0.0.1:8000 --requests 50 --concurrency 4

Latency is measured in the client: from sending the request to having read the
whole response. Warm-up requests (--warmup) are not counted. The JSON result
goes to benchmarks/results/load_serve-<timestamp>.json (or --out). Exit code 1
if any request failed (a non-200 answer or a broken connection).

Its server side (started_server, ServeProcess, wait_ready) also starts the server
for benchmarks/abuse.py and tests/serve; this file stays runnable by its path.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"


def make_png(index: int, size: int) -> tuple[bytes, int]:
    """MNIST test image ``index``, inverted (dark ink on white) and scaled to size x size: (PNG, label)."""
    from PIL import Image

    from digitrec.data import load_dataset

    ds = load_dataset("mnist")
    pixels = 255 - ds.test_images[index].numpy()  # (28, 28) uint8, ink now dark
    image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), int(ds.test_labels[index])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerNotReady(RuntimeError):
    """The server exited, or did not answer GET /readyz with 200 in time."""


def wait_ready(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerNotReady(f"the server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.1)
    raise ServerNotReady(f"server on {host}:{port} not ready within {timeout:g} s")


@dataclass
class ServeProcess:
    """A ``digitrec serve`` subprocess on a loopback port, its output in a log file."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@contextlib.contextmanager
def started_server(
    args: Sequence[str],
    log_dir: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
    stop_timeout: float = 30.0,
) -> Iterator[ServeProcess]:
    """``python -m digitrec serve ARGS`` on a free loopback port, ready (GET /readyz answered 200)
    when it yields; SIGTERM on exit, killed if still running after ``stop_timeout`` seconds. Its
    output goes to ``serve-PORT.log`` in ``log_dir`` (default: a temporary folder), a file: a pipe
    nobody reads would fill up and block the server. Raises ServerNotReady, with the log, if it
    exits or is not ready within ``ready_timeout`` seconds."""
    port = free_port()
    command = [sys.executable, "-m", "digitrec", "serve", "--host", HOST, "--port", str(port), *args]
    with contextlib.ExitStack() as stack:
        folder = log_dir if log_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log_path = folder / f"serve-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = ServeProcess(port, proc, log_path, command)
        try:
            try:
                wait_ready(HOST, port, ready_timeout, proc)
            except ServerNotReady as exc:
                raise ServerNotReady(f"{exc}; its log:\n{server.log()}") from None
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0-100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# The clients run_load can use, and how each drives its connections. "events": one thread, one
# selector loop, the request's bytes built once, as wrk does. "threads": http.client in a thread
# per connection (the client until 2026-12-02). Measured per request at 16 clients: 0.11-0.16 ms
# of the client's CPU against 0.37 ms, with the same server figures within the noise.
CLIENTS = {"events": "one selector loop", "threads": "a thread with http.client each"}


def run_load(
    url: str, body: bytes, requests: int, concurrency: int, warmup: int, client: str = "events"
) -> dict[str, object]:
    """``requests`` POSTs of ``body`` to ``url``'s /v1/predict over ``concurrency`` keep-alive
    connections, each sending its next request as soon as its answer is in, after ``warmup``
    untimed requests on one connection: counts, latency percentiles (ms) and throughput."""
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r} (known: {', '.join(CLIENTS)})")
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    path = (parts.path.rstrip("/") or "") + "/v1/predict"
    tally = _Tally()
    warm = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(warmup):
        warm.request("POST", path, body=body, headers={"Content-Type": "image/png"})
        warm.getresponse().read()
    warm.close()
    load = _load_events if client == "events" else _load_threads
    wall_start = time.perf_counter()
    load(host, port, path, body, requests, concurrency, tally)
    wall = time.perf_counter() - wall_start

    ordered = sorted(tally.latencies)
    ms = [v * 1000 for v in ordered]
    return {
        "client": client,
        "requests": requests,
        "concurrency": concurrency,
        "warmup_requests": warmup,
        "ok": tally.statuses.get("200", 0),
        "errors": requests - tally.statuses.get("200", 0),
        "status_counts": dict(tally.statuses),
        "first_failures": tally.failures[:20],
        "digits_read": dict(tally.digits),
        "wall_seconds": round(wall, 3),
        "throughput_rps": round(len(ordered) / wall, 1) if wall > 0 else None,
        "latency_ms": {
            "p50": round(percentile(ms, 50), 2),
            "p90": round(percentile(ms, 90), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(ms[-1], 2) if ms else None,
            "mean": round(sum(ms) / len(ms), 2) if ms else None,
        },
    }


@dataclass
class _Tally:
    """What the requests came back with (a lock guards it when several threads add)."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: Counter[str] = field(default_factory=Counter)
    digits: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, status: int, payload: bytes, elapsed: float) -> None:
        with self.lock:
            self.statuses[str(status)] += 1
            if status == 200:
                self.latencies.append(elapsed)
                self.digits[str(json.loads(payload)["digit"])] += 1
            elif len(self.failures) < 20:
                self.failures.append(f"HTTP {status}: {payload[:200]!r}")

    def broken(self, reason: str) -> None:
        with self.lock:
            self.statuses["connection-error"] += 1
            if len(self.failures) < 20:
                self.failures.append(reason)


def _load_threads(
    host: str, port: int, path: str, body: bytes, requests: int, concurrency: int, tally: _Tally
) -> None:
    lock = threading.Lock()
    next_index = iter(range(requests))
    headers = {"Content-Type": "image/png"}

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if next(next_index, None) is None:
                    break
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                status, payload = response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                tally.broken(f"{type(exc).__name__}: {exc}")
                continue
            tally.answer(status, payload, time.perf_counter() - start)
        conn.close()

    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class _Connection:
    """One keep-alive connection of the event-loop client and the request it has in flight."""

    sock: socket.socket
    sent: int = 0  # bytes of the request sent
    received: bytearray = field(default_factory=bytearray)
    start: float = 0.0  # perf_counter() when the request's first byte went out


def _answer_length(head: bytes) -> int | None:
    """The body length a response head declares (Content-Length), None if it declares none."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def _load_events(
    host: str, port: int, path: str, body: bytes, requests: int, concurrency: int, tally: _Tally
) -> None:
    """Every connection driven from one selector loop: send the prebuilt request, read the answer
    (its head, then Content-Length bytes), record it, send the next. A connection that breaks is
    counted, closed and replaced; a minute without any progress fails what is in flight."""
    request = memoryview(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        + body
    )
    selector = selectors.DefaultSelector()
    to_send = requests

    def connect() -> _Connection:
        sock = socket.create_connection((host, port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return _Connection(sock)

    def send_next(conn: _Connection, registered: bool) -> None:
        nonlocal to_send
        if to_send == 0:
            if registered:
                selector.unregister(conn.sock)
            conn.sock.close()
            return
        to_send -= 1
        conn.sent, conn.received = 0, bytearray()
        conn.start = time.perf_counter()
        if registered:
            selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        else:
            selector.register(conn.sock, selectors.EVENT_WRITE, conn)

    def replace(conn: _Connection, reason: str) -> None:
        tally.broken(reason)
        selector.unregister(conn.sock)
        conn.sock.close()
        try:
            send_next(connect(), registered=False)
        except OSError as exc:  # the server is gone: every request left fails
            nonlocal to_send
            while to_send:
                to_send -= 1
                tally.broken(f"{type(exc).__name__}: {exc}")

    for _ in range(min(concurrency, requests)):
        send_next(connect(), registered=False)
    while selector.get_map():
        ready = selector.select(timeout=60)
        if not ready:  # no answer for a minute: what is in flight has failed
            for key in list(selector.get_map().values()):
                replace(key.data, "timed out: no answer in 60 s")
            continue
        for key, events in ready:
            conn = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    conn.sent += conn.sock.send(request[conn.sent :])
                    if conn.sent == len(request):
                        selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                data = conn.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                replace(conn, f"{type(exc).__name__}: {exc}")
                continue
            if not data:
                replace(conn, "the server closed the connection")
                continue
            conn.received += data
            head_end = conn.received.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            length = _answer_length(bytes(conn.received[:head_end]))
            if length is None:
                replace(conn, "an answer without Content-Length")
                continue
            if len(conn.received) < head_end + 4 + length:
                continue
            elapsed = time.perf_counter() - conn.start
            status = int(conn.received[9:12])  # "HTTP/1.1 200 OK"
            tally.answer(status, bytes(conn.received[head_end + 4 : head_end + 4 + length]), elapsed)
            send_next(conn, registered=True)


def add_client_argument(parser: argparse.ArgumentParser) -> None:
    """``--client``, for this tool and benchmarks/serve_speed.py."""
    parser.add_argument(
        "--client",
        choices=list(CLIENTS),
        default="events",
        help="events: one selector loop drives the connections; threads: a thread with http.client each "
        "(default: events)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running server (default: start one on a free port)")
    parser.add_argument("--run", help="run directory for the started server (default: the bundled model)")
    parser.add_argument("--requests", type=int, default=2000, help="requests to time (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections (default: 16)")
    add_client_argument(parser)
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default: 10)")
    parser.add_argument("--size", type=int, default=280, help="PNG side in pixels (default: 280)")
    parser.add_argument("--digit-index", type=int, default=0, help="MNIST test image to send (default: 0)")
    parser.add_argument("--out", help="result JSON (default: benchmarks/results/load_serve-<timestamp>.json)")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for the started server, repeatable, e.g. --server-arg=--no-access-log "
        "(default: none)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--requests and --concurrency must be >= 1, --warmup >= 0")
    if args.url and urllib.parse.urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address (this tool only loads local servers)")

    body, label = make_png(args.digit_index, args.size)
    command: list[str] | None = None
    try:
        with contextlib.ExitStack() as stack:
            if args.url:
                url = args.url
                wait_ready(
                    urllib.parse.urlsplit(url).hostname or HOST, urllib.parse.urlsplit(url).port or 80, 30
                )
            else:
                server_args = [*args.server_arg, *(["--run", args.run] if args.run else [])]
                server = stack.enter_context(started_server(server_args))
                url, command = server.url, server.command
            result = run_load(url, body, args.requests, args.concurrency, args.warmup, args.client)
    except ServerNotReady as exc:
        raise SystemExit(f"load_serve: {exc}") from None

    result = {
        "benchmark": "load_serve",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "url": url,
        "server_command": command,
        "image": {"width": args.size, "height": args.size, "png_bytes": len(body), "label": label},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        **result,
    }
    out = Path(args.out) if args.out else RESULTS / f"load_serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    from digitrec.fileio import write_json_atomic

    write_json_atomic(out, result)
    lat = result["latency_ms"]
    assert isinstance(lat, dict)
    print(
        f"load_serve: {result['ok']}/{args.requests} ok, {result['errors']} errors, "
        f"concurrency {args.concurrency}, {result['throughput_rps']} req/s; "
        f"latency ms p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max {lat['max']}; "
        f"digits read {result['digits_read']} (label {label}); wrote {out}"
    )
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
