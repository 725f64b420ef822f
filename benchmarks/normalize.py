"""Normalization speed and agreement (issue #18): ``digitrec.images`` against today's code path
(``benchmarks/normalize_reference.py``), side by side in one process::

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.normalize [--quick] [--readme docs/speed.md]

1. Speed: ``normalize_digit`` on a 280x280 canvas drawing (PNG bytes, as the web page sends)
   and on a 12-megapixel phone photo (4000x3000 JPEG: uneven light, a tint, sensor noise),
   each also already decoded (a PIL image: normalization alone). Old and new alternate,
   call by call, so a busy machine slows both alike; medians and their ratio.
2. Agreement: the robustness suite's renderings (``benchmarks/rendered_handwriting.py``, 13
   conditions, 500 digits each by default: the whole suite, as the README's robustness table
   renders it) normalized both ways and read by the bundled model: the share of digits read
   the same, each way's accuracy, how many of those read differently each way reads right,
   and the mean pixel difference of the 28x28 inputs.
3. Real handwriting: USPS test and optdigits-orig, rendered as ``digitrec evaluate --images``
   renders them, read both ways (accuracy old and new).

Results go to ``benchmarks/results/normalize-<time>.json`` (or ``--out``); ``--readme FILE``
writes the table between the ``normalize`` markers in FILE.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import normalize_reference as reference
from benchmarks import rendered_handwriting as rendered
from benchmarks.readme import publish
from digitrec import images

README_BLOCK = "normalize"
Normalizer = Callable[[Any], "np.ndarray | None"]


# The drawing page's ink (src/digitrec/web/app.js: INK = "#111827") on its opaque white pad.
WEB_INK = (17, 24, 39)


def drawing(digit: np.ndarray, rng: np.random.Generator | None = None) -> bytes:
    """A 280x280 drawing as the web page sends it: an anti-aliased digit in the page's ink on
    opaque white, RGBA PNG."""
    ink = rendered._centred(digit, rng or np.random.default_rng(0), 280, 0.7)
    rgba = rendered._paper(ink, (255.0, 255.0, 255.0), WEB_INK).convert("RGBA")
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    return buffer.getvalue()


def phone_photo(digit: np.ndarray, size: tuple[int, int] = (4000, 3000), shadow: float = 40.0) -> bytes:
    """A 12-megapixel phone photo of a digit on paper: a lighting gradient and a soft shadow
    (``shadow`` levels deep), a warm tint, sensor noise (sigma 6 of 255), JPEG quality 85; the
    digit about a third of the height."""
    width, height = size
    rng = np.random.default_rng(1)
    ink = np.zeros((height, width), np.float32)
    glyph = rendered._scale(rendered._tight(digit), height // 3)
    top, left = height // 3, width // 2 - glyph.shape[1] // 2
    ink[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    light = 235 - 70 * xx - 25 * yy - shadow * np.exp(-((xx - 0.8) ** 2 + (yy - 0.2) ** 2) / 0.02)
    gray = light * (1 - ink) + 0.2 * light * ink + rng.normal(0, 6, (height, width)).astype(np.float32)
    rgb = np.clip(np.stack([gray, gray * 0.96, gray * 0.88], axis=2) + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def time_side_by_side(inputs: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Median milliseconds of old and new normalize_digit, alternating call by call.

    ``inputs()`` makes a fresh input per call (a decoded PIL image must not be shared: the
    old and the new path would both get it, and either could cache on it)."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    contenders: dict[str, Normalizer] = {"old": reference.normalize_digit, "new": images.normalize_digit}
    outputs: dict[str, Any] = {}
    for repeat in range(repeats + 1):
        for name, normalize in contenders.items():
            source = inputs()
            started = time.perf_counter()
            outputs[name] = normalize(source)
            elapsed = time.perf_counter() - started
            if repeat:  # the first round warms caches and lazy imports
                times[name].append(elapsed * 1000.0)
    old, new = (statistics.median(times[k]) for k in ("old", "new"))
    same = outputs["old"] is not None and outputs["new"] is not None
    difference = float(np.abs(outputs["old"].astype(int) - outputs["new"]).mean()) if same else None
    return {
        "old_ms": round(old, 3),
        "new_ms": round(new, 3),
        "speedup": round(old / new, 2),
        "repeats": repeats,
        "mean_pixel_difference": difference,
    }


def _read(recognizer: Any, pixels: np.ndarray | None) -> int | None:
    return None if pixels is None else recognizer.predict_pixels(pixels).digit


def compare(recognizer: Any, samples: list[tuple[Any, int]]) -> dict[str, Any]:
    """Old and new normalization of the same images, read by the same model."""
    agree = correct_old = correct_new = only_old_right = only_new_right = 0
    differences = []
    for image, label in samples:
        old = reference.normalize_digit(image)
        new = images.normalize_digit(image)
        read_old, read_new = _read(recognizer, old), _read(recognizer, new)
        agree += read_old == read_new
        correct_old += read_old == label
        correct_new += read_new == label
        only_old_right += read_old == label != read_new
        only_new_right += read_new == label != read_old
        if old is not None and new is not None:
            differences.append(float(np.abs(old.astype(int) - new).mean()))
    total = len(samples)
    return {
        "total": total,
        "agreement": round(agree / total, 4),
        "accuracy_old": round(correct_old / total, 4),
        "accuracy_new": round(correct_new / total, 4),
        # Of the digits read differently: how many only the new path reads right, only today's.
        "read_differently": total - agree,
        "only_new_right": only_new_right,
        "only_old_right": only_old_right,
        "mean_pixel_difference": round(float(np.mean(differences)), 3) if differences else None,
    }


def robustness_samples(per_condition: int, seed: int = 0) -> list[tuple[Any, int]]:
    """The robustness suite's single-digit renderings (each condition its own slice of MNIST test)."""
    from digitrec.data import load_dataset

    dataset = load_dataset("mnist")
    digits, labels = dataset.test_images.numpy(), dataset.test_labels.numpy()
    samples: list[tuple[Any, int]] = []
    for k, name in enumerate(rendered.CONDITIONS):
        chunk = slice(k * per_condition, (k + 1) * per_condition)
        samples += [
            (image, int(label))
            for image, label in rendered.render_condition(name, digits[chunk], labels[chunk], seed)
        ]
    return samples


def real_set_samples(root: Path, name: str, count: int) -> list[tuple[Any, int]]:
    """A real set rendered as ``digitrec evaluate --images`` renders it (render_digit, 8x)."""
    from digitrec.handwriting import load_optdigits_orig, load_usps, render_digit

    digits = (
        load_usps(root / "usps", "test")
        if name == "USPS test"
        else load_optdigits_orig(root / "optdigits-orig")
    )
    inks, labels = digits.images, digits.labels
    if 0 < count < len(labels):
        pick = np.sort(np.random.default_rng(0).choice(len(labels), size=count, replace=False))
        inks, labels = inks[pick], labels[pick]
    return [(render_digit(ink), int(label)) for ink, label in zip(inks, labels, strict=True)]


# The whole robustness suite, as the README's table renders it (13 conditions x 500 digits).
SUITE_PER_CONDITION = 500


def run(quick: bool, data_root: Path | None, per_condition: int = SUITE_PER_CONDITION) -> dict[str, Any]:
    import cv2

    from digitrec.data import load_dataset
    from digitrec.recognition import Recognizer

    repeats_small, repeats_photo = (5, 2) if quick else (200, 15)
    digit = load_dataset("mnist").test_images[0].numpy()  # a 7
    png = drawing(digit)
    photo = phone_photo(digit, (800, 600) if quick else (4000, 3000))
    started = time.perf_counter()
    out: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "opencv": cv2.__version__,
            "opencv_threads": cv2.getNumThreads(),
            # The machine is shared: its load (1, 5, 15 min) when the run started, and at the end.
            "load_average": os.getloadavg(),
        },
        "speed": {
            "280x280 drawing, PNG bytes": time_side_by_side(lambda: png, repeats_small),
            "280x280 drawing, decoded": time_side_by_side(lambda: _decoded(png), repeats_small),
            "12 MP photo, JPEG bytes": time_side_by_side(lambda: photo, repeats_photo),
            "12 MP photo, decoded": time_side_by_side(lambda: _decoded(photo), repeats_photo),
        },
    }
    recognizer = Recognizer.default()
    suite = robustness_samples(10 if quick else per_condition)
    out["agreement"] = {"robustness suite": compare(recognizer, suite)}
    if data_root is not None:
        for name in ("USPS test", "optdigits-orig"):
            out["agreement"][name] = compare(
                recognizer, real_set_samples(data_root, name, 50 if quick else 0)
            )
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["machine"]["load_average_end"] = os.getloadavg()
    return out


def format_table(results: dict[str, Any]) -> str:
    """Markdown: the speed rows, then the agreement rows."""
    lines = [
        f"normalize benchmark, {results['date']}: {results['machine']['processor']}, "
        f"OpenCV {results['machine']['opencv']}, load average {results['machine']['load_average'][0]:.1f} "
        f"at the start, {results['machine']['load_average_end'][0]:.1f} at the end",
        "",
        "| normalize_digit on | today ms (median) | now ms (median) | speed-up |",
        "|---|---|---|---|",
    ]
    for name, row in results["speed"].items():
        lines.append(f"| {name} | {row['old_ms']:.2f} | {row['new_ms']:.2f} | {row['speedup']:.1f}x |")
    lines += [
        "",
        "| images | digits | read the same | read differently: right now / right today "
        "| accuracy today | accuracy now | mean pixel difference, of 255 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["agreement"].items():
        lines.append(
            f"| {name} | {row['total']} | {row['agreement']:.2%} | "
            f"{row['read_differently']}: {row['only_new_right']} / {row['only_old_right']} | "
            f"{row['accuracy_old']:.2%} | {row['accuracy_new']:.2%} | {row['mean_pixel_difference']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.normalize",
        description="normalize_digit against today's code path: speed, agreement, accuracy.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes (default: off)")
    parser.add_argument(
        "--data-dir",
        help="folder holding usps/ and optdigits-orig/ (default: $DIGITREC_SHARED_DATA or ../shared/data; "
        "skipped when missing)",
    )
    parser.add_argument(
        "--per-condition",
        type=int,
        default=SUITE_PER_CONDITION,
        help=f"robustness-suite digits per condition, 13 conditions "
        f"(default: {SUITE_PER_CONDITION}, the whole suite)",
    )
    parser.add_argument(
        "--out", help="JSON file to write (default: benchmarks/results/normalize-<time>.json)"
    )
    parser.add_argument(
        "--readme",
        metavar="FILE",
        help="write the table between the normalize markers in FILE (default: off)",
    )
    args = parser.parse_args(argv)
    if args.readme and args.quick:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")
    from digitrec.handwriting import default_shared_data

    root = Path(args.data_dir) if args.data_dir else default_shared_data()
    if args.per_condition < 1:
        parser.error(f"--per-condition must be at least 1, got {args.per_condition}")
    results = run(args.quick, root if (root / "usps").is_dir() else None, args.per_condition)
    header = f"{results['seconds']} s; "
    publish(results, README_BLOCK, format_table(results), out=args.out, readme=args.readme, header=header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
