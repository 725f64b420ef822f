"""``digitrec predict DIR --json`` on many image files (issue #18): images per second, today's code
path against the command with ``--jobs 1`` and ``--jobs 2``, in one run::

    PYTHONPATH=src python -m benchmarks.predict_throughput [--files 10000] [--quick] [--readme docs/speed.md]

The files: 280x280 drawings as the web page sends them (RGBA PNG, its ink on white), MNIST
test digits each placed and sized at random, written to a temporary folder first (untimed).

The contenders, each reading every file, their output going to a pipe:

- today: the code path before issue #18, in this process (so without the command's start-up,
  which favours it): per chunk of 64 files, ``load_image``, today's ``normalize_digit``
  (``benchmarks/normalize_reference.py``), one forward pass of the bundled model, a JSON line
  per file;
- now, ``--jobs 1`` and ``--jobs 2``: ``python -m digitrec predict DIR --json --jobs N`` as a
  subprocess, start-up, model loading and the workers' start included (the bundled model on
  onnxruntime, from its shipped ONNX copy);
- now on torch: ``--jobs 2 --run`` the bundled model's folder, the same weights on PyTorch.

With ``--today-files M`` today's path reads only the first M files (it is the slow one) and
its rate is quoted from those. The digits read by today's path and by ``--jobs 2`` are
compared file by file. Results go to ``benchmarks/results/predict-<time>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import normalize_reference as reference
from benchmarks import rendered_handwriting as rendered
from benchmarks.normalize import WEB_INK
from benchmarks.readme import publish
from digitrec.runs import default_model_dir

README_BLOCK = "predict-throughput"
# The bundled model's weights on PyTorch: predict's path before it scored the shipped ONNX copy.
ON_TORCH = "now --jobs 2, torch (--run)"
CHUNK = 64  # today's PREDICT_CHUNK


def write_drawings(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` drawings d00000.png ... in ``folder`` (10 sub-folders of a tenth each, as a
    real collection might be); the paths in the order ``digitrec predict`` reads them."""
    from digitrec.data import load_dataset

    dataset = load_dataset("mnist")
    digits = dataset.test_images.numpy()
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        ink = rendered._centred(digits[index % len(digits)], rng, 280, float(rng.uniform(0.4, 0.8)))
        image = rendered._paper(ink, (255.0, 255.0, 255.0), WEB_INK).convert("RGBA")
        path = folder / f"part{index % 10}" / f"d{index:05d}.png"
        path.parent.mkdir(exist_ok=True)
        image.save(path, "PNG")
        paths.append(path)
    return sorted(paths, key=lambda p: p.relative_to(folder).parts)


def today(paths: list[Path]) -> tuple[float, list[Any]]:
    """Seconds for today's code path over ``paths``, and the digits it read."""
    from digitrec.image_io import load_image
    from digitrec.recognition import Recognizer

    recognizer = Recognizer.default()
    sink = io.StringIO()
    digits: list[Any] = []
    started = time.perf_counter()
    for start in range(0, len(paths), CHUNK):
        names = [str(p) for p in paths[start : start + CHUNK]]
        inputs = [reference.normalize_digit(load_image(name)) for name in names]
        for name, prediction in zip(names, recognizer.predict_prepared(inputs), strict=True):
            sink.write(json.dumps({"file": name, **prediction.to_dict()}) + "\n")
            digits.append(prediction.digit)
    return time.perf_counter() - started, digits


def now(folder: Path, jobs: int, extra: tuple[str, ...] = ()) -> tuple[float, list[Any]]:
    """Seconds for ``digitrec predict FOLDER --json --jobs N [extra]`` (a subprocess), and the digits read."""
    command = [
        sys.executable,
        "-m",
        "digitrec",
        "predict",
        str(folder),
        "--json",
        "--jobs",
        str(jobs),
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, [json.loads(line)["digit"] for line in done.stdout.splitlines()]


def run(files: int, today_files: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            # The machine is shared: its load (1, 5, 15 min) when the run started.
            "load_average": os.getloadavg(),
        },
        "rows": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_drawings(folder, files)
        size = sum(p.stat().st_size for p in paths)
        out["bytes_per_file"] = round(size / files)
        rows = out["rows"]
        reads: dict[str, list[Any]] = {}
        for jobs in (1, 2):
            seconds, reads[f"now --jobs {jobs}"] = now(folder, jobs)
            rows[f"now --jobs {jobs}"] = {"files": files, "seconds": round(seconds, 2)}
        # The same weights on PyTorch (what --run gives): the gain of the shipped ONNX copy.
        seconds, reads[ON_TORCH] = now(folder, 2, ("--run", str(default_model_dir())))
        rows[ON_TORCH] = {"files": files, "seconds": round(seconds, 2)}
        seconds, reads["today"] = today(paths[:today_files])
        rows["today"] = {"files": today_files, "seconds": round(seconds, 2)}
    for row in rows.values():
        row["images_per_second"] = round(row["files"] / row["seconds"], 1)
    base = rows["today"]["images_per_second"]
    for row in rows.values():
        row["vs_today"] = round(row["images_per_second"] / base, 2)
    compared = reads["now --jobs 2"][:today_files]
    out["agreement_with_today"] = round(
        sum(a == b for a, b in zip(reads["today"], compared, strict=True)) / today_files, 4
    )
    out["jobs_1_equals_jobs_2"] = reads["now --jobs 1"] == reads["now --jobs 2"] == reads[ON_TORCH]
    return out


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"predict throughput, {results['date']}: {results['machine']['processor']}, "
        f"{results['machine']['cores']} cores, load average {results['machine']['load_average'][0]:.1f} "
        f"at the start; 280x280 RGBA PNG drawings, "
        f"{results['bytes_per_file']:,} bytes each",
        "",
        "| contender | files | seconds | images/s | vs today |",
        "|---|---|---|---|---|",
    ]
    for name in ("today", "now --jobs 1", ON_TORCH, "now --jobs 2"):
        row = results["rows"].get(name)
        if row is None:  # a result from before the torch row
            continue
        lines.append(
            f"| {name} | {row['files']:,} | {row['seconds']:.1f} | {row['images_per_second']:.0f} | "
            f"{row['vs_today']:.1f}x |"
        )
    lines += [
        "",
        f"- digits read the same as today's path: {results['agreement_with_today']:.2%} of "
        f"{results['rows']['today']['files']:,}; --jobs 2 reads exactly what --jobs 1 and torch "
        f"do: {'yes' if results['jobs_1_equals_jobs_2'] else 'NO'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.predict_throughput",
        description="digitrec predict DIR --json: images per second, today's code path against "
        "--jobs 1 and 2.",
    )
    parser.add_argument("--files", type=int, default=10_000, help="image files to read (default: 10000)")
    parser.add_argument(
        "--today-files",
        type=int,
        help="files today's (slow) path reads, from the first (default: all of --files)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 files (default: off)")
    parser.add_argument("--out", help="JSON file to write (default: benchmarks/results/predict-<time>.json)")
    parser.add_argument(
        "--readme",
        metavar="FILE",
        help="write the table between the predict-throughput markers in FILE (default: off)",
    )
    args = parser.parse_args(argv)
    if args.readme and args.quick:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")
    files = 40 if args.quick else args.files
    today_files = min(files, args.today_files or files)

    results = run(files, today_files)
    results["quick"] = args.quick
    publish(results, README_BLOCK, format_table(results), out=args.out, readme=args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
