"""The serve tests' real parts: a ``digitrec serve`` subprocess on a free loopback port.

The server serves the bundled default model, as ``digitrec serve`` does with no
``--run``; set ``DIGITREC_TEST_SERVE_RUN=DIR`` to serve a run directory instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from benchmarks.load_serve import ServeProcess, started_server
from PIL import Image

import digitrec

MODEL_ENV = "DIGITREC_TEST_SERVE_RUN"
SRC = Path(digitrec.__file__).resolve().parent.parent  # the code under test, for the subprocess
ROOT = Path(__file__).resolve().parents[2]  # the repository: benchmarks/ runs from here
Server = ServeProcess  # a started server: port, proc, log_path, url, log(), request()


def model_args() -> list[str]:
    run = os.environ.get(MODEL_ENV)
    return ["--run", run] if run else []


def load_test_recognizer() -> Any:
    """The same model the server serves, in this process."""
    from digitrec.recognition import Recognizer

    run = os.environ.get(MODEL_ENV)
    return Recognizer.from_run(run) if run else Recognizer.default()


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
    args = [*model_args(), *extra]
    with started_server(args, folder, env=server_env(), ready_timeout=ready_timeout) as server:
        yield server


def run_benchmark(command: list[str], out: Path) -> tuple[dict[str, Any], str]:
    """``python COMMAND --out OUT`` from the repository's root, with the server's environment: (the
    JSON it wrote to OUT, its stdout). Fails unless it exits 0."""
    result = subprocess.run(
        [sys.executable, *command, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text()), result.stdout


def canonical(sample: str) -> str:
    """A /metrics sample's name with its labels in sorted order: ``a{route="/",le="1"}`` ->
    ``a{le="1",route="/"}`` (prometheus_client chooses its own order; Prometheus ignores it)."""
    name, brace, labels = sample.partition("{")
    if not brace:
        return name
    pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
    return name + "{" + ",".join(f'{key}="{value}"' for key, value in sorted(pairs)) + "}"


class Samples(dict[str, float]):
    """/metrics samples by canonical name; looked up by a name with its labels in any order."""

    def __getitem__(self, key: str) -> float:
        return super().__getitem__(canonical(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(canonical(key), default)


def parse_metrics(text: str) -> Samples:
    samples = Samples()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[canonical(name)] = float(value)
    return samples


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
