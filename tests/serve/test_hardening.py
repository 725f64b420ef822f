"""Abuse a real ``digitrec serve`` subprocess over real sockets: label floods, slow and idle
connections, oversized bodies from ordinary clients, shutdown past the graceful timeout, and
what /v1/models tells a client about the server's files (issue 17)."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import digitrec

from .conftest import Server, run_server
from .test_api import open_request, predict_head, read_response


def scrape_text(server: Server) -> str:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    return body.decode()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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


# ---- 4. SIGTERM past --graceful-timeout ----------------------------------------------------------


def test_a_request_cut_off_by_shutdown_gets_503_json_and_one_log_line(tmp_path: Path) -> None:
    with run_server(tmp_path, "--graceful-timeout", "1", "--body-timeout", "60") as live:
        # A prediction whose body never finishes: it is still running when the graceful timeout ends.
        with open_request(live, predict_head(1000), b"\x89PNG") as sock:
            sock.settimeout(60)
            wait_for(live, "digitrec_predict_inflight", 1)
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
