"""MNIST test digits rendered the way people present digits: the robustness suite's inputs.

Every generator is deterministic (seeded numpy Generator). Run as a script to print the
per-condition table for a model::

    OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.rendered_handwriting [--run DIR] [--per-condition N]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi

NUMBERS = "4-digit numbers (exact)"

# A rendered sample: (PIL image, true label as a string: "7" or "4096").
Sample = tuple[Image.Image, str]


def _tight(digit: np.ndarray, above: int = 0) -> np.ndarray:
    """Crop a uint8 ink map (an MNIST digit, 255 = ink) to its pixels over ``above``, as float in [0, 1]."""
    rows = np.where(digit.max(axis=1) > above)[0]
    cols = np.where(digit.max(axis=0) > above)[0]
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255.0


def _scale(ink: np.ndarray, height: int) -> np.ndarray:
    """Upscale an ink map (white on black, [0, 1]) so it is ``height`` px tall (bicubic)."""
    factor = height / ink.shape[0]
    size = (max(1, round(ink.shape[1] * factor)), max(1, height))
    image = Image.fromarray(ink, mode="F").resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image), 0.0, 1.0)


def _place(ink: np.ndarray, canvas: tuple[int, int], top: int, left: int) -> np.ndarray:
    """The ink map pasted on an empty (H, W) canvas at (top, left)."""
    out = np.zeros(canvas, np.float32)
    h, w = ink.shape
    out[top : top + h, left : left + w] = ink
    return out


def _paper(ink: np.ndarray, paper: tuple[float, ...], pen: tuple[float, ...]) -> Image.Image:
    """Render an ink map as pen colour on paper colour (RGB, 0-255 per channel)."""
    a = ink[:, :, None]
    rgb = np.asarray(paper, np.float32) * (1 - a) + np.asarray(pen, np.float32) * a
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")


def _gray(ink: np.ndarray, paper: float = 255.0, pen: float = 0.0) -> Image.Image:
    return Image.fromarray(np.clip(paper * (1 - ink) + pen * ink + 0.5, 0, 255).astype(np.uint8), "L")


def _centred(digit: np.ndarray, rng: np.random.Generator, side: int, fill: float) -> np.ndarray:
    """The digit, ``fill`` of the canvas tall, roughly centred on a side x side canvas."""
    ink = _scale(_tight(digit), max(8, round(side * fill)))
    h, w = ink.shape
    w = min(w, side)
    ink = ink[:, :w]
    top = (side - h) // 2 + int(rng.integers(-side // 20, side // 20 + 1))
    left = (side - w) // 2 + int(rng.integers(-side // 20, side // 20 + 1))
    return _place(ink, (side, side), int(np.clip(top, 0, side - h)), int(np.clip(left, 0, side - w)))


# --------------------------------------------------------------------------- conditions


def large_canvas(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Black on white, canvas 64..2000 px (log-uniform), digit 40..80% of the height."""
    side = int(np.exp(rng.uniform(np.log(64), np.log(2000))))
    return _gray(_centred(digit, rng, side, rng.uniform(0.4, 0.8)))


def ink_on_paper(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Black (or dark) ink on white paper, 200 px, as scanned."""
    return _gray(
        _centred(digit, rng, 200, 0.6), paper=float(rng.uniform(225, 255)), pen=float(rng.uniform(0, 50))
    )


def coloured(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Coloured ink on coloured paper (ink and paper differ by at least 100 in some channel)."""
    while True:
        paper = rng.uniform(120, 255, 3)
        pen = rng.uniform(0, 200, 3)
        if np.abs(paper - pen).max() >= 100:
            break
    return _paper(_centred(digit, rng, 160, 0.6), tuple(paper), tuple(pen))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A small digit (20..35% of the height) anywhere on a 300 px page."""
    side = 300
    ink = _scale(_tight(digit), round(side * rng.uniform(0.2, 0.35)))
    h, w = ink.shape
    top, left = int(rng.integers(0, side - h)), int(rng.integers(0, side - w))
    return _gray(_place(ink, (side, side), top, left))


def thin(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Thin strokes: a fine pen (grey erosion at 8x)."""
    ink = _centred(digit, rng, 224, 0.7)
    ink = ndi.grey_erosion(ink, size=(int(rng.integers(5, 9)),) * 2)
    return _gray(ink)


def thick(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Thick strokes: a marker (grey dilation at 8x)."""
    ink = _centred(digit, rng, 224, 0.7)
    ink = ndi.grey_dilation(ink, size=(int(rng.integers(7, 13)),) * 2)
    return _gray(ink)


def jpeg(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """JPEG artefacts: quality 10..30, 4:2:0 chroma, small image."""
    image = _gray(_centred(digit, rng, int(rng.integers(48, 120)), 0.65)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(10, 31)))
    return Image.open(io.BytesIO(buffer.getvalue()))


def blur(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Out of focus: Gaussian blur with radius 1.5..4 px on a 160 px image."""
    image = _gray(_centred(digit, rng, 160, 0.6))
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 4.0))))


def noise(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sensor noise and paper texture: Gaussian noise with sigma 15..35 (of 255) and 0.5% specks."""
    ink = _centred(digit, rng, 160, 0.6)
    gray = 235 * (1 - ink) + 20 * ink + rng.normal(0, rng.uniform(15, 35), ink.shape)
    specks = rng.random(ink.shape) < 0.005
    gray[specks] = rng.choice([0.0, 255.0], size=int(specks.sum()))
    return Image.fromarray(np.clip(gray + 0.5, 0, 255).astype(np.uint8), "L")


def uneven_light(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Uneven lighting: a linear gradient (paper 255 down to 90..140) plus a soft shadow blob."""
    gray = unevenly_lit(_centred(digit, rng, 200, 0.6), rng)
    return Image.fromarray(np.clip(gray + 0.5, 0, 255).astype(np.uint8), "L")


def unevenly_lit(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square page of ``ink`` (side x side float, 1 = ink) under uneven light: a linear gradient
    (paper 255 down to 90..140) and a soft shadow blob; gray levels, float."""
    side = ink.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) + 0.5  # 0..1 across the page
    darkest = rng.uniform(90, 140)
    light = 255 - (255 - darkest) * np.clip(ramp, 0, 1)
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    light *= 1 - 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.08)
    return light * (1 - ink) + 0.15 * light * ink


def rotated(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Slight rotation: -15..15 degrees."""
    image = _gray(_centred(digit, rng, 160, 0.6))
    return image.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BICUBIC, fillcolor=255)


def transparent(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A canvas drawing: dark strokes on a transparent RGBA background."""
    ink = _centred(digit, rng, 140, 0.6)
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[:, :, :3] = rng.integers(0, 60, 3).astype(np.uint8)
    rgba[:, :, 3] = np.clip(ink * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def sheet_on_desk(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A photo of a sheet on a desk: the sheet covers 75..95% of the frame's width, the desk
    (darker, any colour) shows along one or two sides."""
    side = 300
    ink = _centred(digit, rng, side, 0.5)
    sheet = np.asarray(_paper(ink, tuple(rng.uniform(215, 250, 3)), tuple(rng.uniform(0, 50, 3))))
    desk_colour = rng.uniform(20, 150, 3)
    frame = int(side / rng.uniform(0.75, 0.95))
    photo = np.empty((frame, frame, 3), np.float32)
    photo[:] = desk_colour
    top, left = int(rng.integers(0, frame - side + 1)), int(rng.integers(0, frame - side + 1))
    photo[top : top + side, left : left + side] = sheet
    return Image.fromarray(np.clip(photo + 0.5, 0, 255).astype(np.uint8), "RGB")


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    "large canvas 64-2000px": large_canvas,
    "black ink on white": ink_on_paper,
    "coloured ink and paper": coloured,
    "off-centre": off_centre,
    "thin strokes": thin,
    "thick strokes": thick,
    "JPEG artefacts": jpeg,
    "blur": blur,
    "noise and specks": noise,
    "uneven lighting": uneven_light,
    "rotation +-15 deg": rotated,
    "transparent canvas": transparent,
    "sheet on a desk": sheet_on_desk,
}


def render_condition(name: str, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[Sample]:
    """Render MNIST digits (N, 28, 28) uint8 under one condition; deterministic per seed."""
    rng = np.random.default_rng([seed, list(CONDITIONS).index(name)])
    return [
        (CONDITIONS[name](image, rng), str(int(label))) for image, label in zip(images, labels, strict=True)
    ]


def render_number(digits: np.ndarray, rng: np.random.Generator, touching: bool = False) -> Image.Image:
    """A row of MNIST digits (k, 28, 28) with random spacing, size and baseline jitter, black on white.

    Gaps are 12..50% of the digit height; with ``touching``, neighbours overlap by 0..8%
    of the height instead (their strokes may or may not meet).
    """
    height = int(rng.integers(40, 120))
    inks = [_scale(_tight(d), max(8, round(height * rng.uniform(0.8, 1.2)))) for d in digits]
    low, high = (-0.08, 0.0) if touching else (0.12, 0.5)
    gaps = [round(height * rng.uniform(low, high)) for _ in inks]
    margin = height // 2
    width = 2 * margin + sum(i.shape[1] for i in inks) + sum(gaps[:-1])
    canvas_h = 2 * margin + round(height * 1.2) + height // 4
    canvas = np.zeros((canvas_h, width), np.float32)
    x = margin
    for ink, gap in zip(inks, gaps, strict=True):
        jitter = int(rng.integers(-height // 8, height // 8 + 1))
        bottom = margin + round(height * 1.2) + jitter
        top = max(0, bottom - ink.shape[0])
        h = min(ink.shape[0], canvas_h - top)
        canvas[top : top + h, x : x + ink.shape[1]] = np.maximum(
            canvas[top : top + h, x : x + ink.shape[1]], ink[:h]
        )
        x += ink.shape[1] + gap
    return _gray(canvas, paper=float(rng.uniform(220, 255)), pen=float(rng.uniform(0, 40)))


def render_numbers(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int = 0,
    length: int = 4,
    touching: bool = False,
) -> list[Sample]:
    """``count`` numbers of ``length`` random MNIST digits each; deterministic per seed."""
    rng = np.random.default_rng([seed, 1000 + touching])
    samples = []
    for _ in range(count):
        pick = rng.choice(len(images), size=length, replace=False)
        text = "".join(str(int(labels[i])) for i in pick)
        samples.append((render_number(images[pick], rng, touching), text))
    return samples


# --------------------------------------------------------------------------- the table


def evaluate(
    recognizer: Any, per_condition: int = 100, numbers: int = 100, seed: int = 0
) -> dict[str, tuple[int, int, int]]:
    """Per condition: (agreeing with the label, total, agreeing on the raw 28x28 MNIST digits).

    The last column is the model's own accuracy on the same digits, unrendered: what a
    perfect normalization would reach. Each condition uses its own slice of the test set.
    """
    from digitrec.data import load_dataset

    dataset = load_dataset("mnist")
    images = dataset.test_images.numpy()
    labels = dataset.test_labels.numpy()
    results: dict[str, tuple[int, int, int]] = {}
    for k, name in enumerate(CONDITIONS):
        chunk = slice(k * per_condition, (k + 1) * per_condition)
        samples = render_condition(name, images[chunk], labels[chunk], seed)
        predictions = recognizer.predict_batch([image for image, _ in samples])
        correct = sum(str(p.digit) == truth for p, (_, truth) in zip(predictions, samples, strict=True))
        raw = sum(
            recognizer.predict_pixels(image).digit == label
            for image, label in zip(images[chunk], labels[chunk], strict=True)
        )
        results[name] = (correct, len(samples), raw)
    samples = render_numbers(images, labels, numbers, seed)
    predictions = recognizer.predict_batch([image for image, _ in samples], multi=True)
    correct = sum(p.number == truth for p, (_, truth) in zip(predictions, samples, strict=True))
    results[NUMBERS] = (correct, len(samples), -1)
    return results


def single_digit_rate(results: dict[str, tuple[int, int, int]]) -> float:
    rows = [value for name, value in results.items() if name != NUMBERS]
    return sum(r[0] for r in rows) / sum(r[1] for r in rows)


def format_table(results: dict[str, tuple[int, int, int]]) -> str:
    lines = [f"{'condition':<28} {'agree':>6} {'of':>5} {'rate':>7} {'raw 28x28':>10}"]
    for name, (correct, total, raw) in results.items():
        raw_text = f"{raw / total:>10.1%}" if raw >= 0 else f"{'':>10}"
        lines.append(f"{name:<28} {correct:>6} {total:>5} {correct / total:>7.1%}{raw_text}")
    rows = [value for name, value in results.items() if name != NUMBERS]
    correct, total, raw = (sum(r[i] for r in rows) for i in range(3))
    lines.append(
        f"{'all single-digit conditions':<28} {correct:>6} {total:>5} "
        f"{correct / total:>7.1%}{raw / total:>10.1%}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Robustness table: MNIST test digits rendered like real input."
    )
    parser.add_argument("--run", help="run directory (default: the bundled default model)")
    parser.add_argument("--per-condition", type=int, default=100, help="digits per condition (default: 100)")
    parser.add_argument("--numbers", type=int, default=100, help="4-digit numbers (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="rendering seed (default: 0)")
    args = parser.parse_args()
    from digitrec.recognition import Recognizer

    recognizer = Recognizer.from_run(args.run) if args.run else Recognizer.default()
    started = time.perf_counter()
    results = evaluate(recognizer, args.per_condition, args.numbers, args.seed)
    print(f"model: {recognizer.info()['name']} from {recognizer.info()['source']}")
    print(format_table(results))
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
