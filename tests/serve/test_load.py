"""The load benchmark, run small: a separate client process, many concurrent valid requests, no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server, server_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_serve.py"


@pytest.mark.slow  # a second process that loads MNIST, then 50 requests: several seconds
def test_load_benchmark_smoke(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--url", server.url, "--requests", "50", "--concurrency", "8"]
    result = subprocess.run(
        [*command, "--warmup", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["ok"] == 50 and report["errors"] == 0 and report["status_counts"] == {"200": 50}
    assert report["image"]["width"] == 280 and report["image"]["png_bytes"] > 0
    # The same image every time, the same model: the same digit every time.
    assert report["digits_read"] == {str(report["image"]["label"]): 50}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert "p99" in result.stdout
