"""Drawn training data: digits in the styles MNIST's writers never used, and things that are not digits.

MNIST's 500 writers were American; a 1 with a long up-stroke, a 7 with a bar or a 4 open at
the top hardly occur in it. This module draws such digits, seeded and reproducible, from

* font files installed by Debian packages (``fonts-dejavu-core``, ``fonts-comic-neue``,
  ``fonts-humor-sans``, ``fonts-urw-base35``, ...; README "Training data"), rendered with a
  thicker or thinner pen, slanted, rotated, squeezed or stretched to fill the box;
* vector stroke fonts (the Hershey fonts of ``hershey-fonts-data``) and a small set of
  hand-made stroke shapes for the writing traditions fonts rarely show (1 with a flag and a
  base, 7 with a bar, open 4, 9 with a straight tail, 2 with a loop, flat-topped 3), drawn
  with round pens of any width;

and, for rejection (README "Not a digit"), things that are not digits: letters from the same
fonts (except O, o, I, l, i and j, which are 0 and 1 in many hands), scribbles, shapes, smileys,
hatching and textures. Every sample is rendered as dark ink on light paper, sometimes at a
scanner's low resolution (8x8 or 16x16, upscaled) or binarized, and then brought to 28x28
by the very :func:`digitrec.images.normalize_digit` that ``digitrec predict`` uses, so the
model trains on what it will see.

Deterministic: sample ``i`` of a kind depends only on ``(seed, kind, i)`` and the installed
font files (their names are part of :func:`font_files`' order), never on worker count.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .errors import DigitrecError
from .handwriting import render_digit

FONT_ROOTS = (Path("/usr/share/fonts"),)
HERSHEY_DIR = Path("/usr/share/hershey-fonts")
# Hershey faces with ASCII-ordered glyphs (space first), simplex to triplex, roman, script and cursive.
HERSHEY_FACES = ("futural", "futuram", "rowmans", "rowmand", "rowmant", "scripts", "scriptc", "cursive",
                 "timesr", "timesi", "timesrb", "timesib")  # fmt: skip
# Fonts with no letters or digits worth drawing: symbols, mathematics, music (Euterpe: empty boxes),
# keyboard keys (LinBiolinum_K: a digit in a box), initials (LinLibertine_I: no lower case).
SKIPPED_FONTS = (
    "StandardSymbols",
    "D050000L",
    "DejaVuMathTeXGyre",
    "Euterpe",
    "LinBiolinum_K",
    "LinLibertine_I",
)
# Font families whose letters training never sees: the rejection benchmark's letters come from these
# (handwriting-like and ordinary), so it measures letters in unseen styles. Their digits are used.
HELD_OUT_FONTS = ("Humor-Sans", "Kristi", "ComicNeue", "LiberationSerif", "Cabin")
HELD_OUT_HERSHEY = ("scriptc", "timesrb")
# Letters that are digits in many hands (O and o are 0; I and l are 1; i and j lose their dot as a
# speck and become a 1): never "not a digit".
DIGIT_LIKE_LETTERS = "OoIlij"
LETTERS = "".join(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in DIGIT_LIKE_LETTERS
)
# The Debian packages of the fonts drawn from (.ci/run installs them all; the held-out families are in
# fonts-humor-sans, fonts-kristi, fonts-comic-neue, fonts-liberation2 and fonts-cabin).
FONT_PACKAGES = (
    "fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-comic-neue "
    "fonts-humor-sans fonts-sil-andika fonts-dancingscript fonts-breip fonts-kristi fonts-linuxlibertine "
    "fonts-cabin fonts-quattrocento"
)
HERSHEY_PACKAGE = "hershey-fonts-data"

Stroke = list[tuple[float, float]]  # a pen's path, (x, y) points, y down
Glyph = list[Stroke]

CANVAS = 96  # px a side: glyphs are drawn here, then reduced
OUT = 36  # px a side of the image handed to normalize_digit (as a small scan would be)

# Hand-made strokes in a unit box (x right, y down): the styles fonts rarely have.
_CIRCLE = [(0.45 + 0.3 * math.cos(t), 0.3 + 0.28 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 25)]
_SMALL_CIRCLE = [
    (0.45 + 0.23 * math.cos(t), 0.22 + 0.2 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 25)
]
STROKE_DIGITS: dict[int, list[Glyph]] = {
    1: [
        [[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.2, 0.3), (0.55, 0.0), (0.55, 1.0)]],  # short flag
        [[(0.0, 0.5), (0.6, 0.0), (0.6, 1.0)]],  # long flag (European)
        [[(0.05, 0.45), (0.6, 0.0), (0.6, 1.0)], [(0.2, 1.0), (0.95, 1.0)]],  # flag and base
        [[(0.3, 0.15), (0.55, 0.0), (0.55, 1.0)], [(0.3, 1.0), (0.8, 1.0)]],
        [[(0.2, 0.3), (0.5, 0.0), (0.5, 1.0)], [(0.25, 1.0), (0.75, 1.0)]],  # narrow, flag and foot
        # Narrow 1s, two to three times as tall as wide (optdigits-orig's writers, in felt-tip pens;
        # read as 4 by a model that had only wide ones): a flag and a small foot, and a flag drawn
        # down and back up to the stem.
        [[(0.38, 0.3), (0.62, 0.0), (0.62, 1.0)], [(0.45, 1.0), (0.8, 1.0)]],
        [[(0.6, 0.3), (0.3, 0.55), (0.6, 0.0), (0.6, 1.0)], [(0.42, 1.0), (0.78, 1.0)]],
    ],
    2: [
        [[(0.1, 0.25), (0.3, 0.02), (0.65, 0.0), (0.85, 0.22), (0.8, 0.45), (0.12, 0.95), (0.05, 0.82),
          (0.2, 0.76), (0.32, 0.9), (0.4, 1.0), (0.95, 1.0)]],  # with a loop
        [[(0.1, 0.25), (0.35, 0.0), (0.7, 0.02), (0.85, 0.25), (0.75, 0.5), (0.1, 1.0), (0.95, 1.0)]],
    ],
    3: [
        [[(0.1, 0.0), (0.9, 0.0), (0.4, 0.4), (0.7, 0.45), (0.9, 0.65), (0.85, 0.88), (0.6, 1.0),
          (0.3, 1.0), (0.08, 0.85)]],  # flat top
    ],
    4: [
        [[(0.25, 0.0), (0.05, 0.62), (0.95, 0.62)], [(0.7, 0.15), (0.7, 1.0)]],  # open top
        [[(0.3, 0.0), (0.15, 0.6), (0.9, 0.6)], [(0.65, 0.0), (0.65, 1.0)]],
        [[(0.72, 1.0), (0.72, 0.0), (0.02, 0.66), (0.98, 0.66)]],  # closed
        # Rounded and open at the top (optdigits-orig's writers; read as 6 by a model that never saw it).
        [[(0.45, 0.0), (0.2, 0.4), (0.1, 0.62), (0.3, 0.68), (0.9, 0.62)], [(0.68, 0.3), (0.68, 1.0)]],
        [[(0.5, 0.0), (0.15, 0.55), (0.3, 0.7), (0.7, 0.62), (0.72, 0.3), (0.7, 1.0)]],  # in one stroke
        # A long, nearly upright left stroke rounding into a low bar; the stem starts below the top.
        [[(0.35, 0.0), (0.22, 0.45), (0.15, 0.7), (0.3, 0.8), (0.95, 0.74)], [(0.72, 0.42), (0.72, 1.0)]],
    ],
    5: [
        [[(0.85, 0.0), (0.2, 0.0), (0.15, 0.45), (0.5, 0.38), (0.85, 0.55), (0.85, 0.85), (0.55, 1.0),
          (0.1, 0.9)]],
    ],
    6: [
        [[(0.75, 0.0), (0.3, 0.35), (0.12, 0.7), (0.25, 0.95), (0.6, 1.0), (0.85, 0.8), (0.75, 0.55),
          (0.45, 0.5), (0.15, 0.7)]],
    ],
    7: [
        [[(0.05, 0.05), (0.95, 0.0), (0.4, 1.0)]],
        [[(0.05, 0.05), (0.95, 0.0), (0.4, 1.0)], [(0.3, 0.5), (0.85, 0.5)]],  # with a bar
        [[(0.05, 0.25), (0.08, 0.0), (0.95, 0.0), (0.45, 1.0)], [(0.35, 0.52), (0.9, 0.48)]],
        [[(0.05, 0.05), (0.95, 0.0), (0.35, 1.0)], [(0.45, 0.66), (0.92, 0.62)]],  # a low bar, to the right
    ],
    9: [
        [_CIRCLE, [(0.75, 0.3), (0.75, 1.0)]],  # straight tail
        [_CIRCLE, [(0.75, 0.3), (0.7, 0.8), (0.5, 1.0), (0.25, 0.98), (0.12, 0.85)]],  # curved tail
        [_CIRCLE, [(0.75, 0.3), (0.55, 1.0)]],
        # A small loop over a tail that swings out and hooks back like a 3's lower bowl.
        [_SMALL_CIRCLE, [(0.68, 0.22), (0.8, 0.55), (0.72, 0.85), (0.5, 1.0), (0.18, 0.93)]],
    ],
}  # fmt: skip

NOT_DIGIT_KINDS = ("letter", "scribble", "shape", "smiley", "hatching", "texture")


# --------------------------------------------------------------------------- sources


@lru_cache(maxsize=4)
def font_files(roots: tuple[Path, ...] = FONT_ROOTS) -> tuple[Path, ...]:
    """The installed outline fonts (TrueType, OpenType), sorted by file name, symbol fonts left out."""
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir():
            for path in root.rglob("*"):
                if path.suffix.lower() in (".ttf", ".otf") and not any(s in path.name for s in SKIPPED_FONTS):
                    found.setdefault(path.name, path)
    return tuple(found[name] for name in sorted(found))


def _parse_hershey(text: str) -> list[Glyph]:
    """Glyphs of a .jhf file in file order: each a list of strokes of (x, y) points (y down)."""
    glyphs: list[Glyph] = []
    record = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        record = lines[index]
        count = int(record[5:8])
        while len(record) < 8 + 2 * count and index + 1 < len(lines):  # a glyph may wrap over lines
            index += 1
            record += lines[index]
        pairs = record[10 : 8 + 2 * count]
        strokes: list[Stroke] = [[]]
        for k in range(0, len(pairs) - 1, 2):
            if pairs[k : k + 2] == " R":
                strokes.append([])
            else:
                strokes[-1].append((float(ord(pairs[k]) - ord("R")), float(ord(pairs[k + 1]) - ord("R"))))
        glyphs.append([s for s in strokes if s])
        index += 1
    return glyphs


def letter_fonts(held_out: bool) -> tuple[Path, ...]:
    """The fonts whose letters training sees (``held_out=False``) or only the benchmark (True)."""
    chosen = tuple(p for p in font_files() if any(p.name.startswith(f) for f in HELD_OUT_FONTS) == held_out)
    return chosen or font_files()  # with few fonts installed, both sides use them all


@lru_cache(maxsize=8)
def hershey_glyphs(
    folder: Path = HERSHEY_DIR, faces: tuple[str, ...] = HERSHEY_FACES
) -> dict[str, list[Glyph]]:
    """Per printable ASCII character, its stroke glyph in each installed Hershey face of ``faces``."""
    out: dict[str, list[Glyph]] = {}
    for face in faces:
        path = folder / f"{face}.jhf"
        if not path.is_file():
            continue
        glyphs = _parse_hershey(path.read_text(encoding="ascii", errors="replace"))
        for code, glyph in zip(range(32, 127), glyphs, strict=False):
            if glyph:
                out.setdefault(chr(code), []).append(glyph)
    return out


def check_sources(roots: tuple[Path, ...] = FONT_ROOTS, hershey_dir: Path = HERSHEY_DIR) -> None:
    """Fail with one line naming the Debian packages when the fonts are not installed."""
    if not font_files(roots):
        raise DigitrecError(
            f"drawn training data needs font files under {roots[0]}, found none: "
            f"apt-get install {FONT_PACKAGES} {HERSHEY_PACKAGE}"
        )
    if not hershey_glyphs(hershey_dir):
        raise DigitrecError(
            f"drawn training data needs the Hershey stroke fonts in {hershey_dir}: "
            f"apt-get install {HERSHEY_PACKAGE}"
        )


# --------------------------------------------------------------------------- drawing


def _affine(rng: np.random.Generator, stretch: bool) -> np.ndarray:
    """A random 2x2 map: slant, rotation and aspect (a squeezed or widened digit)."""
    slant = math.tan(math.radians(rng.uniform(-20, 20)))
    angle = math.radians(rng.uniform(-10, 10))
    aspect = rng.uniform(0.55, 1.3) if not stretch else 1.0
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shear = np.array([[1.0, -slant], [0.0, 1.0]])
    return rotate @ shear @ np.diag([aspect, 1.0])


def _draw_strokes(strokes: Sequence[Sequence[tuple[float, float]]], rng: np.random.Generator) -> np.ndarray:
    """Polylines (any units, y down) drawn with a round pen of random width: (CANVAS, CANVAS) float ink."""
    points = [np.asarray(s, dtype=np.float64) for s in strokes]
    jitter = rng.uniform(0.0, 0.035)
    every = np.concatenate(points)
    span = max(float(np.ptp(every[:, 0])), float(np.ptp(every[:, 1])), 1e-6)
    points = [(p - every.min(0)) / span + rng.normal(0, jitter, p.shape) for p in points]
    matrix = _affine(rng, stretch=False)
    points = [p @ matrix.T for p in points]
    every = np.concatenate(points)
    low, high = every.min(0), every.max(0)
    size = max(float((high - low).max()), 1e-6)
    margin = 0.18 * CANVAS
    scale = (CANVAS - 2 * margin) / size
    centre = (low + high) / 2
    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    # Up to 18% of the canvas (28% of the glyph's height): felt-tip pens, as in optdigits-orig.
    width = max(1, round(rng.uniform(0.03, 0.18) * CANVAS))
    for stroke in points:
        xy = [(float(x), float(y)) for x, y in (stroke - centre) * scale + CANVAS / 2]
        if len(xy) > 1:
            draw.line(xy, fill=255, width=width, joint="curve")
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    return np.asarray(image, dtype=np.float32) / 255.0


def _draw_text(char: str, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    """One character of an outline font, slanted, rotated, bolder or lighter: (CANVAS, CANVAS) float ink."""
    font = ImageFont.truetype(str(font_path), size=CANVAS // 2)
    big = Image.new("L", (CANVAS * 2, CANVAS * 2), 0)
    draw = ImageDraw.Draw(big)
    stroke = int(rng.choice([0, 0, 1, 2, 3]))  # an outline of this many px makes the pen bolder
    draw.text((CANVAS // 2, CANVAS // 2), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    if rng.random() < 0.2:
        big = big.filter(ImageFilter.MinFilter(3))  # a lighter pen
    box = big.getbbox()
    if box is None:
        return np.zeros((CANVAS, CANVAS), np.float32)
    glyph = big.crop(box)
    matrix = _affine(rng, stretch=False)
    w, h = glyph.size
    side = int(2 * max(w, h)) + 4
    holder = Image.new("L", (side, side), 0)
    holder.paste(glyph, ((side - w) // 2, (side - h) // 2))
    inverse = np.linalg.inv(matrix)
    c = side / 2
    offset = np.array([c, c]) - inverse @ np.array([c, c])
    coefficients = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = holder.transform((side, side), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    box = warped.getbbox() or (0, 0, side, side)
    glyph = warped.crop(box)
    w, h = glyph.size
    inner = CANVAS * 0.64
    factor = inner / max(w, h)
    glyph = glyph.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _fill_box(ink: np.ndarray) -> np.ndarray:
    """Stretch the ink's bounding box to the square, as scanners' size normalization did (USPS)."""
    rows, cols = np.where(ink.any(axis=1))[0], np.where(ink.any(axis=0))[0]
    if not len(rows):
        return ink
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    inner = round(CANVAS * 0.64)
    image = Image.fromarray(crop, mode="F").resize((inner, inner), Image.Resampling.BILINEAR)
    out = np.zeros_like(ink)
    start = (CANVAS - inner) // 2
    out[start : start + inner, start : start + inner] = np.asarray(image)
    return out


def to_paper(
    ink: np.ndarray,
    rng: np.random.Generator,
    *,
    stretch: float = 0.15,
    size: int = OUT,
    low_resolution: float = 0.12,
    binarize: float = 0.2,
) -> Image.Image:
    """Ink (CANVAS, CANVAS) in [0, 1] -> a grayscale scan ``size`` px a side, dark ink on light paper.

    With these probabilities: stretched to fill the box, at a scanner's low resolution (8x8 or
    16x16, then upscaled), binarized.
    """
    if rng.random() < stretch:
        ink = _fill_box(ink)
    image = Image.fromarray(np.clip(ink, 0, 1) * 255.0, mode="F").convert("L")
    if rng.random() < low_resolution:
        low = 8 if rng.random() < 0.4 else 16
        image = image.resize((low, low), Image.Resampling.BOX)
        image = image.resize(
            (size, size), Image.Resampling.BILINEAR if rng.random() < 0.5 else Image.Resampling.NEAREST
        )
    else:
        image = image.resize(
            (size, size), Image.Resampling.BOX if size <= CANVAS else Image.Resampling.BICUBIC
        )
    values = np.asarray(image, dtype=np.float32) / 255.0
    if rng.random() < binarize:
        values = (values > rng.uniform(0.3, 0.6)).astype(np.float32)
    paper = rng.uniform(0.8, 1.0)
    pen = rng.uniform(0.0, 0.25)
    gray = paper - values * (paper - pen) + rng.normal(0, 0.01, values.shape)
    return Image.fromarray((np.clip(gray, 0, 1) * 255.0 + 0.5).astype(np.uint8), mode="L")


def rescan(ink: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A real digit's ink map (H, W) uint8, 255 = ink, as another scanner's pipeline would deliver it.

    Digit sets other than MNIST were scanned on coarser grids and size-normalized differently:
    Semeion's digits are stretched to fill a 16x16 box and binarized, USPS's are 16x16 gray,
    optdigits' 32x32 bitmaps are binary and the UCI 8x8 version counts the ink of each 4x4 block.
    MNIST's own writers' digits, passed through such a pipeline at random, teach the model those
    presentations with real strokes: a grid of 8, 12, 16 or 32 cells, half the time stretched to
    fill it (else the aspect kept), binarized at a random threshold 60% of the time (before the
    block counting), then drawn dark on light paper, 2-8 px a cell, as a user's enlargement of the
    scan shows it.
    """
    values = np.asarray(ink, np.float32) / 255.0
    rows, cols = np.where(values.max(axis=1) > 0.1)[0], np.where(values.max(axis=0) > 0.1)[0]
    if len(rows):
        values = values[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    grid = int(rng.choice([8, 12, 16, 16, 32]))
    fine = 4 * grid if grid <= 16 else grid  # binarized at 4x the grid, then counted in 4x4 blocks
    height, width = values.shape
    if rng.random() < 0.5:  # stretched to fill the box
        size = (fine, fine)
    else:
        longer = max(height, width)
        size = (max(1, round(fine * width / longer)), max(1, round(fine * height / longer)))
    scaled = np.asarray(Image.fromarray(values, mode="F").resize(size, Image.Resampling.BILINEAR))
    box = np.zeros((fine, fine), np.float32)
    top, left = (fine - size[1]) // 2, (fine - size[0]) // 2
    box[top : top + size[1], left : left + size[0]] = scaled
    if rng.random() < 0.6:
        box = (box > rng.uniform(0.3, 0.6)).astype(np.float32)
    if fine > grid:
        box = box.reshape(grid, fine // grid, grid, fine // grid).mean(axis=(1, 3))
    scale = int(rng.integers(2, 9))  # px a cell
    resample = Image.Resampling.BICUBIC if rng.random() < 0.7 else Image.Resampling.NEAREST
    # Rounded on the paper's side (255 - ink), as the bundled model's training data was.
    paper = (255.0 - np.clip(box, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    return render_digit(255 - paper, scale, resample=resample)


# --------------------------------------------------------------------------- digits and non-digits


def draw_digit(label: int, rng: np.random.Generator) -> Image.Image:
    """One digit ``label`` as a small scan, from a font, a Hershey face or a hand-made stroke shape."""
    roll = rng.random()
    if roll < 0.45:
        fonts = font_files()
        ink = _draw_text(str(label), fonts[int(rng.integers(len(fonts)))], rng)
    elif roll < 0.65 or label not in STROKE_DIGITS:
        faces = hershey_glyphs()[str(label)]
        ink = _draw_strokes(faces[int(rng.integers(len(faces)))], rng)
    else:
        shapes = STROKE_DIGITS[label]
        ink = _draw_strokes(shapes[int(rng.integers(len(shapes)))], rng)
    return to_paper(ink, rng)


def _scribble(rng: np.random.Generator) -> Glyph:
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        knots = rng.uniform(0, 1, (int(rng.integers(4, 9)), 2))
        t = np.linspace(0, 1, 12 * len(knots))
        xs = np.interp(t, np.linspace(0, 1, len(knots)), knots[:, 0])
        ys = np.interp(t, np.linspace(0, 1, len(knots)), knots[:, 1])
        for _ in range(3):  # smooth the corners a little, as a hand does
            xs[1:-1] = (xs[:-2] + xs[1:-1] + xs[2:]) / 3
            ys[1:-1] = (ys[:-2] + ys[1:-1] + ys[2:]) / 3
        strokes.append(list(zip(xs.tolist(), ys.tolist(), strict=True)))
    return strokes


def _shape(rng: np.random.Generator) -> Glyph:
    kind = int(rng.integers(6))
    if kind == 0:  # polygon: triangle to hexagon
        n = int(rng.integers(3, 7))
        angles = np.linspace(0, 2 * math.pi, n + 1) + rng.uniform(0, math.pi)
        return [[(math.cos(a), math.sin(a)) for a in angles]]
    if kind == 1:  # star
        n = int(rng.integers(5, 8))
        angles = np.linspace(0, 2 * math.pi, 2 * n + 1)
        return [[(math.cos(a) * (1 if i % 2 == 0 else 0.45), math.sin(a) * (1 if i % 2 == 0 else 0.45))
                 for i, a in enumerate(angles)]]  # fmt: skip
    if kind == 2:  # cross or asterisk
        n = int(rng.integers(2, 5))
        return [[(math.cos(a), math.sin(a)), (-math.cos(a), -math.sin(a))]
                for a in np.linspace(0, math.pi, n, endpoint=False) + rng.uniform(0, 1)]  # fmt: skip
    if kind == 3:  # arrow
        return [[(0.0, 0.5), (1.0, 0.5)], [(0.7, 0.2), (1.0, 0.5), (0.7, 0.8)]]
    if kind == 4:  # heart
        t = np.linspace(0, 2 * math.pi, 40)
        return [list(zip((16 * np.sin(t) ** 3).tolist(),
                         (-(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))).tolist(),
                         strict=True))]  # fmt: skip
    # grid: a tic-tac-toe board
    return [
        [(0.33, 0.0), (0.33, 1.0)],
        [(0.66, 0.0), (0.66, 1.0)],
        [(0.0, 0.33), (1.0, 0.33)],
        [(0.0, 0.66), (1.0, 0.66)],
    ]


def _smiley(rng: np.random.Generator) -> Glyph:
    t = np.linspace(0, 2 * math.pi, 40)
    face = list(zip(np.cos(t).tolist(), np.sin(t).tolist(), strict=True))
    eyes = [[(-0.35, -0.3), (-0.35, -0.2)], [(0.35, -0.3), (0.35, -0.2)]]
    bend = rng.uniform(-0.3, 0.3)
    s = np.linspace(-0.5, 0.5, 12)
    mouth = list(zip(s.tolist(), (0.35 + bend * (1 - 4 * s * s)).tolist(), strict=True))
    return [face, *eyes, mouth]


def _hatching(rng: np.random.Generator) -> Glyph:
    strokes = []
    for angle in rng.uniform(0, math.pi, int(rng.integers(1, 3))):
        d = np.array([math.cos(angle), math.sin(angle)])
        n = np.array([-d[1], d[0]])
        for k in np.linspace(-0.5, 0.5, int(rng.integers(4, 9))):
            a, b = n * k - d * 0.5, n * k + d * 0.5
            strokes.append([(float(a[0]), float(a[1])), (float(b[0]), float(b[1]))])
    return strokes


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A photo-like texture (blotches, grain, weave) filling most of the canvas: float ink."""
    noise = rng.normal(0, 1, (CANVAS // 4, CANVAS // 4)).astype(np.float32)
    image = Image.fromarray(noise, mode="F").resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
    values = np.asarray(image)
    kind = int(rng.integers(3))
    if kind == 1:  # grain: stripes bent by the noise
        yy = np.arange(CANVAS, dtype=np.float32)[:, None]
        values = np.sin(yy * rng.uniform(0.3, 0.8) + 3 * values)
    elif kind == 2:  # weave
        yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
        f = rng.uniform(0.3, 0.9)
        values = np.sin(xx * f) * np.sin(yy * f) + 0.3 * values
    values = (values - values.min()) / max(float(np.ptp(values)), 1e-6)
    margin = int(CANVAS * rng.uniform(0.05, 0.2))
    out = np.zeros((CANVAS, CANVAS), np.float32)
    out[margin:-margin, margin:-margin] = values[margin:-margin, margin:-margin]
    return out


def draw_not_digit(kind: str, rng: np.random.Generator, held_out: bool = False) -> Image.Image:
    """One thing that is not a digit, as a small scan: ``kind`` is one of :data:`NOT_DIGIT_KINDS`.

    ``held_out``: letters from the fonts training never sees (the benchmark's), not the others."""
    if kind == "letter":
        char = LETTERS[int(rng.integers(len(LETTERS)))]
        hershey = (
            HELD_OUT_HERSHEY if held_out else tuple(f for f in HERSHEY_FACES if f not in HELD_OUT_HERSHEY)
        )
        ink = letter_ink(char, rng, letter_fonts(held_out), hershey)
    else:
        ink = not_digit_ink(kind, rng)
    return to_paper(ink, rng, stretch=0.05)


def not_digit_ink(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The ink (CANVAS, CANVAS) of a non-letter non-digit: scribble, shape, smiley, hatching, texture."""
    if kind == "texture":
        return _texture(rng)
    makers: dict[str, Callable[[np.random.Generator], Glyph]] = {
        "scribble": _scribble, "shape": _shape, "smiley": _smiley, "hatching": _hatching,
    }  # fmt: skip
    if kind not in makers:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(NOT_DIGIT_KINDS)})")
    return _draw_strokes(makers[kind](rng), rng)


def letter_ink(
    char: str, rng: np.random.Generator, fonts: Sequence[Path], hershey_faces: tuple[str, ...]
) -> np.ndarray:
    """The ink of one letter from a random one of ``fonts`` or ``hershey_faces`` (30% strokes)."""
    faces = hershey_glyphs(HERSHEY_DIR, hershey_faces).get(char, [])
    if faces and rng.random() < 0.3:
        return _draw_strokes(faces[int(rng.integers(len(faces)))], rng)
    return _draw_text(char, fonts[int(rng.integers(len(fonts)))], rng)


def sample_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``kind``: independent of batching and worker count."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), index])
