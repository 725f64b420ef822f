"""Abuse probes against ``digitrec serve``: does the server hold?

Starts ``digitrec serve`` on a free loopback port (its own, so that it knows the
server's deadlines and can read its memory and log), then replays the probe set
of issue 17, one probe after another::

    method_flood      requests with thousands of made-up method names ("X000001 /healthz")
    bad_bodies        undecodable, truncated, bomb, malformed and oversized bodies, broken HTTP,
                      a client that hangs up mid-body, from raw sockets and from urllib
    retry_storm       64 clients sending predictions as fast as they can, ignoring Retry-After
    idle_connections  200 connections that never send a byte
    slow_headers      clients that trickle their request head (slowloris)
    slow_uploads      32 clients that send headers, then trickle the body

Each probe counts what it tried as held or failed. Held: the server did what it
promises (a JSON answer with the right status, a 503 with Retry-After under
overload, an abusive connection closed by its deadline, an ordinary prediction
sent meanwhile answered 200). Failed: anything else (a 5xx other than 503, a
reset or a timeout where an answer was due, a connection left open past its
deadline, an ordinary request refused, /metrics or memory growing with the
flood, a traceback in the server's log)::

    python -m benchmarks.abuse              # the full set, the server's default limits (about a minute)
    python -m benchmarks.abuse --quick      # fewer requests, 1-2 s deadlines (about 20 s)

Prints a table (probe | held | failed | what), writes JSON to
benchmarks/results/abuse-<timestamp>.json (or --out), and exits 1 if anything
failed. Every probe is bounded in count and time, targets 127.0.0.1 only, and
stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load_serve import HOST, ServeProcess, ServerNotReady, make_png, started_server

RESULTS = Path(__file__).resolve().parent / "results"
SLACK = 10.0  # seconds past a deadline before a connection still open counts as failed


@dataclass(frozen=True)
class Settings:
    """Probe sizes, and the server deadlines the probes check (passed to the server)."""

    flood: int = 3000
    storm_clients: int = 64
    storm_seconds: float = 20.0
    idle: int = 200
    slow_headers: int = 64
    slow_uploads: int = 32
    idle_timeout: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0

    def server_args(self) -> list[str]:
        return [
            "--idle-timeout", f"{self.idle_timeout:g}",
            "--header-timeout", f"{self.header_timeout:g}",
            "--body-timeout", f"{self.body_timeout:g}",
        ]  # fmt: skip


FULL = Settings()
QUICK = Settings(
    flood=1000,
    storm_clients=64,
    storm_seconds=4.0,
    idle=200,
    slow_headers=32,
    slow_uploads=32,
    idle_timeout=1.0,
    header_timeout=2.0,
    body_timeout=2.0,
)


@dataclass
class Probe:
    name: str
    held: int = 0
    failed: int = 0
    detail: str = ""
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self, n: int = 1) -> None:
        with self.lock:
            self.held += n

    def fail(self, why: str) -> None:
        with self.lock:
            self.failed += 1
            if len(self.failures) < 10:
                self.failures.append(why)

    def check(self, good: bool, why: str) -> None:
        if good:
            self.ok()
        else:
            self.fail(why)

    def as_json(self) -> dict[str, Any]:
        return {"probe": self.name, "held": self.held, "failed": self.failed, "detail": self.detail,
                "first_failures": self.failures}  # fmt: skip


@dataclass
class Target(ServeProcess):
    """The server under probe, and the picture (and its digit) that ordinary clients send it."""

    png: bytes
    label: int

    def rss_mb(self) -> float | None:
        """The server's resident memory (Linux /proc), MB."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return None


def is_json_error(headers: dict[str, str], body: bytes) -> bool:
    if not headers.get("content-type", "").startswith("application/json"):
        return False
    with contextlib.suppress(ValueError):
        payload = json.loads(body)
        return isinstance(payload, dict) and list(payload) == ["error"]
    return False


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def ordinary_predictions(target: Target, probe: Probe, count: int) -> None:
    """Predictions from a well-behaved client while the probe runs: each must be a 200 with the digit."""
    for _ in range(count):
        try:
            status, _, body = target.request("POST", "/v1/predict", target.png, {"Content-Type": "image/png"})
        except (OSError, http.client.HTTPException) as exc:
            probe.fail(f"ordinary prediction: {describe(exc)}")
            continue
        good = status == 200 and json.loads(body).get("digit") == target.label
        probe.check(good, f"ordinary prediction: HTTP {status} {body[:120]!r}")


class KeepAlive:
    """A client's keep-alive connection to the target; after a failure, the next request goes on a
    new one."""

    def __init__(self, target: Target, probe: Probe):
        self.target, self.probe = target, probe
        self.conn = http.client.HTTPConnection(HOST, target.port, timeout=30)

    def send(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes] | None:
        """(status, lower-cased headers, body), or None for a failure, counted in the probe."""
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.probe.fail(describe(exc))
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.target.port, timeout=30)
            return None

    def close(self) -> None:
        self.conn.close()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (data, closed within timeout)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def parse_raw(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# ---- the probes ------------------------------------------------------------------------------


def probe_method_flood(target: Target, settings: Settings) -> Probe:
    probe = Probe("method_flood")
    page_before = len(target.request("GET", "/metrics")[2])
    rss_before = target.rss_mb()
    per_client = settings.flood // 4

    def client(offset: int) -> None:
        conn = KeepAlive(target, probe)
        for i in range(offset, offset + per_client):
            answer = conn.send(f"X{i:06d}", "/healthz")
            if answer is None:
                continue
            status, headers, body = answer
            probe.check(status == 405 and is_json_error(headers, body), f"X{i:06d} /healthz: HTTP {status}")
        conn.close()

    threads = [threading.Thread(target=client, args=(k * per_client,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    page_after = len(target.request("GET", "/metrics")[2])
    rss_after = target.rss_mb()
    # The counters' digits grow; a series per method would add ~100 bytes per request.
    if page_after - page_before > 16 * 1024:
        probe.fail(f"/metrics grew from {page_before} to {page_after} bytes")
    grew = None if rss_before is None or rss_after is None else rss_after - rss_before
    if grew is not None and grew > 20:
        probe.fail(f"server memory grew {grew:.1f} MB")
    probe.detail = (
        f"{4 * per_client} odd methods; /metrics {page_before / 1024:.1f} -> {page_after / 1024:.1f} KB"
        + ("" if grew is None else f", RSS {grew:+.1f} MB")
    )
    return probe


def bomb_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def probe_bad_bodies(target: Target, settings: Settings) -> Probe:
    probe = Probe("bad_bodies")
    png = target.png
    big = 5 * 1024 * 1024  # over the default --max-body (2 MiB)
    cases: list[tuple[str, dict[str, str], Any, int]] = [
        ("not an image", {"Content-Type": "image/png"}, b"hello, not a png", 400),
        ("empty", {"Content-Type": "image/png"}, b"", 400),
        ("truncated PNG", {"Content-Type": "image/png"}, png[: len(png) // 2], 400),
        ("decompression bomb", {"Content-Type": "image/png"}, bomb_png(), 400),
        ("malformed JSON", {"Content-Type": "application/json"}, b'{"pixels": [[1, 2]', 400),
        ("deeply nested JSON", {"Content-Type": "application/json"}, b"[" * 100_000, 400),
        ("wrong pixels", {"Content-Type": "application/json"}, b'{"pixels": [[0]]}', 422),
        ("unsupported type", {"Content-Type": "text/plain"}, png, 415),
        ("multipart garbage", {"Content-Type": "multipart/form-data; boundary=x"}, b"garbage", 400),
        ("declared over the cap", {"Content-Type": "image/png"}, b"\0" * big, 413),
        ("chunked over the cap", {"Content-Type": "image/png"}, (b"\0" * 65536 for _ in range(80)), 413),
    ]
    for name, headers, body, want in cases:  # through urllib: sends the whole body, then reads
        request = urllib.request.Request(
            f"http://{HOST}:{target.port}/v1/predict", data=body, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, got_headers, payload = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, got_headers, payload = error.code, dict(error.headers), error.read()
        except (OSError, http.client.HTTPException) as exc:
            probe.fail(f"{name}: {describe(exc)}")
            continue
        lower = {k.lower(): v for k, v in got_headers.items()}
        probe.check(status == want and is_json_error(lower, payload), f"{name}: HTTP {status}, want {want}")

    raw_cases = [
        ("malformed request line", b"GET /healthz HTTP/1.1 extra\r\n\r\n", 400),
        ("malformed header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (
            "4 MB of headers",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4_000_000 + b"\r\n\r\n",
            400,
        ),
    ]
    for name, data, want in raw_cases:
        try:
            with socket.create_connection((HOST, target.port), timeout=30) as sock:
                sock.sendall(data)
                answer, _ = read_until_closed(sock, 30)
        except OSError as exc:
            probe.fail(f"{name}: {describe(exc)}")
            continue
        status, headers, body = parse_raw(answer)
        probe.check(status == want and is_json_error(headers, body), f"{name}: HTTP {status}, want {want}")

    # A client that hangs up mid-body: nobody to answer, but the server must stay well.
    with socket.create_connection((HOST, target.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
            + png[:100]
        )
    ordinary_predictions(target, probe, 2)
    probe.detail = f"{len(cases)} via urllib, {len(raw_cases)} raw, 1 hang-up, 2 ordinary"
    return probe


def probe_retry_storm(target: Target, settings: Settings) -> Probe:
    probe = Probe("retry_storm")
    stop = time.monotonic() + settings.storm_seconds
    counts = {"200": 0, "503": 0}
    health: list[float] = []

    def client() -> None:
        conn = KeepAlive(target, probe)
        while time.monotonic() < stop:
            answer = conn.send("POST", "/v1/predict", target.png, {"Content-Type": "image/png"})
            if answer is None:
                continue
            status, headers, body = answer
            if status == 200 and json.loads(body).get("digit") == target.label:
                good = True
            else:  # shed load: 503, JSON, Retry-After; the client ignores it and sends again at once
                good = status == 503 and "retry-after" in headers and is_json_error(headers, body)
            probe.check(good, f"HTTP {status} {body[:120]!r}")
            if good:
                with probe.lock:
                    counts[str(status)] += 1
        conn.close()

    def monitor() -> None:  # /healthz must keep answering, fast, through the storm
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                status = target.request("GET", "/healthz")[0]
            except (OSError, http.client.HTTPException) as exc:
                probe.fail(f"/healthz: {describe(exc)}")
                continue
            seconds = time.perf_counter() - start
            health.append(seconds)
            probe.check(status == 200 and seconds < 5.0, f"/healthz: HTTP {status} in {seconds:.2f} s")
            time.sleep(0.2)

    threads = [threading.Thread(target=client) for _ in range(settings.storm_clients)]
    threads.append(threading.Thread(target=monitor))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    worst = max(health) * 1000 if health else float("nan")
    probe.detail = (
        f"{settings.storm_clients} clients, {settings.storm_seconds:g} s: {counts['200']} x 200, "
        f"{counts['503']} x 503; /healthz worst {worst:.0f} ms"
    )
    if counts["200"] == 0:
        probe.fail("no prediction got through")
    return probe


def watch_closing(
    socks: list[socket.socket], deadline: float, feed: Callable[[socket.socket], None] | None = None
) -> dict[socket.socket, bytes]:
    """Wait until the server closes each socket or the deadline passes; ``feed`` sends a little more
    on every open socket each quarter second. Returns {closed socket: what the server sent}."""
    open_socks = set(socks)
    received: dict[socket.socket, bytes] = {s: b"" for s in socks}
    closed: dict[socket.socket, bytes] = {}
    next_feed = time.monotonic()
    while open_socks and time.monotonic() < deadline:
        if feed is not None and time.monotonic() >= next_feed:
            for sock in list(open_socks):
                with contextlib.suppress(OSError):
                    feed(sock)
            next_feed = time.monotonic() + 0.25
        readable, _, _ = select.select(list(open_socks), [], [], 0.05)
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                received[sock] += chunk
            else:
                open_socks.discard(sock)
                closed[sock] = received[sock]
    return closed


def connect_many(target: Target, count: int, first: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection((HOST, target.port), timeout=10)
        if first:
            sock.sendall(first)
        socks.append(sock)
    return socks


def probe_idle(target: Target, settings: Settings) -> Probe:
    probe = Probe("idle_connections")
    socks = connect_many(target, settings.idle)
    try:
        start = time.monotonic()
        ordinary_predictions(target, probe, 3)  # the server serves others meanwhile
        closed = watch_closing(socks, start + settings.idle_timeout + SLACK)
        took = time.monotonic() - start
        for sock in socks:
            probe.check(sock in closed, "an idle connection was still open")
    finally:
        for sock in socks:
            sock.close()
    probe.detail = f"{settings.idle} silent connections, {len(closed)} closed by the server in {took:.1f} s"
    return probe


def expect_408(
    target: Target,
    probe: Probe,
    what: str,
    socks: list[socket.socket],
    timeout: float,
    feed: Callable[[socket.socket], None],
    ordinary: int,
) -> None:
    """Feed each of ``socks`` a little more every quarter second while a well-behaved client sends
    ``ordinary`` predictions: the server must answer each 408 and close it within ``timeout``."""
    try:
        start = time.monotonic()
        side = threading.Thread(target=ordinary_predictions, args=(target, probe, ordinary))
        side.start()
        closed = watch_closing(socks, start + timeout + SLACK, feed)
        side.join()
        for sock in socks:
            status = parse_raw(closed[sock])[0] if sock in closed else None
            probe.check(status == 408, f"{what}: {'still open' if status is None else f'HTTP {status}'}")
    finally:
        for sock in socks:
            sock.close()


def probe_slow_headers(target: Target, settings: Settings) -> Probe:
    probe = Probe("slow_headers")
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    sent: dict[socket.socket, int] = {}

    def feed(sock: socket.socket) -> None:  # one more byte of the head, four times a second
        n = sent.get(sock, 1)
        sock.sendall(head[n : n + 1])
        sent[sock] = n + 1

    socks = connect_many(target, settings.slow_headers, head[:1])
    expect_408(target, probe, "slow head", socks, settings.header_timeout, feed, 3)
    probe.detail = (
        f"{settings.slow_headers} slowloris heads, 408 and closed after {settings.header_timeout:g} s"
    )
    return probe


def probe_slow_uploads(target: Target, settings: Settings) -> Probe:
    probe = Probe("slow_uploads")
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(target.png)}\r\n\r\n"
    ).encode()

    def feed(sock: socket.socket) -> None:
        sock.sendall(b"\0")

    socks = connect_many(target, settings.slow_uploads, head + target.png[:100])
    expect_408(target, probe, "slow upload", socks, settings.body_timeout, feed, 5)
    probe.detail = (
        f"{settings.slow_uploads} trickled bodies (408 after {settings.body_timeout:g} s); "
        "5 ordinary predictions meanwhile"
    )
    return probe


PROBES: list[Callable[[Target, Settings], Probe]] = [
    probe_method_flood,
    probe_bad_bodies,
    probe_retry_storm,
    probe_idle,
    probe_slow_headers,
    probe_slow_uploads,
]


# ---- running ---------------------------------------------------------------------------------


def format_table(probes: list[Probe]) -> str:
    rows = [("probe", "held", "failed", "what"), ("---", "---", "---", "---")]
    rows += [(p.name, str(p.held), str(p.failed), p.detail) for p in probes]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer requests, 1-2 s server deadlines (default: off)"
    )
    parser.add_argument("--run", help="run directory to serve (default: the bundled model)")
    parser.add_argument("--out", help="result JSON (default: benchmarks/results/abuse-<timestamp>.json)")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for the server, repeatable (default: none)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    png, label = make_png(0, 280)
    server_args = [*settings.server_args(), *(["--run", args.run] if args.run else []), *args.server_arg]
    probes: list[Probe] = []
    started = time.monotonic()
    try:
        with started_server(server_args, stop_timeout=60) as server:
            target = Target(server.port, server.proc, server.log_path, server.command, png, label)
            for run_probe in PROBES:
                t0 = time.monotonic()
                probe = run_probe(target, settings)
                print(f"abuse: {probe.name}: {probe.held} held, {probe.failed} failed "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)  # fmt: skip
                probes.append(probe)
                if target.proc.poll() is not None:
                    probe.fail(f"the server exited with code {target.proc.returncode}")
                    break
            log = target.log()
    except ServerNotReady as exc:
        raise SystemExit(f"abuse: {exc}") from None
    # One more check across all probes: no request made the server log a traceback.
    log_probe = Probe("server_log", detail="no traceback, no 'Exception in ASGI application'")
    log_probe.check(
        "Traceback" not in log and "Exception in ASGI application" not in log, "a traceback in the server log"
    )
    probes.append(log_probe)

    result = {
        "benchmark": "abuse",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "settings": asdict(settings),
        "server_args": server_args,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "probes": [p.as_json() for p in probes],
        "failed": sum(p.failed for p in probes),
    }
    out = Path(args.out) if args.out else RESULTS / f"abuse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    from digitrec.fileio import write_json_atomic

    write_json_atomic(out, result)
    print(format_table(probes))
    for p in probes:
        for why in p.failures:
            print(f"abuse: {p.name}: failed: {why}")
    print(f"abuse: {result['failed']} failed in {result['seconds']} s; wrote {out}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
