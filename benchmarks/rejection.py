"""Knowing when it is not a digit: non-digits flagged, real digits kept, calibration.

A seeded, reproducible set of things that are not digits, each drawn as a person would give it
to digitrec (a 280x280 image, dark ink on light paper, or a photo), read through
``Recognizer.predict_batch`` as ``digitrec predict`` reads files:

* letters A-Z and a-z (without O, o, I, l, i and j, which are 0 and 1 in many hands once a dot
  is taken for a speck; those are shown apart and not counted) from font families training never
  saw: handwriting-like ones (Humor
  Sans, Kristi, Comic Neue, the Hershey script) and ordinary ones (Liberation Serif, Cabin,
  Hershey Times bold);
* Fashion-MNIST test images (Debian's dataset-fashion-mnist), upscaled 8x;
* scribbles, shapes, smileys, hatching, and photo-like textures (uneven light, noise, JPEG);

and real digits that must still be answered: MNIST test, USPS test, optdigits-orig (each drawn
8x as a scan). For the digits it also reports the expected calibration error (ECE)::

    PYTHONPATH=src python -m benchmarks.rejection [--per-kind N] [--per-set N] [--quick] [--readme README.md]

Results go to ``benchmarks/results/rejection-<time>.json``.
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
from digitrec import synthetic
from digitrec.calibration import expected_calibration_error
from digitrec.data import load_dataset, load_idx_folder
from digitrec.handwriting import default_shared_data, load_optdigits_orig, load_usps, render_digit

README_BLOCK = "rejection"
SIZE = 280  # px a side: what the drawing page sends
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
HANDWRITING_LIKE = ("Humor-Sans", "Kristi", "ComicNeue")
ORDINARY = ("LiberationSerif", "Cabin")


def _fonts(families: tuple[str, ...]) -> list[Path]:
    return [p for p in synthetic.font_files() if any(p.name.startswith(f) for f in families)]


def _paper(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return synthetic.to_paper(ink, rng, stretch=0.0, size=SIZE, low_resolution=0.0, binarize=0.0)


def _letters(
    families: tuple[str, ...], hershey: tuple[str, ...], letters: str
) -> Callable[[np.random.Generator], Image.Image]:
    fonts = _fonts(families) or list(synthetic.font_files())

    def draw(rng: np.random.Generator) -> Image.Image:
        char = letters[int(rng.integers(len(letters)))]
        return _paper(synthetic.letter_ink(char, rng, fonts, hershey), rng)

    return draw


def _photo(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven light, sensor noise and JPEG, as a phone photo of the paper."""
    ink = 255 - np.asarray(image.convert("L"), np.float32)
    lit = np.asarray(rendered.uneven_light(ink.astype(np.uint8), rng), np.float32)
    noisy = np.clip(lit + rng.normal(0, rng.uniform(4, 10), lit.shape) + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy, "L").convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(50, 80)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def _kind(name: str) -> Callable[[np.random.Generator], Image.Image]:
    return lambda rng: _paper(synthetic.not_digit_ink(name, rng), rng)


def non_digit_kinds(fashion: np.ndarray | None) -> dict[str, Callable[[np.random.Generator], Image.Image]]:
    kinds: dict[str, Callable[[np.random.Generator], Image.Image]] = {
        "letters, handwriting-like fonts": _letters(HANDWRITING_LIKE, ("scriptc",), synthetic.LETTERS),
        "letters, ordinary fonts": _letters(ORDINARY, ("timesrb",), synthetic.LETTERS),
        "scribbles": _kind("scribble"),
        "shapes": _kind("shape"),
        "smileys": _kind("smiley"),
        "hatching": _kind("hatching"),
        "photos of textures": lambda rng: _photo(_kind("texture")(rng), rng),
    }
    if fashion is not None:
        kinds["Fashion-MNIST test"] = lambda rng: Image.fromarray(
            fashion[int(rng.integers(len(fashion)))], "L"
        ).resize((224, 224), Image.Resampling.BICUBIC)
    return kinds


DIGIT_LIKE = "O o I l i j (not counted)"


def flagged(
    recognizer: Any, draw: Callable[[np.random.Generator], Image.Image], count: int, seed: int, key: str
) -> dict[str, Any]:
    """How many of ``count`` drawn non-digits get no digit (rejected, or no ink found)."""
    rng = np.random.default_rng([seed, *key.encode()])
    reasons: dict[str, int] = {}
    read_as: dict[str, int] = {}
    for start in range(0, count, 128):
        images = [draw(rng) for _ in range(min(128, count - start))]
        for prediction in recognizer.predict_batch(images):
            if prediction.digit is None:
                reason = prediction.rejected or "none"
                reasons[reason] = reasons.get(reason, 0) + 1
            else:
                read_as[str(prediction.digit)] = read_as.get(str(prediction.digit), 0) + 1
    return {"flagged": sum(reasons.values()), "total": count, "reasons": reasons, "read_as": read_as}


def digits_kept(recognizer: Any, inks: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Real digits drawn 8x as scans: how many are answered, how many right, and the ECE."""
    answered = right = 0
    probabilities = np.zeros((len(labels), 10))
    for start in range(0, len(labels), 256):
        chunk = range(start, min(start + 256, len(labels)))
        predictions = recognizer.predict_batch([render_digit(inks[i], 8) for i in chunk])
        for i, prediction in zip(chunk, predictions, strict=True):
            probabilities[i] = prediction.probabilities
            if prediction.digit is not None:
                answered += 1
                right += int(prediction.digit == labels[i])
    found = probabilities.sum(axis=1) > 0
    return {
        "kept": answered,
        "total": len(labels),
        "right_of_kept": right,
        "accuracy_all": float((probabilities.argmax(axis=1) == labels).mean()),
        "ece": expected_calibration_error(probabilities[found], labels[found]),
    }


def _sample(inks: np.ndarray, labels: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if 0 < count < len(labels):
        pick = np.sort(np.random.default_rng([seed, len(labels)]).choice(len(labels), count, replace=False))
        return inks[pick], labels[pick]
    return inks, labels


def run(data_root: Path, per_kind: int, per_set: int, seed: int, run_dir: str | None) -> dict[str, Any]:
    from digitrec.recognition import Recognizer

    recognizer = Recognizer.from_run(run_dir) if run_dir else Recognizer.default()
    started = time.perf_counter()
    fashion = (
        load_idx_folder(FASHION_DIR, "fashion-mnist").test_images.numpy() if FASHION_DIR.is_dir() else None
    )
    out: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "model": recognizer.info()["name"],
        "source": str(recognizer.info()["source"]),
        "not_digit_energy_below": recognizer.info().get("not_digit_energy_below"),
        "per_kind": per_kind,
        "per_set": per_set,
        "seed": seed,
        "non_digits": {},
        "digits": {},
    }
    for name, draw in non_digit_kinds(fashion).items():
        out["non_digits"][name] = flagged(recognizer, draw, per_kind, seed, name)
    digit_like = _letters(HANDWRITING_LIKE + ORDINARY, ("scriptc", "timesrb"), synthetic.DIGIT_LIKE_LETTERS)
    out["digit_like_letters"] = flagged(recognizer, digit_like, max(per_kind // 4, 20), seed, DIGIT_LIKE)
    mnist = load_dataset("mnist")
    sets = {
        "MNIST test": (mnist.test_images.numpy(), mnist.test_labels.numpy()),
        "USPS test": (lambda s: (s.images, s.labels))(load_usps(data_root / "usps", "test")),
        "optdigits-orig": (lambda s: (s.images, s.labels))(load_optdigits_orig(data_root / "optdigits-orig")),
    }
    for name, (inks, labels) in sets.items():
        inks, labels = _sample(inks, labels, per_set, seed)
        out["digits"][name] = digits_kept(recognizer, inks, labels)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def format_table(results: dict[str, Any]) -> str:
    """Markdown: non-digits flagged per kind, then real digits kept with their ECE."""
    lines = ["| not a digit | flagged (no digit given) |", "|---|---|"]
    total_flagged = total = 0
    for name, entry in results["non_digits"].items():
        lines.append(
            f"| {name} | {entry['flagged'] / entry['total']:.1%} ({entry['flagged']}/{entry['total']}) |"
        )
        total_flagged += entry["flagged"]
        total += entry["total"]
    lines.append(
        f"| **all of the above** | **{total_flagged / max(total, 1):.1%}** ({total_flagged}/{total}) |"
    )
    like = results["digit_like_letters"]
    share = f"{like['flagged'] / like['total']:.1%} ({like['flagged']}/{like['total']})"
    lines.append(f"| letters {DIGIT_LIKE} | {share} |")
    lines += [
        "",
        "| real digits | answered (not flagged) | right of those answered | calibration error (ECE) |",
    ]
    lines.append("|---|---|---|---|")
    for name, entry in results["digits"].items():
        lines.append(
            f"| {name} | {entry['kept'] / entry['total']:.2%} ({entry['kept']}/{entry['total']}) | "
            f"{entry['right_of_kept'] / max(entry['kept'], 1):.2%} | {entry['ece']:.2%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rejection",
        description="Non-digits flagged (letters, Fashion-MNIST, scribbles, shapes, smileys, hatching, "
        "textures) and real digits kept (MNIST, USPS, optdigits-orig), read as digitrec predict reads "
        "images.",
    )
    parser.add_argument(
        "--data-dir", help="folder holding usps/ and optdigits-orig/ (default: ../shared/data)"
    )
    parser.add_argument("--run", help="run directory (default: the bundled default model)")
    parser.add_argument(
        "--per-kind", type=int, default=400, help="images per kind of non-digit (default: 400)"
    )
    parser.add_argument("--per-set", type=int, default=0, help="digits per real set, 0 = all (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="drawing and sampling seed (default: 0)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 40 per kind, 300 per set (default: off)"
    )
    parser.add_argument(
        "--out", help="JSON file to write (default: benchmarks/results/rejection-<time>.json)"
    )
    parser.add_argument(
        "--readme",
        metavar="FILE",
        help="write the tables between the rejection markers in FILE (default: off)",
    )
    args = parser.parse_args(argv)
    if args.readme and args.quick:
        parser.error("--readme: a --quick run is a smoke test, not figures for the README")
    per_kind, per_set = (40, 300) if args.quick else (args.per_kind, args.per_set)
    root = Path(args.data_dir) if args.data_dir else default_shared_data()
    results = run(root, per_kind, per_set, args.seed, args.run)
    results["quick"] = args.quick
    header = f"model: {results['model']} from {results['source']}; {results['seconds']} s; "
    publish(results, README_BLOCK, format_table(results), out=args.out, readme=args.readme, header=header)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
