"""digitrec's benchmark: training and inference speed against references, side by side.

    python -m benchmarks                 # full run (about 3 minutes on 2 idle cores)
    python -m benchmarks --quick         # tiny sizes: a smoke run that keeps the code from rotting
    python -m benchmarks --device cuda   # the same on a GPU, plus bf16 and a count of host syncs
    python -m benchmarks --readme docs/speed.md   # and write the table into docs/speed.md

Everything runs in this one process, interleaved (A B C, A B C, ...) with at least 3 repetitions,
so that a noisy, shared machine affects every contender alike; the table quotes medians and the
ratios of medians. Results go to ``benchmarks/results/bench-<timestamp>.json`` (or ``--out``).

Contenders for each tutorial recipe (one epoch each, same model, same batch of 100, same SGD):
  digitrec     ``digitrec.training.train`` (what ``digitrec train`` runs)
  bare loop    benchmarks/bare_loop.py: in-memory tensors, the plainest eager loop
  DataLoader   benchmarks/dataloader_loop.py: torchvision-style MNIST + ToTensor + DataLoader
On CUDA, digitrec without CUDA graphs (``--no-cuda-graphs``) and with ``--precision bf16`` join
them, and the JSON records how many times each
digitrec run made the host wait for the GPU (``torch.cuda.set_sync_debug_mode``): a handful per
epoch (the shuffle, the epoch's metrics), never one per step.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks import bare_loop, dataloader_loop
from benchmarks.readme import replace_marked_block
from digitrec.config import recipe_config
from digitrec.data import Dataset, load_dataset
from digitrec.errors import DigitrecError
from digitrec.evaluation import score
from digitrec.fileio import write_json_atomic
from digitrec.training import train


def machine(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None
    return {
        "cpu": cpu,
        "gpu": gpu,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _subset(ds: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    return Dataset(ds.name, ds.train_images[:n_train], ds.train_labels[:n_train],
                   ds.test_images[:n_test], ds.test_labels[:n_test], ds.source)  # fmt: skip


def count_host_syncs(fn: Callable[[], Any], device: str) -> int | None:
    """Run ``fn``; on CUDA return the times it made the host wait for the GPU (None elsewhere)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bench_training(ds: Dataset, model: str, repeats: int, device: str) -> dict[str, Any]:
    """Seconds per epoch of each contender, interleaved."""
    recipe = f"tutorial-{model}"

    def digitrec_epoch(precision: str, cuda_graphs: bool = True) -> Callable[[], float]:
        config = recipe_config(recipe, epochs=1, device=device, precision=precision, cuda_graphs=cuda_graphs)
        return lambda: train(config, dataset=ds, save=False, log=None, progress=False).metrics[0][
            "epoch_seconds"
        ]

    contenders = {
        "digitrec": digitrec_epoch("fp32"),
        "bare loop": lambda: bare_loop.run(ds.train_images, ds.train_labels, model, epochs=1,
                                           device=device)[0],
        "DataLoader": lambda: dataloader_loop.run(ds.train_images, ds.train_labels, model, epochs=1,
                                                  device=device)[0],
    }  # fmt: skip
    if torch.device(device).type == "cuda":
        contenders["digitrec eager"] = digitrec_epoch("fp32", cuda_graphs=False)  # without CUDA graphs
        contenders["digitrec bf16"] = digitrec_epoch("bf16")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(fn())
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "recipe": recipe,
        "seconds_per_epoch": times,
        "median": medians,
        "speedup_vs_bare": medians["bare loop"] / medians["digitrec"],
        "speedup_vs_dataloader": medians["DataLoader"] / medians["digitrec"],
    }
    syncs = count_host_syncs(contenders["digitrec"], device)
    if syncs is not None:
        result["host_syncs_per_epoch"] = syncs
        result["steps_per_epoch"] = -(-len(ds.train_images) // 100)
    return result


def bench_fast(ds: Dataset, seeds: list[int], epochs: int | None, device: str) -> dict[str, Any]:
    """Wall time of the whole ``fast`` recipe (model build to final accuracy) per seed."""
    rows = []
    for seed in seeds:
        config = recipe_config("fast", seed=seed, epochs=epochs, device=device)
        started = time.perf_counter()
        result = train(config, dataset=ds, save=False, log=None, progress=False)
        rows.append({"seed": seed, "seconds": time.perf_counter() - started,
                     "accuracy": result.metrics[-1]["val_accuracy"]})  # fmt: skip
    return {
        "runs": rows,
        "mean_accuracy": statistics.mean(r["accuracy"] for r in rows),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
    }


def bench_augmented_syncs(ds: Dataset, device: str) -> dict[str, Any]:
    """Host syncs of a short run of the ``best`` recipe (augmentation, EMA, AdamW, one-cycle) on CUDA."""
    small = _subset(ds, 12_800, 1000)
    config = recipe_config("best", epochs=1, device=device)
    syncs = count_host_syncs(lambda: train(config, dataset=small, save=False, log=None, progress=False),
                             device)  # fmt: skip
    return {"recipe": "best", "steps": -(-len(small.train_images) // config.batch_size), "host_syncs": syncs}


def bench_inference(ds: Dataset, repeats: int, single_calls: int, device: str) -> dict[str, Any]:
    """LeNet throughput over the test set, and the Recognizer's latency for one preprocessed image."""
    torch.manual_seed(0)
    model = train(recipe_config("tutorial-lenet", epochs=1, device=device), dataset=_subset(ds, 2000, None),
                  save=False, log=None, progress=False).model  # fmt: skip
    test_images = ds.test_images.to(device)
    score(model, test_images)  # warm-up: the first CUDA call loads kernels
    throughput = []
    for _ in range(repeats):
        started = time.perf_counter()
        score(model, test_images).sum().item()  # .item() waits for the GPU, if any
        throughput.append(len(test_images) / (time.perf_counter() - started))
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
    if torch.device(device).type == "cuda":
        cuda_recognizer = Recognizer.default(device)
        result["single_image"][f"torch on {device}"] = _latency_ms(cuda_recognizer, pixels, single_calls)
    from digitrec.export import export_onnx
    from digitrec.onnx_runtime import OnnxScorer
    from digitrec.runs import default_model_dir

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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/bench-<time>.json)")
    parser.add_argument(
        "--readme",
        help="also write the table into this Markdown file (docs/speed.md), between its "
        "<!-- benchmark-cpu:start --> and <!-- benchmark-cpu:end --> markers (benchmark-cuda for a GPU "
        "run) (default: only print)",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="print (and with --readme write) the table of a recorded run instead of running (default: run)",
    )
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    if args.readme and args.quick:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")

    if args.render:
        try:
            results = json.loads(Path(args.render).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            parser.error(f"--render {args.render}: cannot read a benchmark JSON ({exc})")
    else:
        results = run_benchmark(args.device, args.quick, args.repeats, args.seeds)
        out = Path(args.out) if args.out else Path("benchmarks/results") / f"bench-{_stamp(results)}.json"
        write_json_atomic(out, results)
    table = format_table(results)
    print(table)
    if not args.render:
        print(f"\nwrote {out}")
    if args.readme:
        if results["quick"]:
            parser.error(f"--readme: {args.render} is a --quick smoke run, not figures for the README")
        device_type = torch.device(results["machine"].get("device", "cpu")).type
        try:
            replace_marked_block(args.readme, f"benchmark-{device_type}", table)
        except DigitrecError as exc:
            parser.error(str(exc))
        print(f"updated {args.readme}")
    return 0


def _stamp(results: dict[str, Any]) -> str:
    return datetime.fromisoformat(results["date"]).strftime("%Y%m%d-%H%M%S")


def run_benchmark(device: str, quick: bool, repeats: int, seeds: int) -> dict[str, Any]:
    ds = load_dataset("mnist")
    if quick:
        ds = _subset(ds, 600, 500)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "machine": machine(device),
                               "quick": quick}  # fmt: skip
    results["training"] = [bench_training(ds, model, repeats, device) for model in ("mlp", "lenet")]
    results["fast"] = bench_fast(ds, list(range(seeds)), 1 if quick else None, device)
    # The yardstick: the whole fast recipe against one epoch of the bare loop's tutorial LeNet.
    bare_lenet_epoch = results["training"][1]["median"]["bare loop"]
    results["fast"]["vs_bare_lenet_epoch"] = results["fast"]["median_seconds"] / bare_lenet_epoch
    if torch.device(device).type == "cuda":
        results["augmented_run"] = bench_augmented_syncs(ds, device)
    results["inference"] = bench_inference(ds, repeats, 50 if quick else 1000, device)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def format_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    where = f"{m['cpu']}, {m['torch_threads']} threads" + (f"; GPU {m['gpu']}" if m.get("gpu") else "")
    contenders = list(results["training"][0]["median"])
    extra = [name for name in contenders if name not in ("digitrec", "bare loop", "DataLoader")]
    lines = [
        f"digitrec benchmark, {results['date']}: {where}, torch {m['torch']}, device {m.get('device', 'cpu')}"
        + (" (QUICK smoke sizes: not representative)" if results["quick"] else ""),
        "",
        "| recipe | "
        + " | ".join(f"{name} s/epoch" for name in contenders)
        + " | vs bare | vs DataLoader |"
        + "".join(f" {name} vs bare |" for name in extra),
        "|---|" + "---|" * (len(contenders) + 2 + len(extra)),
    ]
    for row in results["training"]:
        med = row["median"]
        lines.append(
            f"| {row['recipe']} | "
            + " | ".join(f"{med[name]:.2f}" for name in contenders)
            + f" | {row['speedup_vs_bare']:.2f}x | {row['speedup_vs_dataloader']:.2f}x |"
            + "".join(f" {med['bare loop'] / med[name]:.2f}x |" for name in extra)
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
        f"- fast recipe: mean accuracy {fast['mean_accuracy']:.4f}, median {fast['median_seconds']:.1f} s "
        f"per run, {fast['vs_bare_lenet_epoch']:.2f}x the bare loop's LeNet epoch ({per_seed})",
        f"- inference: LeNet {inference['images_per_second']:,.0f} images/s over the test set; one "
        f"preprocessed image through Recognizer.predict_pixels (bundled {inference['single_image_model']}): "
        f"{single}",
    ]
    syncs = [
        f"{row['recipe']} {row['host_syncs_per_epoch']} in {row['steps_per_epoch']} steps"
        for row in results["training"]
        if "host_syncs_per_epoch" in row
    ]
    if "augmented_run" in results:
        run = results["augmented_run"]
        syncs.append(f"{run['recipe']} (augmented) {run['host_syncs']} in {run['steps']} steps")
    if syncs:
        lines.append("- host syncs per digitrec epoch: " + "; ".join(syncs))
    lines.append(f"- peak resident memory: {results['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
