"""The HTTP API of ``digitrec serve`` against a real server subprocess and the real model."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ..recognition_support import first_unsure_digit
from .conftest import (
    Samples,
    Server,
    encode,
    model_args,
    number_on_paper,
    on_paper,
    parse_metrics,
    run_server,
    server_env,
    started_server,
)

PNG = {"Content-Type": "image/png"}
JSON = {"Content-Type": "application/json"}


def post(server: Server, body: bytes, headers: dict[str, str], query: str = "") -> tuple[int, dict[str, Any]]:
    status, _, payload = server.request("POST", f"/v1/predict{query}", body, headers)
    return status, json.loads(payload)


def first_of_label(mnist: Any, label: int) -> np.ndarray:
    index = int((mnist.test_labels == label).nonzero()[0, 0])
    return mnist.test_images[index].numpy()


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))))


# ---- the happy paths ---------------------------------------------------------------------------


def test_health_ready_models_openapi(server: Server, recognizer: Any) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, _, body = server.request("GET", "/v1/models")
    assert status == 200
    (model,) = json.loads(body)["models"]
    assert model["name"] == recognizer.info()["name"]
    assert model["parameters"] == recognizer.info()["parameters"]
    status, _, body = server.request("GET", "/openapi.json")
    spec = json.loads(body)
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "image/webp", "multipart/form-data", "application/json"} <= set(
        content
    )
    assert "/metrics" in spec["paths"] and "/healthz" in spec["paths"]


def test_png_predictions_match_the_recognizer_and_the_labels(
    server: Server, recognizer: Any, mnist: Any
) -> None:
    correct = 0
    for index in range(20):
        digit = mnist.test_images[index].numpy()
        body = encode(on_paper(digit))
        status, got = post(server, body, PNG)
        assert status == 200, got
        want = recognizer.predict(body)
        assert got["digit"] == want.digit
        assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
        assert len(got["probabilities"]) == 10 and sum(got["probabilities"]) == pytest.approx(1.0)
        assert got["confidence"] == pytest.approx(max(got["probabilities"]))
        assert "number" not in got and "input_image" not in got
        correct += got["digit"] == int(mnist.test_labels[index])
    assert correct >= 18, f"{correct}/20 MNIST test digits read right"


def test_an_unsure_digit_gets_the_second_look_unless_the_server_is_told_not_to(
    server: Server, recognizer: Any, mnist: Any, tmp_path: Any
) -> None:
    images = mnist.test_images[:3000].numpy()  # (3000, 28, 28) uint8
    digit = images[first_unsure_digit(recognizer, images)]
    body = json.dumps({"pixels": digit.tolist()}).encode()
    looked = recognizer.predict_pixels(digit)
    recognizer.second_look = False
    try:
        once = recognizer.predict_pixels(digit)
    finally:
        recognizer.second_look = True
    assert not np.allclose(looked.probabilities, once.probabilities, atol=1e-4)
    status, got = post(server, body, JSON)
    assert status == 200 and got["probabilities"] == pytest.approx(looked.probabilities, abs=1e-5)
    status, _, models = server.request("GET", "/v1/models")
    assert json.loads(models)["models"][0]["second_look"] is True
    with run_server(tmp_path, "--no-second-look") as live:
        status, got = post(live, body, JSON)
        assert status == 200 and got["probabilities"] == pytest.approx(once.probabilities, abs=1e-5)
        status, _, models = live.request("GET", "/v1/models")
        assert json.loads(models)["models"][0]["second_look"] is False


def test_jpeg_webp_and_multipart_give_the_same_answer(server: Server, mnist: Any) -> None:
    image = on_paper(first_of_label(mnist, 3))
    _, png = post(server, encode(image), PNG)
    assert png["digit"] == 3
    for fmt, media in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        status, got = post(server, encode(image, fmt, quality=95), {"Content-Type": media})
        assert status == 200 and got["digit"] == 3, (fmt, got)
    boundary = "digitrec-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="three.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + encode(image)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, got = post(server, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and got == png


def test_json_pixels_use_predict_pixels(server: Server, recognizer: Any, mnist: Any) -> None:
    digit = mnist.test_images[1].numpy()
    body = json.dumps({"pixels": digit.tolist()}).encode()
    status, got = post(server, body, {"Content-Type": "application/json"}, "?include_input=true")
    assert status == 200, got
    want = recognizer.predict_pixels(digit)
    assert got["digit"] == want.digit == int(mnist.test_labels[1])
    assert got["probabilities"] == pytest.approx(want.probabilities, abs=1e-5)
    # predict_pixels does no normalization: the model saw exactly these pixels.
    assert np.array_equal(decode_data_url(got["input_image"]), digit)
    # Floats are rounded; an all-black grid is "no digit found".
    status, blank = post(
        server, json.dumps({"pixels": [[0.2] * 28] * 28}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200 and blank["digit"] is None and blank["confidence"] == 0.0


def test_input_image_is_what_the_model_saw(server: Server, recognizer: Any, mnist: Any) -> None:
    body = encode(on_paper(mnist.test_images[2].numpy(), size=400))
    status, got = post(server, body, PNG, "?include_input=true")
    assert status == 200
    seen = decode_data_url(got["input_image"])
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    assert np.array_equal(seen, recognizer.predict(body).input_image)


def test_min_confidence_rejects(server: Server, mnist: Any) -> None:
    body = encode(on_paper(mnist.test_images[0].numpy()))
    _, sure = post(server, body, PNG)
    status, got = post(server, body, PNG, "?min_confidence=1")
    assert status == 200
    if sure["confidence"] < 1.0:
        assert got["digit"] is None and got["confidence"] == pytest.approx(sure["confidence"])
    status, got = post(server, body, PNG, "?min_confidence=0")
    assert got["digit"] == sure["digit"]


def test_a_letter_is_rejected_with_the_reason(server: Server, recognizer: Any, mnist: Any) -> None:
    from digitrec import synthetic

    rng = np.random.default_rng(4)
    fonts = synthetic.letter_fonts(held_out=True)
    inks = [synthetic.letter_ink(c, rng, fonts, ()) for c in "AKWMRxyz"]
    letters = [synthetic.to_paper(ink, rng, stretch=0, size=280, low_resolution=0) for ink in inks]
    answers = [post(server, encode(letter), PNG) for letter in letters]
    assert all(status == 200 for status, _ in answers)
    expected = [p.rejected for p in recognizer.predict_batch(letters)]  # the server is the Recognizer
    assert [got["rejected"] for _, got in answers] == expected
    assert sum(r == "not_a_digit" for r in expected) >= 6
    for _, got in answers:
        assert (got["digit"] is None) == (got["rejected"] is not None)
        assert len(got["probabilities"]) == 10
    _, digit = post(server, encode(on_paper(mnist.test_images[0].numpy())), PNG)
    assert digit["digit"] == 7 and digit["rejected"] is None
    _, blank = post(server, encode(Image.new("L", (50, 50), 255)), PNG)
    assert blank["digit"] is None and blank["rejected"] == "blank"
    # A row of digits sent without multi=true: the answer says how many digits it seems to hold.
    row = number_on_paper([mnist.test_images[i].numpy() for i in (0, 1, 2)])
    _, several = post(server, encode(row), PNG)
    assert several["several_digits"] == 3
    assert "several_digits" not in digit


def test_multi_reads_a_number(server: Server, recognizer: Any, mnist: Any) -> None:
    labels = [4, 0, 7]
    body = encode(number_on_paper([first_of_label(mnist, d) for d in labels]))
    status, got = post(server, body, PNG, "?multi=true&include_input=true")
    assert status == 200, got
    want = recognizer.predict(body, multi=True)
    assert got["number"] == want.number == "407"
    assert [d["digit"] for d in got["digits"]] == labels
    lefts = [d["bbox"][0] for d in got["digits"]]
    assert lefts == sorted(lefts)
    assert got["digit"] is None  # three digits: no single digit
    assert len(got["input_images"]) == 3
    for url, pixels in zip(got["input_images"], want.input_images, strict=True):
        assert np.array_equal(decode_data_url(url), pixels)
    # A blank page has no number.
    status, blank = post(server, encode(Image.new("L", (300, 100), 255)), PNG, "?multi=true")
    assert status == 200 and blank["number"] is None and blank["digits"] == []


# ---- bad input: 4xx with {"error": ...}, never 500 ---------------------------------------------


def bomb_png() -> bytes:
    """A 100-megapixel 1-bit PNG: a few KB on the wire, 100 MB+ once decoded."""
    return encode(Image.new("1", (10_000, 10_000)), optimize=False)


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"\x89PNG", {"Content-Type": "text/plain"}, 415, "unsupported content type"),
        (b"\x89PNG", {}, 415, "unsupported content type"),
        (b"", PNG, 400, "empty"),
        (b"not an image at all", PNG, 400, "image"),
        (b"GIF89a" + b"\x00" * 40, {"Content-Type": "image/gif"}, 400, "image"),
        (b'{"pixels": [[1, 2]', JSON, 400, "malformed JSON"),
        (b"[" * 100_000, JSON, 400, "malformed JSON"),
        (b'{"pixels": [[0] * 28]}', JSON, 400, "malformed JSON"),
        (b'{"pixels": [[0]]}', JSON, 422, "28 rows"),
        (b'{"image": []}', JSON, 422, "pixels"),
        (b"[1, 2, 3]", JSON, 422, "pixels"),
        (json.dumps({"pixels": [[300] * 28] * 28}).encode(), JSON, 422, "0-255"),
        (json.dumps({"pixels": [[True] * 28] * 28}).encode(), JSON, 422, "number"),
        (json.dumps({"pixels": [[0] * 27] * 28}).encode(), JSON, 422, "28 numbers"),
        (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhi\r\n--x--\r\n",
         {"Content-Type": "multipart/form-data; boundary=x"}, 422, "field named 'file'"),
        (b"garbage", {"Content-Type": "multipart/form-data"}, 400, ""),
    ],
)  # fmt: skip
def test_bad_input_is_a_json_4xx(
    server: Server, body: bytes, headers: dict[str, str], status: int, words: str
) -> None:
    got_status, got_headers, payload = server.request("POST", "/v1/predict", body, headers)
    assert got_status == status, payload
    assert got_headers["content-type"] == "application/json"
    error = json.loads(payload)
    assert list(error) == ["error"] and words in error["error"]


def test_truncated_image_and_bombs_are_400(server: Server, mnist: Any) -> None:
    png = encode(on_paper(mnist.test_images[0].numpy()))
    status, got = post(server, png[: len(png) // 2], PNG)
    assert status == 400 and "error" in got
    status, got = post(server, bomb_png(), PNG)
    assert status == 400 and re.search(r"bomb|too large", got["error"]), got
    status, got = post(server, encode(Image.new("L", (1, 10_000), 255)), PNG)
    assert status == 400 and "dimensions" in got["error"], got
    assert server.request("GET", "/healthz")[0] == 200  # and the server is still up


def test_bad_parameters_routes_and_methods(server: Server) -> None:
    for query in ("?min_confidence=2", "?min_confidence=nan", "?multi=maybe"):
        status, got = post(server, b"x", PNG, query)
        assert status == 422 and list(got) == ["error"], (query, got)
    status, headers, body = server.request("GET", "/no/such/page")
    assert status == 404 and json.loads(body) == {"error": "Not Found"}
    status, headers, body = server.request("GET", "/v1/predict")
    assert status == 405 and "error" in json.loads(body) and "POST" in headers["allow"]
    # Swagger UI and ReDoc would load scripts from a CDN: they are off.
    assert server.request("GET", "/docs")[0] == 404


# ---- metrics and the event loop ------------------------------------------------------------------


def scrape(server: Server) -> Samples:
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return parse_metrics(body.decode())


def test_metrics_count_requests_latency_and_errors(server: Server, mnist: Any) -> None:
    ok = 'digitrec_http_requests_total{route="/v1/predict",method="POST",status="200"}'
    unsupported = 'digitrec_http_requests_total{route="/v1/predict",method="POST",status="415"}'
    kind = 'digitrec_http_errors_total{route="/v1/predict",kind="unsupported_media_type"}'
    count = 'digitrec_http_request_duration_seconds_count{route="/v1/predict"}'
    before = scrape(server)
    body = encode(on_paper(mnist.test_images[0].numpy()))
    for _ in range(3):
        assert post(server, body, PNG)[0] == 200
    assert post(server, body, {"Content-Type": "text/plain"})[0] == 415
    after = scrape(server)
    assert after[ok] - before.get(ok, 0) == 3
    assert after[unsupported] - before.get(unsupported, 0) == 1
    assert after[kind] - before.get(kind, 0) == 1
    assert after[count] - before.get(count, 0) == 4
    inf = 'digitrec_http_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}'
    assert after[inf] == after[count]
    assert after["digitrec_model_ready"] == 1


def test_healthz_stays_fast_while_predictions_run(server: Server, mnist: Any) -> None:
    # Six clients keep both inference threads busy and requests queued. If inference ran on
    # the event loop, /healthz would wait behind the queue and be as slow as a prediction.
    body = encode(on_paper(mnist.test_images[0].numpy()))
    stop = threading.Event()
    predict_times: list[float] = []

    def hammer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while not stop.is_set():
            start = time.perf_counter()
            conn.request("POST", "/v1/predict", body=body, headers=PNG)
            response = conn.getresponse()
            response.read()
            if response.status == 200:  # 503 (busy) is allowed here; it is not what is timed
                predict_times.append(time.perf_counter() - start)
        conn.close()

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for worker in workers:
        worker.start()
    health_times = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        deadline = time.monotonic() + 60
        while (len(health_times) < 20 or len(predict_times) < 12) and time.monotonic() < deadline:
            start = time.perf_counter()
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
            health_times.append(time.perf_counter() - start)
            time.sleep(0.02)
        conn.close()
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert len(predict_times) >= 12
    assert statistics.median(health_times) < 0.5 * statistics.median(predict_times), (
        statistics.median(health_times),
        statistics.median(predict_times),
    )


# ---- limits: body cap, admission cap, body timeout -----------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with run_server(
        tmp_path_factory.mktemp("serve-limits"),
        "--max-inflight",
        "1",
        "--max-body",
        "100000",
        "--body-timeout",
        "4",
    ) as live:
        yield live


def open_request(server: Server, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def predict_head(length: int | None, media: str = "image/png") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\n{framing}\r\n\r\n"


def test_declared_body_too_large_is_413_before_the_body_is_sent(limited: Server) -> None:
    sock = open_request(limited, predict_head(5_000_000))  # headers only, not one body byte
    with sock:
        status, _, body = read_response(sock)
    assert status == 413 and "too large" in json.loads(body)["error"]


def test_streamed_body_too_large_is_413(limited: Server) -> None:
    sock = open_request(limited, predict_head(None))
    with sock:
        chunk = b"\x00" * 16384
        try:
            for _ in range(10):  # 160 KB > the 100 KB cap, no Content-Length to check up front
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the client has sent everything
        status, _, body = read_response(sock)
    assert status == 413 and "too large" in json.loads(body)["error"]


def wait_gauge(server: Server, name: str, value: float) -> None:
    deadline = time.monotonic() + 30  # generous: the machine may be busy
    while scrape(server)[name] != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def burst(server: Server, body: bytes, clients: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``clients`` predictions sent at once, each on its own connection: their answers."""
    answers: list[tuple[int, dict[str, str], bytes]] = []
    barrier = threading.Barrier(clients)

    def send() -> None:
        barrier.wait()
        answers.append(server.request("POST", "/v1/predict", body, PNG))

    threads = [threading.Thread(target=send) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_admission_cap_answers_503_and_the_admitted_requests_complete(limited: Server, mnist: Any) -> None:
    # --max-inflight 1: of 8 complete requests sent at once, the one in inference holds the
    # only slot and the others arriving meanwhile get 503. Bursts until one overlaps (the
    # first almost always does); a request whose body is still coming is no part of this
    # (tests/serve/test_hardening.py).
    png = encode(on_paper(mnist.test_images[0].numpy(), size=1000))
    busy: list[tuple[dict[str, str], dict[str, Any]]] = []
    for _ in range(10):
        answers = burst(limited, png, 8)
        assert len(answers) == 8 and {status for status, _, _ in answers} <= {200, 503}
        for status, headers, body in answers:
            if status == 200:
                assert json.loads(body)["digit"] == int(mnist.test_labels[0])
            else:
                busy.append((headers, json.loads(body)))
        if busy:
            break
    assert busy, "no request of 10 bursts of 8 found the only slot taken"
    for headers, error in busy:
        assert headers["retry-after"] == "1" and "requests in flight" in error["error"]
    wait_gauge(limited, "digitrec_predict_inflight", 0)
    assert limited.request("POST", "/v1/predict", png, PNG)[0] == 200


def test_a_stalled_body_gets_408(limited: Server, mnist: Any) -> None:
    png = encode(on_paper(mnist.test_images[0].numpy()))
    start = time.perf_counter()
    with open_request(limited, predict_head(len(png)), png[:50]) as sock:
        status, _, body = read_response(sock)
    assert status == 408 and "not received" in json.loads(body)["error"]
    assert 3.5 < time.perf_counter() - start < 15
    wait_gauge(limited, "digitrec_predict_uploads", 0)


@pytest.mark.parametrize(
    "path",
    [["--batch-window", "0", "--threads", "1"], ["--decode-processes", "1"]],
    ids=["threads", "batched"],
)
def test_no_inference_slot_in_time_is_503(tmp_path: Any, mnist: Any, path: list[str]) -> None:
    # One inference thread (or decode process) and a 1 ms wait for it: of 8 simultaneous
    # requests, the first is read while the others, admitted, find it busy and are answered 503.
    png = encode(on_paper(mnist.test_images[0].numpy(), size=1000))
    with run_server(tmp_path, *path, "--queue-timeout", "0.001") as live:
        answers: list[tuple[int, dict[str, Any]]] = []
        start = threading.Barrier(8)

        def send() -> None:
            start.wait()
            answers.append(post(live, png, PNG))

        clients = [threading.Thread(target=send) for _ in range(8)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=120)
        statuses = sorted(status for status, _ in answers)
        assert len(statuses) == 8 and set(statuses) == {200, 503}, statuses
        busy = [got for status, got in answers if status == 503]
        assert all("no inference slot" in got["error"] for got in busy)
        assert scrape(live)['digitrec_http_errors_total{route="/v1/predict",kind="overloaded"}'] == len(busy)


# ---- lifecycle ---------------------------------------------------------------------------------


def test_sigterm_finishes_the_request_in_flight_then_exits_cleanly(tmp_path: Any, mnist: Any) -> None:
    png = encode(on_paper(mnist.test_images[0].numpy()))
    with run_server(tmp_path) as live:
        sock = open_request(live, predict_head(len(png)), png[:100])
        with sock:
            wait_gauge(live, "digitrec_predict_uploads", 1)
            live.proc.send_signal(signal.SIGTERM)
            # The listening socket closes: no new connections while the old request finishes.
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", live.port), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                time.sleep(0.05)
            assert live.proc.poll() is None  # still running: waiting for the request in flight
            sock.sendall(png[100:])
            status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["digit"] == int(mnist.test_labels[0])
        assert live.proc.wait(timeout=30) == 0, live.log()
        assert "Traceback" not in live.log()


def test_bad_run_directory_is_a_one_line_error(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digitrec", "serve", "--run", str(tmp_path / "missing"), "--port", "0"],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "run directory not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["port in use", "address not ours"])
def test_a_port_or_address_it_cannot_listen_on_is_a_one_line_error(case: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = "127.0.0.1", taken.getsockname()[1]
        if case == "address not ours":
            host = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never a local address
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "digitrec", "serve", "--host", host, "--port", str(port)],
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    expected = "the port is in use" if case == "port in use" else "not an address of this machine"
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"cannot listen on {host}:{port}: {expected}" in result.stderr
    # Said before the model loads and the decode processes start.
    assert "Application startup" not in result.stdout + result.stderr
    assert time.monotonic() - started < 60


def _ipv6_loopback_port() -> int | None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            return int(probe.getsockname()[1])
    except OSError:
        return None


@pytest.mark.parametrize("case", ["ipv6", "port 0"])
def test_the_start_line_names_an_address_a_browser_can_open(case: str) -> None:
    """ "open http://::1:8000/" is no URL (RFC 3986 wants [::1]); with --port 0 the system picks
    the port when uvicorn binds, so the line sends the reader to uvicorn's, not to ":0"."""
    if case == "ipv6":
        port = _ipv6_loopback_port()
        if port is None:
            pytest.skip("no IPv6 loopback on this machine")
        host, expected = "::1", f"; open http://[::1]:{port}/"
    else:
        host, port, expected = "127.0.0.1", 0, "; a free port, which uvicorn names below"
    command = [sys.executable, "-m", "digitrec", "serve", "--host", host, "--port", str(port)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=server_env()
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the model is loaded, before uvicorn starts
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert first.startswith("digitrec serve: model ") and first.rstrip().endswith(expected), first


def test_the_page_and_its_assets_are_served_offline(server: Server) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    html = body.decode()
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links, "the page links no assets"
    for link in links:
        assert link.startswith(("/", "#")), f"external link {link}"
        if link.startswith("/static/"):
            status, _, asset = server.request("GET", link)
            assert status == 200 and asset
            # The one URL allowed is the SVG namespace, a name that is never fetched.
            text = asset.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")
            assert not re.search(rb"https?://|//cdn|@import|url\(", text), link


@pytest.mark.parametrize("folder", ["missing", "another app's"])
def test_an_inherited_prometheus_multiproc_dir_is_not_used(tmp_path: Any, folder: str) -> None:
    # Deployments of other apps set PROMETHEUS_MULTIPROC_DIR in the shell; one server process
    # keeps its own metrics in memory, neither failing on a missing folder nor writing into one.
    others = tmp_path / "other-app-metrics"
    if folder != "missing":
        others.mkdir()
        (others / "counter_123.db").write_bytes(b"")  # stands for another app's file; untouched
    env = {**server_env(), "PROMETHEUS_MULTIPROC_DIR": str(others)}
    with started_server(model_args(), tmp_path, env=env) as live:
        status, _, _ = live.request("GET", "/healthz")
        assert status == 200
        samples = scrape(live)
        assert samples['digitrec_http_requests_total{route="/healthz",method="GET",status="200"}'] == 1
        assert samples["digitrec_serve_processes"] == 1
    if folder == "missing":
        assert not others.exists()
    else:
        assert [path.name for path in others.iterdir()] == ["counter_123.db"]
    assert "Traceback" not in live.log()


@pytest.mark.slow
def test_several_worker_processes(tmp_path: Any, mnist: Any) -> None:
    png = encode(on_paper(mnist.test_images[0].numpy()))
    scratch = tmp_path / "tmp"  # the server's TMPDIR: its metrics folder goes there
    scratch.mkdir()
    env = {**server_env(), "TMPDIR": str(scratch)}
    ok = 'digitrec_http_requests_total{route="/v1/predict",method="POST",status="200"}'
    with started_server(["--workers", "2", *model_args()], tmp_path, env=env) as live:
        # /readyz answered once one worker was ready; the other may still be loading.
        deadline = time.monotonic() + 60
        while scrape(live)["digitrec_model_ready"] != 1 or scrape(live)["digitrec_serve_processes"] != 2:
            assert time.monotonic() < deadline, "the second worker never became ready"
            time.sleep(0.1)
        # Each request on a new connection: the kernel hands them to both workers.
        for _ in range(12):
            status, got = post(live, png, PNG)
            assert status == 200 and got["digit"] == int(mnist.test_labels[0])
        # Whichever worker answers /metrics counts both workers' requests (prometheus_client's
        # multi-process mode): without it, each would report only its own share of the 12.
        for _ in range(6):
            samples = scrape(live)
            assert samples[ok] == 12 and samples["digitrec_serve_processes"] == 2, samples
            assert samples["digitrec_model_ready"] == 1
        assert any(scratch.iterdir()), "no metrics folder while running"
    assert list(scratch.iterdir()) == [], "the metrics folder outlived the server"
