"""digitrec's benchmark: training and inference speed against references, side by side.

    python -m benchmarks                 # full run (about 3 minutes on 2 idle cores)
    python -m benchmarks --quick         # tiny sizes: a smoke run that keeps the code from rotting

Everything runs in this one process, interleaved (A B C, A B C, ...) with at least 3 repetitions,
so that a noisy, shared machine affects every contender alike; the table quotes medians and the
ratios of medians. Results go to ``benchmarks/results/bench-<timestamp>.json`` (or ``--out``).

Contenders for each tutorial recipe (one epoch each, same model, same batch of 100, same SGD):
  digitrec     ``digitrec.training.train`` (what ``digitrec train`` runs)
  bare loop    benchmarks/bare_loop.py: in-memory tensors, the plainest eager loop
  DataLoader   benchmarks/dataloader_loop.py: torchvision-style MNIST + ToTensor + DataLoader
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks import bare_loop, dataloader_loop
from digitrec.config import recipe_config
from digitrec.data import Dataset, load_dataset
from digitrec.errors import DigitrecError
from digitrec.evaluation import predict
from digitrec.fileio import write_json_atomic
from digitrec.training import train


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _subset(ds: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    return Dataset(ds.name, ds.train_images[:n_train], ds.train_labels[:n_train],
                   ds.test_images[:n_test], ds.test_labels[:n_test], ds.source)  # fmt: skip


def bench_training(ds: Dataset, model: str, repeats: int) -> dict[str, Any]:
    """Seconds per epoch of each contender, interleaved."""
    recipe = f"tutorial-{model}"
    contenders = {
        "digitrec": lambda: train(recipe_config(recipe, epochs=1), dataset=ds, save=False, log=None,
                                  progress=False).metrics[0]["epoch_seconds"],
        "bare loop": lambda: bare_loop.run(ds.train_images, ds.train_labels, model, epochs=1)[0],
        "DataLoader": lambda: dataloader_loop.run(ds.train_images, ds.train_labels, model, epochs=1)[0],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(fn())
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "recipe": recipe,
        "seconds_per_epoch": times,
        "median": medians,
        "speedup_vs_bare": medians["bare loop"] / medians["digitrec"],
        "speedup_vs_dataloader": medians["DataLoader"] / medians["digitrec"],
    }


def bench_fast(ds: Dataset, seeds: list[int], epochs: int | None) -> dict[str, Any]:
    """Wall time of the whole ``fast`` recipe (model build to final accuracy) per seed."""
    rows = []
    for seed in seeds:
        started = time.perf_counter()
        result = train(recipe_config("fast", seed=seed, epochs=epochs), dataset=ds, save=False, log=None,
                       progress=False)  # fmt: skip
        rows.append({"seed": seed, "seconds": time.perf_counter() - started,
                     "accuracy": result.metrics[-1]["val_accuracy"]})  # fmt: skip
    return {
        "runs": rows,
        "mean_accuracy": statistics.mean(r["accuracy"] for r in rows),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
    }


def bench_inference(ds: Dataset, repeats: int, single_calls: int) -> dict[str, Any]:
    """LeNet throughput over the test set, and the Recognizer's latency for one preprocessed image."""
    torch.manual_seed(0)
    model = train(recipe_config("tutorial-lenet", epochs=1), dataset=_subset(ds, 2000, None), save=False,
                  log=None, progress=False).model  # fmt: skip
    throughput = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(model, ds.test_images)
        throughput.append(len(ds.test_images) / (time.perf_counter() - started))
    # One preprocessed (28, 28) image through the Recognizer that predict and serve use, with each
    # scoring backend: torch (the default) and ONNX Runtime (``digitrec predict --onnx``, when installed).
    from digitrec.recognition import Recognizer

    recognizer = Recognizer.default()
    pixels = ds.test_images[0].numpy()
    result: dict[str, Any] = {
        "images_per_second": statistics.median(throughput),
        "single_image_model": recognizer.info().get("name"),
        "single_image": {"torch": _latency_ms(recognizer, pixels, single_calls)},
    }
    from digitrec.checkpoints import default_model_dir
    from digitrec.export import export_onnx
    from digitrec.onnx_runtime import OnnxScorer

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = export_onnx(default_model_dir(), Path(tmp) / "default.onnx")
            scorer = OnnxScorer(path)
        except DigitrecError:  # the onnx extra is not installed: torch figures only
            return result
        onnx_recognizer = Recognizer.from_scorer(scorer, {"name": result["single_image_model"]})
        result["single_image"]["onnxruntime"] = _latency_ms(onnx_recognizer, pixels, single_calls)
    return result


def _latency_ms(recognizer: Any, pixels: Any, calls: int) -> dict[str, float]:
    """p50 and p99 milliseconds of ``recognizer.predict_pixels(pixels)``, after a short warm-up."""
    for _ in range(min(20, calls)):
        recognizer.predict_pixels(pixels)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        recognizer.predict_pixels(pixels)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (default: off)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each contender (default: 3)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds for the fast recipe (default: 5)")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/bench-<time>.json)")
    args = parser.parse_args(argv)

    ds = load_dataset("mnist")
    if args.quick:
        ds = _subset(ds, 600, 500)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "machine": machine(),
                               "quick": args.quick}  # fmt: skip
    results["training"] = [bench_training(ds, model, args.repeats) for model in ("mlp", "lenet")]
    results["fast"] = bench_fast(ds, list(range(args.seeds)), 1 if args.quick else None)
    # The yardstick: the whole fast recipe against one epoch of the bare loop's tutorial LeNet.
    bare_lenet_epoch = results["training"][1]["median"]["bare loop"]
    results["fast"]["vs_bare_lenet_epoch"] = results["fast"]["median_seconds"] / bare_lenet_epoch
    results["inference"] = bench_inference(ds, args.repeats, 50 if args.quick else 1000)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out = Path(args.out) if args.out else Path("benchmarks/results") / f"bench-{started:%Y%m%d-%H%M%S}.json"
    write_json_atomic(out, results)
    print(format_table(results))
    print(f"\nwrote {out}")
    return 0


def format_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"digitrec benchmark, {results['date']}: {m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}"
        + (" (QUICK smoke sizes: not representative)" if results["quick"] else ""),
        "",
        "| recipe | digitrec s/epoch | bare loop s/epoch | DataLoader s/epoch | vs bare | vs DataLoader |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["training"]:
        med = row["median"]
        lines.append(
            f"| {row['recipe']} | {med['digitrec']:.2f} | {med['bare loop']:.2f} | {med['DataLoader']:.2f} "
            f"| {row['speedup_vs_bare']:.2f}x | {row['speedup_vs_dataloader']:.2f}x |"
        )
    fast = results["fast"]
    per_seed = ", ".join(f"{r['accuracy']:.4f} in {r['seconds']:.1f} s" for r in fast["runs"])
    inference = results["inference"]
    single = "; ".join(
        f"{backend} p50 {ms['p50']:.3f} ms, p99 {ms['p99']:.3f} ms"
        for backend, ms in inference["single_image"].items()
    )
    lines += [
        "",
        f"fast recipe: mean accuracy {fast['mean_accuracy']:.4f}, median {fast['median_seconds']:.1f} s "
        f"per run, {fast['vs_bare_lenet_epoch']:.2f}x the bare loop's LeNet epoch ({per_seed})",
        f"inference: LeNet {inference['images_per_second']:,.0f} images/s over the test set; one "
        f"preprocessed image through Recognizer.predict_pixels (bundled {inference['single_image_model']}): "
        f"{single}",
        f"peak resident memory: {results['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
