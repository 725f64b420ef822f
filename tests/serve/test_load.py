"""The load benchmark, run small: a separate client process, many concurrent valid requests, no errors."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.load_serve import HOST, run_load

from .conftest import Server, run_benchmark


@pytest.mark.slow  # a second process that loads MNIST, then 50 requests: several seconds
@pytest.mark.parametrize("client", ["events", "threads"])
def test_load_benchmark_smoke(server: Server, tmp_path: Path, client: str) -> None:
    # Run as a script, by its path, as docs/speed.md shows.
    command = ["benchmarks/load_serve.py", "--url", server.url, "--requests", "50", "--concurrency", "8"]
    report, stdout = run_benchmark([*command, "--warmup", "2", "--client", client], tmp_path / "load.json")
    assert report["client"] == client
    assert report["ok"] == 50 and report["errors"] == 0 and report["status_counts"] == {"200": 50}
    assert report["image"]["width"] == 280 and report["image"]["png_bytes"] > 0
    # The same image every time, the same model: the same digit every time.
    assert report["digits_read"] == {str(report["image"]["label"]): 50}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert "p99" in stdout


@contextlib.contextmanager
def _rude_server(answer: bytes) -> Iterator[str]:
    """A loopback server that reads each request's first bytes, sends ``answer`` and hangs up."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(1 << 16)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(b"", "closed the connection"), (b"HTTP/1.1 200 OK\r\n\r\n{}", "without Content-Length")],
)
def test_event_client_counts_broken_connections_and_finishes(answer: bytes, reason: str) -> None:
    # A server that hangs up (or answers without a length) costs the client each request, counted
    # as an error, never a hang or an exception.
    start = time.monotonic()
    with _rude_server(answer) as url:
        result = run_load(url, b"\x89PNG", requests=12, concurrency=4, warmup=0, client="events")
    assert result["ok"] == 0 and result["errors"] == 12
    assert result["status_counts"] == {"connection-error": 12}
    failures = result["first_failures"]
    assert isinstance(failures, list) and any(reason in failure for failure in failures)
    assert time.monotonic() - start < 30
