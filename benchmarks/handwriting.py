"""Other writers' handwriting: real digit sets MNIST never saw, rendered as people present them.

Each set (optdigits-orig's 2,880 digits of 30 writers, USPS's 2,007 test digits from envelopes)
is drawn as an image a person would give digitrec -- dark ink on paper at several scales, with
a fine pen and a marker, as a photo with uneven light, noise and JPEG (also cut out with a little
paper left), cut out to its ink (dark on light, and light on dark) -- or as other digit
collections' scanners delivered their digits (Semeion's 16x16 box, stretched to fill it and
binarized; UCI optdigits' 8x8 block counts), and read through
``Recognizer.predict_batch``'s two halves, the same path as ``digitrec predict``: each image is
normalized once and its input scored twice, as digitrec reads it (an unsure digit read again in a
thinner and a thicker pen and narrower, the "second look") and read once, side by side. Rows of 4 digits from
each set (as scanned, and as Semeion's scanner would have delivered each digit) are read with
``multi=True`` and count only when the whole number is right. Numbers, not
timed tests::

    PYTHONPATH=src python -m benchmarks.handwriting [--per-set N] [--quick] [--readme README.md]

The sets are read from ``../shared/data`` beside the repository (or ``--data-dir``, or
``$DIGITREC_SHARED_DATA``); results go to ``benchmarks/results/handwriting-<time>.json``.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import rendered_handwriting as rendered
from benchmarks.readme import publish
from digitrec.handwriting import DigitSet, default_shared_data, load_optdigits_orig, load_usps, render_digit

README_BLOCK = "handwriting"
SETS: dict[str, Callable[[Path], DigitSet]] = {
    "optdigits-orig": lambda root: load_optdigits_orig(root / "optdigits-orig"),
    "USPS test": lambda root: load_usps(root / "usps", "test"),
}


def photo(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A phone photo: uneven light and a shadow, sensor noise (sigma 6..12), JPEG quality 40..70."""
    return _phone_photo(np.asarray(rendered.uneven_light(ink, rng), np.float32), rng, (40, 71))


def _phone_photo(gray: np.ndarray, rng: np.random.Generator, quality: tuple[int, int]) -> Image.Image:
    """Gray levels (float) with sensor noise (sigma 6..12) added, saved as a JPEG of a quality in
    ``quality`` (low, high exclusive) and opened again."""
    noisy = np.clip(gray + rng.normal(0, rng.uniform(6, 12), gray.shape) + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, "L").convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(*quality)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _resized(values: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(values, mode="F").resize((side, side), Image.Resampling.BILINEAR))


def semeion_box(ink: np.ndarray) -> np.ndarray:
    """(16, 16) uint8, 255 = ink: Semeion's scan of a digit (80 Italian writers, UCI), stretched
    to fill a 16x16 box, each pixel then made black or white at a fixed threshold."""
    box = _resized(rendered._tight(ink, above=25), 16) > 0.5  # cropped at a tenth of full ink
    return box.astype(np.uint8) * 255


def scanner_box(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Semeion's presentation (:func:`semeion_box`), shown 8x with a margin."""
    return render_digit(semeion_box(ink), 8)


def _block_counts(ink: np.ndarray) -> np.ndarray:
    """(8, 8) uint8: a 32x32 binary bitmap (optdigits-orig's own; USPS's 16x16 enlarged and
    thresholded) reduced to 8x8 by counting the ink of each 4x4 block (0-16 levels, 255 = 16)."""
    bitmap = ink.astype(np.float32) / 255.0
    if bitmap.shape != (32, 32):
        bitmap = _resized(bitmap, 32)
    counts = (bitmap > 0.5).reshape(8, 4, 8, 4).mean(axis=(1, 3))
    return (counts * 255 + 0.5).astype(np.uint8)


def optical_8x8(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """UCI optdigits' presentation: the ink of 4x4 blocks counted (:func:`_block_counts`); shown
    8x with a margin."""
    return render_digit(_block_counts(ink), 8)


def optical_8x8_pixels(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The same 8x8 block counts shown 8x by repeating each pixel (nearest neighbour), as an
    image viewer zooms a small image (matplotlib's ``imshow(..., interpolation="nearest")`` of
    scikit-learn's ``load_digits``, which are UCI's 8x8 digits)."""
    return render_digit(_block_counts(ink), 8, resample=Image.Resampling.NEAREST)


def cropped_to_ink(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A digit cut out to its ink's bounding box (a tight crop, as a scanner's cell or a user
    cuts one out): its ink touches every edge; shown 4x, no margin."""
    tight = (rendered._tight(ink) * 255.0 + 0.5).astype(np.uint8)
    return render_digit(tight, 4, margin=0.0)


def photo_cut_out(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A phone photo (:func:`photo`, JPEG quality 60..90) of the digit 120 px tall, cut out with a
    little paper left: 8 px around its ink."""
    pad = 8
    inked = rendered._centred(ink, rng, 200, 0.6)  # (200, 200) float, 1 = ink
    gray = rendered.unevenly_lit(inked, rng)
    rows, cols = np.flatnonzero(inked.max(1) > 0.1), np.flatnonzero(inked.max(0) > 0.1)
    cut = gray[max(0, rows[0] - pad) : rows[-1] + 1 + pad, max(0, cols[0] - pad) : cols[-1] + 1 + pad]
    return _phone_photo(cut, rng, (60, 91))


def light_ink_cut_out(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Light ink on dark paper (chalk, a white pen, MNIST's own polarity), cut out to its ink and
    shown 4x: :func:`cropped_to_ink` inverted."""
    return Image.fromarray(255 - np.asarray(cropped_to_ink(ink, rng).convert("L")), "L")


PRESENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    "scan, 8x with a margin": lambda ink, rng: render_digit(ink, 8),
    "small, 2x": lambda ink, rng: render_digit(ink, 2),
    "large canvas 64-2000 px": rendered.large_canvas,
    "fine pen (thin strokes)": rendered.thin,
    "marker (thick strokes)": rendered.thick,
    "photo: uneven light, noise, JPEG": photo,
    "16x16 box, stretched to fill, binary (Semeion)": scanner_box,
    "8x8 block counts (UCI optdigits)": optical_8x8,
    "the same, zoomed pixel by pixel": optical_8x8_pixels,
    "cropped to its ink, no margin": cropped_to_ink,
    "photo cut out, 8 px of paper left": photo_cut_out,
    "light ink on dark, cropped to its ink": light_ink_cut_out,
}
NUMBERS = "4-digit numbers (exact)"
# The same numbers as `digitrec predict --multi` answers them: a withheld digit ("?" in the number,
# "not a digit" or unsure) counts as wrong instead of with its best guess.
NUMBERS_AS_ANSWERED = "the same, a withheld digit counted wrong"
# Numbers of digits as Semeion's scanner delivered them (each stretched to fill its box and
# binarized, then set in a row as the numbers above are): #14's held-out numbers are built from
# a set of scans the project never sees; this row is the nearest the shared sets come to it.
NUMBERS_SEMEION = "4-digit numbers of Semeion-style digits (exact)"


def sample(digits: DigitSet, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` digits drawn without replacement (all of them when count is 0 or more than the set)."""
    rng = np.random.default_rng([seed, len(digits.labels)])
    if 0 < count < len(digits.labels):
        pick = np.sort(rng.choice(len(digits.labels), size=count, replace=False))
        return digits.images[pick], digits.labels[pick]
    return digits.images, digits.labels


def best_guess(prediction: Any) -> int | None:
    """The digit read, or for one not answered (not a digit, unsure) the model's most likely digit:
    this table measures reading; how often an answer is withheld is benchmarks/rejection.py's."""
    if prediction.digit is not None or not any(prediction.probabilities):
        return prediction.digit
    return int(np.argmax(prediction.probabilities))


def best_number(prediction: Any) -> str | None:
    """The number read in multi mode, each withheld digit replaced by its most likely digit."""
    if prediction.digits is None or not prediction.digits:
        return prediction.number
    return "".join(str(d["digit"] if d["digit"] is not None else int(np.argmax(d["probabilities"])))
                   for d in prediction.digits)  # fmt: skip


def evaluate_set(
    recognizer: Any, digits: DigitSet, per_set: int, numbers: int, seed: int = 0
) -> dict[str, tuple[int, int, int]]:
    """Per presentation and for 4-digit numbers: (read correctly, read correctly without the
    second look, total); a withheld answer counts with its best guess (see :func:`best_guess`).
    Each image is drawn and normalized once, and its input scored both ways."""
    from digitrec.recognition import prepare

    images, labels = sample(digits, per_set, seed)

    def both_ways(prepared: list[Any], *rights: Callable[[Any, int], bool]) -> list[tuple[int, int]]:
        """Per criterion in ``rights``: how many are right with the second look, and without."""
        counts = []
        for second_look in (True, False):
            recognizer.second_look = second_look
            predictions = recognizer.predict_prepared(prepared)
            counts.append([sum(right(p, i) for i, p in enumerate(predictions)) for right in rights])
        recognizer.second_look = True
        return list(zip(counts[0], counts[1], strict=True))

    results: dict[str, tuple[int, int, int]] = {}
    for k, (name, draw) in enumerate(PRESENTATIONS.items()):
        rng = np.random.default_rng([seed, k])
        prepared = [prepare(draw(ink, rng)) for ink in images]
        [(looked, once)] = both_ways(prepared, lambda p, i: best_guess(p) == labels[i])
        results[name] = (int(looked), int(once), len(labels))
    if numbers:
        samples = rendered.render_numbers(digits.images, digits.labels, numbers, seed)
        prepared = [prepare(image, multi=True) for image, _ in samples]
        read, answered = both_ways(
            prepared,
            lambda p, i: best_number(p) == samples[i][1],
            lambda p, i: p.number == samples[i][1],
        )
        results[NUMBERS] = (int(read[0]), int(read[1]), len(samples))
        results[NUMBERS_AS_ANSWERED] = (int(answered[0]), int(answered[1]), len(samples))
        boxes = np.stack([semeion_box(ink) for ink in digits.images])  # (N, 16, 16) uint8
        samples = rendered.render_numbers(boxes, digits.labels, numbers, seed)
        prepared = [prepare(image, multi=True) for image, _ in samples]
        [(looked, once)] = both_ways(prepared, lambda p, i: best_number(p) == samples[i][1])
        results[NUMBERS_SEMEION] = (int(looked), int(once), len(samples))
    return results


def run(
    data_root: Path, per_set: int, numbers: int, seed: int = 0, run_dir: str | None = None
) -> dict[str, Any]:
    from digitrec.recognition import Recognizer

    recognizer = Recognizer.from_run(run_dir) if run_dir else Recognizer.default()
    started = time.perf_counter()
    out: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "model": recognizer.info()["name"],
        "source": str(recognizer.info()["source"]),
        "per_set": per_set,
        "numbers": numbers,
        "seed": seed,
        "sets": {},
    }
    for name, load in SETS.items():
        digits = load(data_root)
        scores = evaluate_set(recognizer, digits, per_set, numbers, seed)
        out["sets"][name] = {
            "size": len(digits.labels),
            "results": {
                key: {"correct": c, "correct_read_once": once, "total": t}
                for key, (c, once, t) in scores.items()
            },
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def format_table(results: dict[str, Any]) -> str:
    """Markdown: one row per presentation; per set, the rate and counts as digitrec reads (with
    the second look), then the rate without it (each unsure digit read once)."""
    sets = list(results["sets"])
    lines = [
        "| presentation | " + " | ".join(f"{name} | read once" for name in sets) + " |",
        "|---|" + "---|---|" * len(sets),
    ]
    rows = [*PRESENTATIONS, NUMBERS, NUMBERS_AS_ANSWERED, NUMBERS_SEMEION]
    for row in rows:
        cells = []
        for name in sets:
            entry = results["sets"][name]["results"].get(row)
            if not entry:
                cells += ["", ""]
                continue
            cells.append(f"{entry['correct'] / entry['total']:.1%} ({entry['correct']}/{entry['total']})")
            cells.append(f"{entry['correct_read_once'] / entry['total']:.1%}")
        label = f"**{row}**" if row == NUMBERS else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.handwriting",
        description="Accuracy on other writers' real handwriting (optdigits-orig, USPS test), "
        "rendered in several presentations and read as digitrec predict reads images.",
    )
    options: list[tuple[str, dict[str, Any], str]] = [
        (
            "--data-dir",
            {},
            "folder holding usps/ and optdigits-orig/ (default: $DIGITREC_SHARED_DATA or ../shared/data)",
        ),
        ("--run", {}, "run directory (default: the bundled default model)"),
        (
            "--per-set",
            {"type": int, "default": 500},
            "digits per set and presentation, 0 = all (default: 500)",
        ),
        ("--numbers", {"type": int, "default": 1000}, "4-digit numbers per set (default: 1000)"),
        ("--seed", {"type": int, "default": 0}, "sampling and rendering seed (default: 0)"),
        ("--quick", {"action": "store_true"}, "a smoke run: 60 digits and 20 numbers per set (default: off)"),
        ("--out", {}, "JSON file to write (default: benchmarks/results/handwriting-<time>.json)"),
        (
            "--readme",
            {"metavar": "FILE"},
            "write the table between the handwriting markers in FILE (default: off)",
        ),
    ]
    for flag, extra, text in options:
        parser.add_argument(flag, help=text, **extra)
    args = parser.parse_args(argv)
    if args.readme and args.quick:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")
    per_set, numbers = (60, 20) if args.quick else (args.per_set, args.numbers)
    root = Path(args.data_dir) if args.data_dir else default_shared_data()
    results = run(root, per_set, numbers, args.seed, args.run)
    results["quick"] = args.quick
    header = f"model: {results['model']} from {results['source']}; {results['seconds']} s; "
    publish(results, README_BLOCK, format_table(results), out=args.out, readme=args.readme, header=header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
