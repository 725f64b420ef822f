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
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"load_serve: the server exited with code {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.2)
    raise SystemExit(f"load_serve: server on {host}:{port} not ready within {timeout:g} s")


@contextlib.contextmanager
def started_server(run: str | None, extra: list[str]) -> Iterator[tuple[str, list[str]]]:
    """``python -m digitrec serve`` on a free loopback port; SIGTERM and wait on exit."""
    port = free_port()
    command = [sys.executable, "-m", "digitrec", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    if run:
        command += ["--run", run]
    # The server logs to a file: a pipe nobody reads would fill up and block it.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready("127.0.0.1", port, 120, proc)
            yield f"http://127.0.0.1:{port}", command
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
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
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
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
    with contextlib.ExitStack() as stack:
        if args.url:
            url, command = args.url, None
            wait_ready(
                urllib.parse.urlsplit(url).hostname or "127.0.0.1", urllib.parse.urlsplit(url).port or 80, 30
            )
        else:
            url, command = stack.enter_context(started_server(args.run, args.server_arg))
        result = run_load(url, body, args.requests, args.concurrency, args.warmup)

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
