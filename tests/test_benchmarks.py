"""The benchmark runs end to end at a tiny size, so it never rots (no timing is asserted)."""

import json

from benchmarks.__main__ import main


def test_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--repeats", "1", "--seeds", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert {row["recipe"] for row in results["training"]} == {"tutorial-mlp", "tutorial-lenet"}
    for row in results["training"]:
        assert set(row["median"]) == {"digitrec", "bare loop", "DataLoader"}
        assert all(value > 0 for value in row["median"].values())
    assert results["inference"]["images_per_second"] > 0
    # both scoring backends (the dev install has onnxruntime), p50 <= p99
    assert set(results["inference"]["single_image"]) == {"torch", "onnxruntime"}
    for latency in results["inference"]["single_image"].values():
        assert 0 < latency["p50"] <= latency["p99"]
    assert results["fast"]["vs_bare_lenet_epoch"] > 0
    assert results["machine"]["torch"]
    assert "| tutorial-lenet |" in capsys.readouterr().out
