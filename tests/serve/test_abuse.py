"""The abuse benchmark, run quick: every probe of issue 17 replayed against a real server, none failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run_benchmark


@pytest.mark.slow  # a server, 64 storming clients, 200 idle connections, slowloris: about 20-40 s
def test_abuse_benchmark_quick_holds(tmp_path: Path) -> None:
    report, stdout = run_benchmark(["-m", "benchmarks.abuse", "--quick"], tmp_path / "abuse.json")
    probes = {p["probe"]: p for p in report["probes"]}
    assert set(probes) == {
        "method_flood", "bad_bodies", "retry_storm", "idle_connections", "slow_headers", "slow_uploads",
        "server_log",
    }  # fmt: skip
    assert report["failed"] == 0 and all(p["failed"] == 0 and p["held"] > 0 for p in probes.values())
    assert "| retry_storm |" in stdout
