"""Abuse a real ``digitrec serve`` subprocess over real sockets: label floods, slow and idle
connections, oversized bodies from ordinary clients, shutdown past the graceful timeout, and
what /v1/models tells a client about the server's files (issue 17)."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks.load_serve import ServeProcess, free_port, wait_ready

import digitrec

from .conftest import Server, encode, on_paper, parse_metrics, run_server, server_env
from .test_api import open_request, predict_head, read_response


def scrape_text(server: Server) -> str:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    return body.decode()


def sample(text: str, name: str) -> float:
    value: float = parse_metrics(text).get(name, 0.0)
    return value


# ---- 1. metrics labels from fixed sets -----------------------------------------------------------


def test_a_method_name_flood_adds_no_metrics_series(server: Server) -> None:
    other = 'digitrec_http_requests_total{route="/healthz",method="other",status="405"}'
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("X000000", "/healthz")
    assert conn.getresponse().read()
    scrape_text(server)  # the first scrape and the first odd method make their series
    before = scrape_text(server)
    try:
        for i in range(1, 501):
            conn.request(f"X{i:06d}", "/healthz")
            response = conn.getresponse()
            body: Any = json.loads(response.read())
            assert response.status == 405 and list(body) == ["error"], (response.status, body)
    finally:
        conn.close()
    after = scrape_text(server)
    assert "X000" not in after
    assert sample(after, other) - sample(before, other) == 500
    # The flood's only trace is counters moving: the page has the same series as before.
    assert [line.rsplit(" ", 1)[0] for line in after.splitlines()] == [
        line.rsplit(" ", 1)[0] for line in before.splitlines()
    ]


def wait_for(server: Server, gauge: str, value: float, timeout: float = 30) -> None:
    """Poll /metrics until ``gauge`` reads ``value`` (a generous deadline: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while sample(scrape_text(server), gauge) != value:
        assert time.monotonic() < deadline, f"{gauge} never reached {value}"
        time.sleep(0.05)


def wait_closed(sock: socket.socket, timeout: float = 30) -> tuple[bytes, float]:
    """Read until the server closes the connection: (everything it sent, seconds it took)."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        assert time.monotonic() - start < timeout, "the server kept the connection open"
    return data, time.monotonic() - start


def json_answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


# Short deadlines, so that the tests of connection limits wait seconds, not minutes.
IDLE, HEADER, BODY = 2.0, 3.0, 4.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(
        tmp_path_factory.mktemp("serve-guarded"),
        "--max-inflight", "2", "--max-body", "100000", "--idle-timeout", str(IDLE),
        "--header-timeout", str(HEADER), "--body-timeout", str(BODY),
    ) as live:  # fmt: skip
        yield live


# ---- 2. slow uploads, slow heads, idle connections ----------------------------------------------


def test_slow_uploads_do_not_take_the_inflight_slots(guarded: Server, mnist: Any) -> None:
    png = encode(on_paper(mnist.test_images[0].numpy()))
    # Twice --max-inflight clients that send their headers and then trickle the body.
    slow = [open_request(guarded, predict_head(len(png)), png[:100]) for _ in range(4)]
    try:
        wait_for(guarded, "digitrec_predict_uploads", 4)
        status, _, body = guarded.request("POST", "/v1/predict", png, {"Content-Type": "image/png"})
        assert status == 200 and json.loads(body)["digit"] == int(mnist.test_labels[0]), body
        for sock in slow:  # and each slow one gets its 408 when --body-timeout runs out
            status, error = json_answer(wait_closed(sock)[0])
            assert status == 408 and "not received within 4 s" in error["error"]
    finally:
        for sock in slow:
            sock.close()
    wait_for(guarded, "digitrec_predict_uploads", 0)


def test_idle_connections_are_closed_after_the_idle_timeout(guarded: Server) -> None:
    # New connections that never send a byte, and one kept alive after a response.
    idle = [socket.create_connection(("127.0.0.1", guarded.port), timeout=10) for _ in range(20)]
    kept = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    try:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(kept)[0] == 200
        for sock in [*idle, kept]:
            data, _ = wait_closed(sock)
            assert data == b""  # closed quietly: there was no request to answer
    finally:
        for sock in [*idle, kept]:
            sock.close()
    assert sample(scrape_text(guarded), 'digitrec_http_connection_timeouts_total{phase="idle"}') >= 20


def test_a_request_head_sent_slowly_gets_408_and_the_connection_closes(guarded: Server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s keeps resetting any timer that counts silence
        for byte in head:
            if stop.wait(0.1):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        data, seconds = wait_closed(sock)
    finally:
        stop.set()
        sender.join(timeout=30)
        sock.close()
    status, error = json_answer(data)
    assert status == 408 and "request head not received within 3 s" in error["error"]
    assert seconds > HEADER - 0.5  # from the first byte, not from the last


def test_a_body_the_app_does_not_read_cannot_hold_the_connection(guarded: Server) -> None:
    # /healthz answers at once; the client goes on trickling a body it declared as 90 kB.
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 90000\r\n\r\n")
    assert read_response(sock)[0] == 200
    start = time.monotonic()
    try:
        while time.monotonic() - start < 60:
            sock.sendall(b"x")
            time.sleep(0.1)
    except OSError:
        pass  # closed: the server stopped listening to the body
    finally:
        sock.close()
    assert time.monotonic() - start < 30, "the body kept the connection open"


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
        # 4 MB of headers, sent whole before reading: the client must still read the 400.
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 4_000_000 + b"\r\n\r\n",
    ],
    ids=["malformed", "huge"],
)
def test_invalid_http_is_a_json_400(guarded: Server, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(head)
        status, error = json_answer(wait_closed(sock)[0])
    assert status == 400 and error["error"].startswith("invalid HTTP request")


# ---- 3. a body over --max-body: ordinary clients read the 413 ------------------------------------


def urllib_post(server: Server, data: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/v1/predict", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:  # a reset would be URLError / ConnectionResetError
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("size", [200_000, 5_000_000, 20_000_000])
def test_urllib_reads_the_413_for_a_declared_body_over_the_cap(guarded: Server, size: int) -> None:
    # urllib sends the whole body, without Expect: 100-continue, before it reads the answer.
    status, error = urllib_post(guarded, b"\x00" * size, {"Content-Type": "image/png"})
    assert status == 413 and f"{size} bytes > 100000" in error["error"]


def test_urllib_reads_the_413_for_a_chunked_body_over_the_cap(guarded: Server) -> None:
    chunks = (b"\x00" * 65536 for _ in range(64))  # 4 MiB, no Content-Length: chunked
    status, error = urllib_post(guarded, chunks, {"Content-Type": "image/png"})
    assert status == 413 and "more than 100000 bytes" in error["error"]
    assert guarded.request("GET", "/healthz")[0] == 200


# ---- 4. SIGTERM past --graceful-timeout ----------------------------------------------------------


def test_a_request_cut_off_by_shutdown_gets_503_json_and_one_log_line(tmp_path: Path) -> None:
    with run_server(tmp_path, "--graceful-timeout", "1", "--body-timeout", "60") as live:
        # A prediction whose body never finishes: it is still running when the graceful timeout ends.
        with open_request(live, predict_head(1000), b"\x89PNG") as sock:
            sock.settimeout(60)
            wait_for(live, "digitrec_predict_uploads", 1)
            live.proc.send_signal(signal.SIGTERM)
            status, headers, body = read_response(sock)
        assert status == 503, body
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        assert "shutting down" in json.loads(body)["error"]
        assert live.proc.wait(timeout=60) == 0
        log = live.log()
    assert "Traceback" not in log and "Internal Server Error" not in log
    ours = [line for line in log.splitlines() if "graceful timeout" in line]
    assert len(ours) == 1 and "POST /v1/predict" in ours[0], log


# ---- 8. /v1/models names the run, not its path ---------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory (the bundled model's files) under a path a client should not learn."""
    run = tmp_path_factory.mktemp("operator-home") / "runs" / "lenet-for-issue-17"
    shutil.copytree(Path(digitrec.__file__).parent / "_data" / "default_model", run)
    return run


def test_models_shows_the_run_name_not_its_path(run_dir: Path, tmp_path: Path) -> None:
    with run_server(tmp_path, "--run", str(run_dir)) as live:
        status, _, body = live.request("GET", "/v1/models")
    assert status == 200
    (model,) = json.loads(body)["models"]
    assert model["source"] == "lenet-for-issue-17"
    assert str(run_dir.parent) not in body.decode() and "operator-home" not in body.decode()


def test_show_run_path_shows_it(run_dir: Path, tmp_path: Path) -> None:
    with run_server(tmp_path, "--run", str(run_dir), "--show-run-path") as live:
        status, _, body = live.request("GET", "/v1/models")
    assert status == 200
    assert json.loads(body)["models"][0]["source"] == str(run_dir)


# ---- 6. another event loop ----------------------------------------------------------------------

UVLOOP_SERVER = """
import sys
import uvicorn
from digitrec.serving import GuardedH11Protocol, ServeConfig, create_app

app = create_app(ServeConfig(idle_timeout=float(sys.argv[2])))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http=GuardedH11Protocol,
            ws="none", log_level="warning")
"""


def test_the_guarded_protocol_runs_on_uvloop(tmp_path: Path, mnist: Any) -> None:
    # `digitrec serve` runs asyncio's loop, but uvloop is what uvicorn[standard] installs and
    # uvicorn's "auto" picks: the protocol once refused uvloop's transport on every connection.
    port = free_port()
    log_path = tmp_path / "uvloop.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", UVLOOP_SERVER, str(port), "1"],
            stdout=log, stderr=subprocess.STDOUT, env=server_env(),
        )  # fmt: skip
    server = ServeProcess(port, proc, log_path, [])
    try:
        wait_ready("127.0.0.1", port, 60.0, proc)
        png = encode(on_paper(mnist.test_images[0].numpy()))
        status, _, body = server.request("POST", "/v1/predict", png, {"Content-Type": "image/png"})
        assert status == 200 and json.loads(body)["digit"] == int(mnist.test_labels[0]), body
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            assert wait_closed(idle)[0] == b""  # its idle deadline (1 s) closed it
        finally:
            idle.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in server.log(), server.log()
