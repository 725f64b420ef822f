"""The load benchmark, run small: a separate client process, many concurrent valid requests, no errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Server, run_benchmark


@pytest.mark.slow  # a second process that loads MNIST, then 50 requests: several seconds
def test_load_benchmark_smoke(server: Server, tmp_path: Path) -> None:
    # Run as a script, by its path, as docs/speed.md shows.
    command = ["benchmarks/load_serve.py", "--url", server.url, "--requests", "50", "--concurrency", "8"]
    report, stdout = run_benchmark([*command, "--warmup", "2"], tmp_path / "load.json")
    assert report["ok"] == 50 and report["errors"] == 0 and report["status_counts"] == {"200": 50}
    assert report["image"]["width"] == 280 and report["image"]["png_bytes"] > 0
    # The same image every time, the same model: the same digit every time.
    assert report["digits_read"] == {str(report["image"]["label"]): 50}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert "p99" in stdout
