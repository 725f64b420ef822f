"""The serve tests' real parts: a ``digitrec serve`` subprocess on a free loopback port.

The server serves the bundled default model, as ``digitrec serve`` does with no
``--run``; set ``DIGITREC_TEST_SERVE_RUN=DIR`` to serve a run directory instead.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import digitrec

MODEL_ENV = "DIGITREC_TEST_SERVE_RUN"
SRC = Path(digitrec.__file__).resolve().parent.parent  # the code under test, for the subprocess


def model_args() -> list[str]:
    run = os.environ.get(MODEL_ENV)
    return ["--run", run] if run else []


def load_test_recognizer() -> Any:
    """The same model the server serves, in this process."""
    from digitrec.recognition import Recognizer

    run = os.environ.get(MODEL_ENV)
    return Recognizer.from_run(run) if run else Recognizer.default()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def server_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{path}" if path else str(SRC),
        "OMP_NUM_THREADS": "1",
    }


@contextlib.contextmanager
def run_server(folder: Path, *extra: str, ready_timeout: float = 120.0) -> Iterator[Server]:
    """Start ``python -m digitrec serve`` on 127.0.0.1, wait for /readyz, SIGTERM it at the end."""
    port = free_port()
    command = [
        sys.executable, "-m", "digitrec", "serve", "--host", "127.0.0.1", "--port", str(port),
        *model_args(), *extra,
    ]  # fmt: skip
    log_path = folder / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env())
    server = Server(port, proc, log_path)
    try:
        wait_ready(server, ready_timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if server.request("GET", "/readyz")[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"server not ready within {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the default limits for the whole session."""
    with run_server(tmp_path_factory.mktemp("serve")) as live:
        yield live


@pytest.fixture(scope="session")
def recognizer() -> Any:
    return load_test_recognizer()


# ---- real images ---------------------------------------------------------------------------


def on_paper(digit: np.ndarray, size: int = 280) -> Image.Image:
    """A (28, 28) MNIST digit as a person's image: dark ink on white paper, size x size."""
    return Image.fromarray(255 - digit, mode="L").resize((size, size), Image.Resampling.BILINEAR)


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def number_on_paper(digits: list[np.ndarray], height: int = 200, gap: int = 40) -> Image.Image:
    """MNIST digits side by side, left to right, dark ink on white paper."""
    tiles = [255 - d for d in digits]
    side = height
    canvas = Image.new("L", (gap + len(tiles) * (side + gap), side + 2 * gap), 255)
    for i, tile in enumerate(tiles):
        image = Image.fromarray(tile, mode="L").resize((side, side), Image.Resampling.BILINEAR)
        canvas.paste(image, (gap + i * (side + gap), gap))
    return canvas
