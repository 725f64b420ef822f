"""The benchmark runs end to end at a tiny size, so it never rots (no timing is asserted)."""

import json

import pytest
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


def test_benchmark_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")  # CI machines have none; the GPU run is recorded in the README
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_the_table_shows_extra_contenders_and_host_syncs():
    """A CUDA run adds digitrec with bf16 and the host-sync counts; the table shows both."""
    from benchmarks.__main__ import format_table

    def row(recipe, seconds):
        median = {"digitrec": seconds, "bare loop": 2 * seconds, "DataLoader": 4 * seconds,
                  "digitrec bf16": seconds / 2}  # fmt: skip
        return {"recipe": recipe, "median": median, "speedup_vs_bare": 2.0, "speedup_vs_dataloader": 4.0,
                "host_syncs_per_epoch": 13, "steps_per_epoch": 600}  # fmt: skip

    results = {
        "date": "2026-11-26T00:00:00+00:00",
        "quick": False,
        "machine": {"cpu": "cpu", "gpu": "Some GPU", "device": "cuda", "torch_threads": 16, "torch": "2.x"},
        "training": [row("tutorial-mlp", 0.5), row("tutorial-lenet", 1.0)],
        "fast": {
            "runs": [{"seed": 0, "accuracy": 0.99, "seconds": 1.0}],
            "mean_accuracy": 0.99,
            "median_seconds": 1.0,
            "vs_bare_lenet_epoch": 0.5,
        },
        "augmented_run": {"recipe": "best", "steps": 100, "host_syncs": 7},
        "inference": {
            "images_per_second": 1e6,
            "single_image_model": "cnn",
            "single_image": {"torch": {"p50": 0.5, "p99": 0.9}},
        },
        "peak_rss_mib": 100,
    }
    table = format_table(results)
    assert "GPU Some GPU" in table and "device cuda" in table
    assert (
        "| recipe | digitrec s/epoch | bare loop s/epoch | DataLoader s/epoch | digitrec bf16 s/epoch |"
        in table
    )
    assert "| tutorial-lenet | 1.00 | 2.00 | 4.00 | 0.50 | 2.00x | 4.00x | 4.00x |" in table
    assert "tutorial-mlp 13 in 600 steps" in table and "best (augmented) 7 in 100 steps" in table


def test_render_writes_a_recorded_run_into_the_readme(tmp_path, capsys):
    """``--render JSON --readme FILE``: the table of a recorded run between the device's markers."""
    recorded = "benchmarks/recorded/bench-cuda-h200-20261126.json"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmark-cuda:start -->\nold\n<!-- benchmark-cuda:end -->\noutro\n")
    assert main(["--render", recorded, "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- benchmark-cuda:start -->\ndigitrec benchmark, 2026-11-26")
    assert "GPU NVIDIA H200" in text and "| tutorial-lenet |" in text and "old" not in text
    assert text.endswith("<!-- benchmark-cuda:end -->\noutro\n")
    # a README without the markers is refused with one line, and left as it was
    bare = tmp_path / "OTHER.md"
    bare.write_text("no markers\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--render", recorded, "--readme", str(bare)])
    assert exit_info.value.code == 2
    assert "markers <!-- benchmark-cuda:start -->" in capsys.readouterr().err
    assert bare.read_text() == "no markers\n"


def test_normalize_and_predict_benchmarks_run_and_make_their_tables(seven):
    """benchmarks/normalize.py and benchmarks/predict_throughput.py at the smallest size: the
    side-by-side timing, the comparison and the tables (no timing is asserted)."""
    from benchmarks import normalize, predict_throughput

    from digitrec.recognition import Recognizer

    png = normalize.drawing(255 - seven[::10, ::10])
    speed = normalize.time_side_by_side(lambda: png, 1)
    assert speed["old_ms"] > 0 and speed["new_ms"] > 0 and speed["mean_pixel_difference"] is not None
    agreement = normalize.compare(Recognizer.default(), [(png, 7), (png, 7)])
    assert agreement["total"] == 2 and agreement["agreement"] == 1.0
    assert agreement["read_differently"] == agreement["only_new_right"] == agreement["only_old_right"] == 0
    results = {
        "date": "2026-12-01T00:00:00+00:00",
        "machine": {
            "processor": "x86_64",
            "opencv": "4",
            "load_average": [1, 1, 1],
            "load_average_end": [1, 1, 1],
        },
        "speed": {"drawing": speed},
        "agreement": {"suite": agreement},
    }
    table = normalize.format_table(results)
    assert "| drawing |" in table and "| suite | 2 | 100.00% | 0: 0 / 0 |" in table
    row = {"files": 10, "seconds": 1.0, "images_per_second": 10.0, "vs_today": 1.0}
    rows = {
        name: dict(row) for name in ("today", "now --jobs 1", predict_throughput.ON_TORCH, "now --jobs 2")
    }
    table = predict_throughput.format_table(
        {
            "date": "d",
            "machine": {"processor": "p", "cores": 2, "load_average": [1, 1, 1]},
            "bytes_per_file": 100,
            "rows": rows,
            "agreement_with_today": 1.0,
            "jobs_1_equals_jobs_2": True,
        }
    )
    assert "| now --jobs 2 | 10 | 1.0 | 10 | 1.0x |" in table
    assert "| now --jobs 2, torch (--run) | 10 |" in table


def test_the_ensemble_cost_benchmark_runs_and_makes_its_table(tmp_path, capsys):
    """benchmarks/ensemble_cost.py at the smallest size: every contender timed at both batch
    sizes, the single model the reference of the ratios (no timing is asserted)."""
    from benchmarks import ensemble_cost

    out = tmp_path / "cost.json"
    assert ensemble_cost.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["ms_per_image"]) == {"1", "64"}
    names = set(results["ms_per_image"]["1"])
    assert {"cnn alone, torch", "2 members one by one, torch", "2 members side by side, torch"} <= names
    assert "2 members side by side, onnxruntime" in names  # the dev install has onnxruntime
    assert all(ms > 0 for batch in results["ms_per_image"].values() for ms in batch.values())
    assert "| cnn alone, torch | " in capsys.readouterr().out
    table = ensemble_cost.format_table(results)
    assert table.splitlines()[2].count("| 1.00x |") == 2  # the reference row
