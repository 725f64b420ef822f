"""Load test of ``digitrec serve`` from a separate process, over loopback.

Sends the same 280x280 PNG (an MNIST test digit, dark ink on white paper, as a
person's drawing would arrive) to ``POST /v1/predict`` from N threads, each
with its own keep-alive connection, and reports latency percentiles, errors
and throughput::

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
from dataclasses import dataclass
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


def run_load(url: str, body: bytes, requests: int, concurrency: int, warmup: int) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    path = (parts.path.rstrip("/") or "") + "/v1/predict"
    headers = {"Content-Type": "image/png"}
    lock = threading.Lock()
    next_index = iter(range(requests))
    latencies: list[float] = []  # seconds, successful requests only
    statuses: Counter[str] = Counter()
    digits: Counter[str] = Counter()
    failures: list[str] = []

    def one(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if next(next_index, None) is None:
                    break
            start = time.perf_counter()
            try:
                status, payload = one(conn)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                with lock:
                    statuses["connection-error"] += 1
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                statuses[str(status)] += 1
                if status == 200:
                    latencies.append(elapsed)
                    digits[str(json.loads(payload)["digit"])] += 1
                elif len(failures) < 20:
                    failures.append(f"HTTP {status}: {payload[:200]!r}")
        conn.close()

    warm = http.client.HTTPConnection(host, port, timeout=60)
    for _ in range(warmup):
        one(warm)
    warm.close()

    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(concurrency)]
    wall_start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall_start

    ordered = sorted(latencies)
    ms = [v * 1000 for v in ordered]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "warmup_requests": warmup,
        "ok": statuses.get("200", 0),
        "errors": requests - statuses.get("200", 0),
        "status_counts": dict(statuses),
        "first_failures": failures[:20],
        "digits_read": dict(digits),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running server (default: start one on a free port)")
    parser.add_argument("--run", help="run directory for the started server (default: the bundled model)")
    parser.add_argument("--requests", type=int, default=2000, help="requests to time (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default: 16)")
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
            result = run_load(url, body, args.requests, args.concurrency, args.warmup)
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
