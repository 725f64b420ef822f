"""What an ensemble costs per image (``digitrec train --ensemble N``): the bundled architecture
(``cnn``) alone against N of it, scored member by member (``Ensemble``) and side by side in one
network (``fuse_ensemble``: grouped convolutions), in PyTorch and, when installed, ONNX
Runtime; one image at a time (``digitrec predict`` on one file, the server without company)
and batches of 64 (``predict`` on a folder). Calls alternate between the contenders, so a busy
machine slows all alike; medians and the ratio to the single model::

    python -m benchmarks.ensemble_cost [--members 3] [--threads 1] [--readme docs/handwriting.md]

Weights are random (the time does not depend on them); batch norms are folded as the
Recognizer folds them. Results go to ``benchmarks/results/ensemble-cost-<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from benchmarks.readme import publish
from digitrec.models import create_ensemble, fold_batch_norms, fuse_ensemble, prefer_channels_last

README_BLOCK = "ensemble-cost"
Scorer = Callable[[np.ndarray], Any]


def _torch_scorer(model: torch.nn.Module) -> Scorer:
    model = prefer_channels_last(fold_batch_norms(model)).eval()

    def score(batch: np.ndarray) -> Any:
        with torch.no_grad():
            return model(torch.from_numpy(batch))

    return score


def _onnx_scorer(model: torch.nn.Module, threads: int) -> Scorer | None:
    try:
        from digitrec.export import model_to_onnx
        from digitrec.onnx_runtime import import_onnxruntime

        ort = import_onnxruntime()
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    proto = model_to_onnx(model)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})


def contenders(members: int, threads: int) -> dict[str, Scorer]:
    torch.manual_seed(0)
    single = create_ensemble("cnn", 1).eval()
    ensemble = create_ensemble("cnn", members).eval()
    scorers = {
        "cnn alone, torch": _torch_scorer(single),
        f"{members} members one by one, torch": _torch_scorer(ensemble),
        f"{members} members side by side, torch": _torch_scorer(fuse_ensemble(ensemble)),
    }
    for name, model in (
        ("cnn alone, onnxruntime", single),
        (f"{members} members side by side, onnxruntime", fuse_ensemble(ensemble)),
    ):
        scorer = _onnx_scorer(model, threads)
        if scorer is not None:
            scorers[name] = scorer
    return scorers


def time_interleaved(scorers: dict[str, Scorer], batch: int, calls: int) -> dict[str, float]:
    """Median milliseconds per image for each scorer, the calls alternating between them."""
    images = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    for score in scorers.values():  # warm-up: allocations, ONNX Runtime's first run
        for _ in range(3):
            score(images)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(calls):
        for name, score in scorers.items():
            started = time.perf_counter()
            score(images)
            seconds[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) / batch for name, values in seconds.items()}


def run(members: int, threads: int, calls: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    scorers = contenders(members, threads)
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "members": members,
        "threads": threads,
        "calls": calls,
        "ms_per_image": {},
    }
    for batch in (1, 64):
        results["ms_per_image"][str(batch)] = time_interleaved(
            scorers, batch, calls if batch == 1 else calls // 4
        )
    return results


def format_table(results: dict[str, Any]) -> str:
    per_image = results["ms_per_image"]
    base = {batch: per_image[batch]["cnn alone, torch"] for batch in per_image}
    lines = [
        "| model (one thread)" if results["threads"] == 1 else f"| model ({results['threads']} threads)",
    ]
    lines[0] += " | one image: ms | ratio | batch of 64: ms per image | ratio |"
    lines.append("|---|---|---|---|---|")
    for name in per_image["1"]:
        one, many = per_image["1"][name], per_image["64"][name]
        lines.append(
            f"| {name} | {one:.2f} | {one / base['1']:.2f}x | {many:.2f} | {many / base['64']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=3, help="ensemble members (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default: 1)")
    parser.add_argument(
        "--calls", type=int, default=200, help="timed calls per contender at batch 1 (default: 200)"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 members, 8 calls (default: off)")
    parser.add_argument(
        "--out", help="JSON file to write (default: benchmarks/results/ensemble-cost-<time>.json)"
    )
    parser.add_argument(
        "--readme", help="also write the table between the ensemble-cost markers of this file"
    )
    args = parser.parse_args(argv)
    if args.quick and args.readme:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")
    members, calls = (2, 8) if args.quick else (args.members, args.calls)
    results = run(members, args.threads, calls)
    publish(results, README_BLOCK, format_table(results), out=args.out, readme=args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
