"""Images of handwriting in, MNIST-style 28x28 digits out.

Two public functions, shared by the CLI, the server and the Python API; both take
anything :func:`digitrec.image_io.load_image` accepts, and decode it through that
function (the untrusted-input boundary, with its limits and :class:`ImageError`):

- :func:`normalize_digit` turns a picture of one digit into what an MNIST model
  expects (see its docstring for the steps), or ``None`` when there is no digit.
- :func:`segment_digits` splits a row of digits (a postcode, a number) into
  normalized digits with their bounding boxes, left to right.

Everything here is NumPy, SciPy, Pillow and OpenCV (``opencv-python-headless``, for
connected components, morphology and filters: 5-15x faster than SciPy's on these sizes);
no torch, so a non-torch runtime can use the same normalization. Large JPEGs are decoded
at reduced scale (:func:`digitrec.image_io.load_picture`), as they are averaged
down to :data:`ANALYSIS_PIXELS` anyway.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from .image_io import Picture, load_picture

# SciPy's ndimage is imported in the functions that use it: it takes 0.3 s to import (more
# than reading a drawing), and a clean drawing of one digit never needs it.

# The MNIST geometry: the digit fits a 20x20 box, pasted into 28x28 so that its
# centre of mass lands on pixel (14, 14) (measured on MNIST's training set: 13.99, 14.00).
SIZE = 28
BOX = 20
CENTRE = 14.0

# Analysis resolution: large images are reduced (averaging whole blocks of pixels) to at most
# this many pixels before the ink is found; digits are then cropped from this map.
ANALYSIS_PIXELS = 1_000_000
# A large JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps this many
# pixels: a 12-megapixel photo at 1/4 (0.75 Mpx) decodes in 2/5 of the time, and needs no
# further averaging down.
JPEG_DRAFT_PIXELS = ANALYSIS_PIXELS // 2
# Above this many analysis pixels, some statistics are taken on every other row and column.
LARGE = 250_000
# Stroke processing happens with the digit's longer side at WORK px (4x the final 20).
WORK = 4 * BOX
# normalize_digit first looks at a picture coarsely: a canvas drawing (8-bit colour, more than
# HALVE_ABOVE and at most LARGE pixels) at half resolution, a larger picture (a photo) area-
# averaged down to at most LARGE pixels. It looks again at full analysis resolution only when
# the digit spans under SMALLEST_COARSE px there (the work size at full resolution for a halved
# drawing; twice MNIST's 20 px box).
HALVE_ABOVE = 60_000
SMALLEST_COARSE = WORK // 2
# MNIST's median stroke width is 2.8 px for a digit 20 px tall (2*area/boundary of
# the >0.5 mask), i.e. 14% of the digit's height. Thinner strokes are thickened. Thicker
# ones are kept: the default recipe draws felt-tip pens (a stroke up to 28% of the glyph's
# height). Thinning a narrow felt-tip glyph to MNIST's width (optdigits-orig's flagged 1s)
# helped a model that never saw such pens; for the models trained since, it changed nothing
# or cost (bundled model of 2026-12-02: optdigits-orig 97.43% thinned, 97.47% not; 98.85%
# and 99.41% of its digits answered).
MNIST_STROKE = 0.14
# Ink darker (less contrasted) than this fraction of full scale is not a digit.
MIN_CONTRAST = 0.08
# A digit's bounding box must be at least this fraction of the image's longer side
# (and at least MIN_DIGIT_PX), else the image is "near blank": a speck, not a digit.
MIN_DIGIT_FRACTION = 0.015
MIN_DIGIT_PX = 4
# A group of ink this much wider than a digit is tall is read as touching digits
# (0.4% of MNIST digits are 1.5x wider than tall; two touching digits are 1.2-2x).
SPLIT_RATIO = 1.6
# Overlapping pieces at least this fraction of a digit's height are each digit-sized.
TALL = 0.6
# A group this much wider than tall is also offered to the recognizer as touching digits.
CONSIDER_SPLIT = 1.1
# A connected piece of ink with less than this fraction of the biggest piece's ink is a speck.
SPECK_FRACTION = 0.06
# Ink wider than twice the strokes' width at this level or more (of full ink) is a shadow.
SHADOW_LEVEL = 0.15
# A region whose ink above half intensity is more than this many times its solid ink is soft.
SOFT_RATIO = 3.0
# A region whose widest point (half-width) is over this fraction of its longer side is a blob,
# not strokes (a digit's strokes: 0.10-0.15 of it, a marker's up to 0.2; a shadow 0.35).
STROKE_LIKE = 0.25


def one_thread_per_process() -> None:
    """For a process in a pool of them (``predict --jobs``, the server's decoders, the training
    mixture's draw): OpenCV without a thread pool of its own. Its threads split an image's
    work but cost more CPU in all (one 280x280 drawing: 3.4-4.3 ms of CPU with 2 threads
    against 2.9-3.5 ms with 1, three interleaved runs), which the other processes need."""
    cv2.setNumThreads(1)


# --------------------------------------------------------------------------- to float


def _standard_mode(image: Image.Image) -> Image.Image:
    """The image in one of L, LA, RGB, RGBA or F (16-bit and 32-bit data as F in [0, 1])."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("PA", "RGBa"):
        return image.convert("RGBA")
    if mode == "La":
        return image.convert("LA")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I"):
        raw = np.asarray(image.convert("I") if mode != "I" else image, dtype=np.float32)
        # 16-bit data is scaled from 0..65535; an "I" image that never exceeds 255 is 8-bit data.
        scale = 65535.0 if (mode != "I" or raw.max() > 255) else 255.0
        return Image.fromarray(np.clip(raw / scale, 0.0, 1.0), mode="F")
    if mode == "F":
        raw = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(raw if raw.max() <= 1.0 else raw / 255.0, 0.0, 1.0), mode="F")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...


def _is_gray(array: np.ndarray) -> bool:
    """Whether an (H, W, 3) image is gray: channels differ by at most 1/255 everywhere.

    A colour photo differs almost anywhere, so a sparse sample (every 7th row) answers
    most calls before the full check.
    """
    for part in (array[::7], array):
        if np.abs(part[:, :, 0] - part[:, :, 1]).max() >= 2.0 / 255.0:
            return False
        if np.abs(part[:, :, 1] - part[:, :, 2]).max() >= 2.0 / 255.0:
            return False
    return True


@dataclass
class _Channels:
    scale: float  # analysis pixels per pixel of the given image (<= 1)
    # (H, W) uint8 when the image is 8-bit gray without transparency (a canvas drawing, a
    # scan): values == levels / 255; None otherwise.
    levels: np.ndarray | None
    # (H, W, 3) uint8 when the image is 8-bit colour without transparency (the drawing
    # page's dark blue ink on white): values == rgb / 255; None otherwise.
    rgb: np.ndarray | None = None
    _values: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        """(H, W, C) float32 in [0, 1], C = 1 (gray) or 3 (colour); from the 8-bit data on
        first use (the 8-bit path on flat paper never needs it)."""
        if self._values is None:
            eight_bit = self.levels[:, :, None] if self.levels is not None else self.rgb
            assert eight_bit is not None
            self._values = np.ascontiguousarray(eight_bit, dtype=np.float32) / 255.0
        return self._values


def _is_gray_8bit(rgb: np.ndarray) -> bool:
    """:func:`_is_gray` on 8-bit (H, W, 3) data: channels differ by at most 1 level."""
    red, green, blue = cv2.split(rgb)
    return max(cv2.norm(red, green, cv2.NORM_INF), cv2.norm(green, blue, cv2.NORM_INF)) <= 1


def _pixel_count(picture: Picture) -> int:
    """Width x height of a decoded picture (a PIL image or 8-bit pixels)."""
    if isinstance(picture, np.ndarray):
        return int(picture.shape[0] * picture.shape[1])
    return picture.width * picture.height


# The mode of 8-bit pixels by their channel count ((H, W) is gray).
_ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _to_channels(image: Picture, max_pixels: int) -> _Channels:
    """(H, W, C) float32 in [0, 1], C = 1 (gray) or 3 (colour), transparency composited,
    area-averaged down to at most ``max_pixels``; and the scale factor (<= 1).

    The reduction happens first, in Pillow (alpha premultiplied), so a 40-megapixel photo
    costs little: an integer block average (a 12-megapixel photo: 4x4 blocks, 0.75 Mpx).
    Transparency goes onto the *right* background: where most of the image is transparent
    (a drawing on a transparent canvas), the background is the opposite of the ink's
    brightness; where most of it is opaque (a photo with a transparent corner), it is the
    opaque pixels' median, i.e. more paper. 8-bit data without transparency
    stays 8-bit (:class:`_Channels`): float only when needed.
    """
    scale = 1.0
    if isinstance(image, np.ndarray) and _pixel_count(image) <= max_pixels:
        # 8-bit pixels (a plain PNG, an 8-bit array): as they are, with no copy through Pillow.
        raw, mode = image, _ARRAY_MODES[1 if image.ndim == 2 else image.shape[2]]
    else:
        image = _standard_mode(Image.fromarray(image) if isinstance(image, np.ndarray) else image)
        if image.width * image.height > max_pixels:
            # The smallest whole factor that fits: each analysis pixel the mean of a factor x
            # factor block (Pillow's reduce: 2.5x faster than resizing to an exact pixel count,
            # and the same scale as a JPEG decoded at 1/2, 1/4 or 1/8).
            factor = int(np.ceil((image.width * image.height / max_pixels) ** 0.5))
            width = image.width
            image = image.reduce(factor)
            scale = image.width / width
        raw, mode = np.asarray(image), image.mode
    if mode == "L":
        return _Channels(scale, raw)
    # Opaque: alpha / 255 >= 0.99 everywhere, as the compositing below would leave it.
    if mode == "RGB" or (mode == "RGBA" and cv2.minMaxLoc(cv2.extractChannel(raw, 3))[0] >= 253):
        # OpenCV's channel copies: NumPy's strided copy of a 280x280x4 image took 0.6 ms,
        # OpenCV's 0.01 ms.
        rgb = np.ascontiguousarray(raw) if mode == "RGB" else cv2.cvtColor(raw, cv2.COLOR_RGBA2RGB)
        if _is_gray_8bit(rgb):
            return _Channels(scale, cv2.extractChannel(rgb, 0))
        return _Channels(scale, None, rgb)
    array = raw.astype(np.float32)
    if mode != "F":
        array = array / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    alpha: np.ndarray | None = None
    if mode in ("LA", "RGBA"):
        array, alpha = array[:, :, :-1], array[:, :, -1]
    if array.shape[2] == 3 and _is_gray(array):
        array = array[:, :, :1]  # a colour image that is really gray
    if alpha is not None and alpha.min() < 0.99:
        opaque = alpha >= 0.5
        if opaque.mean() < 0.5:
            ink = array[opaque].mean() if opaque.any() else 0.0
            background = np.full(array.shape[2], 1.0 if ink < 0.5 else 0.0, np.float32)
        else:
            background = np.median(array[opaque], axis=0).astype(np.float32)
        array = array * alpha[:, :, None] + background * (1.0 - alpha[:, :, None])
    return _Channels(scale, None, None, np.ascontiguousarray(array, dtype=np.float32))


# --------------------------------------------------------------------------- ink map


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 * q)`` (linear interpolation), without a full sort.

    np.median and np.percentile sort more than they need to (a 1-megapixel median: 10 ms
    against 1.3 ms for a partition). Small arrays are sorted: NumPy's partition slows down 20x
    on many equal values (flat paper's zeros), its sort does not, and below ~200k values the
    sort costs well under a millisecond. Larger ones: :func:`_ranks`.
    """
    flat = values.ravel()
    position = q * (flat.size - 1)
    lo = int(position)
    if flat.size <= SORT_BELOW:
        part = np.sort(flat)
        low, high = float(part[lo]), float(part[min(lo + 1, flat.size - 1)])
    else:
        low, high = _ranks(flat, lo)
    if position == lo:
        return low
    return low + (high - low) * (position - lo)


# _quantile sorts arrays up to this many values, and selects in larger ones.
SORT_BELOW = 200_000
# _ranks brackets a rank with a sorted sample of every SAMPLE_STEP-th value.
SAMPLE_STEP = 32


def _ranks(flat: np.ndarray, k: int) -> tuple[float, float]:
    """The values of rank k and k + 1 (0-based, ascending; k + 1 capped at the last) of a large
    1-D array: exactly what a full sort would put there.

    Sample-select: a sorted sample of every SAMPLE_STEP-th value brackets rank k between two of
    its values, four standard deviations of the sample's quantile either side; only the values
    between them are sorted (a few percent of the array), those below are counted. On the
    250,000-value maps of a photo's coarse look, 0.4-0.75 ms against 1.7-2.7 ms for
    np.partition at one rank plus the minimum above it (the way before). When the bracket
    misses the rank (ties wider than it), or holds too much, the partition does it.
    """
    size = flat.size
    sample = np.sort(flat[::SAMPLE_STEP])
    centre = (k + 0.5) * sample.size / size
    spread = 4.0 * np.sqrt(sample.size * (k / size) * (1.0 - k / size)) + 4.0
    first, last = int(centre - spread), int(centre + spread) + 1
    if first >= 0 and last < sample.size:
        lower, upper = sample[first], sample[last]
        below = int(np.count_nonzero(flat < lower))
        band = flat[(flat >= lower) & (flat <= upper)]
        rank = k - below
        if rank >= 0 and rank + 1 < band.size <= size // 8:
            band = np.sort(band)
            return float(band[rank]), float(band[rank + 1])
    part = np.partition(flat, k)
    return float(part[k]), float(part[k + 1 :].min()) if k + 1 < size else float(part[k])


def _block_medians(values: np.ndarray, step: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Median of each step x step block, (grid_h * grid_w, C); a block of more than 8x8
    pixels is sampled on a lattice of about 8x8 (a paper block's median is the same; 4x
    less to sort at 1 megapixel)."""
    channels = values.shape[2]
    stride = max(1, round(step / 8))
    side = step // stride
    blocks = values[: grid_h * step : stride, : grid_w * step : stride][: grid_h * side, : grid_w * side]
    blocks = blocks.reshape(grid_h, side, grid_w, side, channels).transpose(0, 2, 4, 1, 3)
    blocks = blocks.reshape(grid_h * grid_w, channels, side * side)
    n = side * side
    part = np.partition(blocks, n // 2, axis=2)  # one rank: see _quantile
    upper = part[:, :, n // 2]
    lower = upper if n % 2 else part[:, :, : n // 2].max(axis=2)
    return 0.5 * (lower + upper)  # (G, C)


def _flat_paper(channels: _Channels, counts: np.ndarray | None = None) -> np.ndarray | None:
    """The paper's colour (C,) when the background is one flat colour, else None.

    A drawing from a canvas, a clean scan, a composited transparent drawing: at least
    half of the pixels lie within 1/255 of the commonest value in every channel. The
    robust surface fit would find that same constant, at 10x the cost. A lighting
    gradient, a shadow, grain or JPEG noise spread the paper's values and fail the test.
    ``counts``: the histogram of the 8-bit gray levels, if the picture has them; 8-bit
    colour is read as it is (no float values are made for either).
    """
    if counts is not None:
        level = int(np.argmax(counts))
        if counts[max(0, level - 1) : level + 2].sum() < 0.5 * counts.sum():
            return None
        return np.array([level / 255.0], np.float32)
    data = channels.rgb
    if data is None:
        data = np.rint(channels.values * 255.0).astype(np.uint8)
    # Large pictures: a sparse sample first (every 4th pixel of every 4th row) turns most
    # photos away cheaply. In each, the paper's colour (the commonest level per channel) is
    # read from every 4th pixel of every 4th row, and the test below is on every pixel: the
    # same mode when paper is most of the picture, for a sixteenth of the counting.
    for sample in (data[::4, ::4], data) if data.shape[0] * data.shape[1] > LARGE else (data,):
        sample = np.ascontiguousarray(sample)
        sparse = sample[::4, ::4] if sample.shape[0] * sample.shape[1] > 4096 else sample
        sparse = sparse.reshape(-1, data.shape[2])
        levels = [int(np.argmax(np.bincount(sparse[:, c], minlength=256))) for c in range(data.shape[2])]
        # Within one level of the paper's colour in every channel, in one pass.
        lower = np.array([max(0, level - 1) for level in levels], np.uint8)
        upper = np.array([min(255, level + 1) for level in levels], np.uint8)
        if cv2.countNonZero(cv2.inRange(sample, lower, upper)) < 0.5 * sample.shape[0] * sample.shape[1]:
            return None
    return np.array(levels, np.float32) / 255.0


# A flat desk around a photographed sheet, in the background fit's blocks (:func:`_flat_border`):
# blocks within DESK_LEVELS of a plane fitted to the edge, on at least half of the edge, reaching
# in from it; the sheet (the largest piece of the rest) at least SHEET_SHARE of the picture,
# DESK_CONTRAST lighter, SHEET_SOLIDITY of its convex hull, with under ENCLOSED_SHARE of the
# blocks at the desk's colour inside it.
DESK_LEVELS = 3
DESK_CONTRAST = 0.1
SHEET_SHARE = 0.3
SHEET_SOLIDITY = 0.9
ENCLOSED_SHARE = 0.02


def _flat_border(blocks: np.ndarray) -> np.ndarray | None:
    """The blocks of a flat desk around a sheet, (grid_h, grid_w) bool, or None.

    ``blocks``: (grid_h, grid_w, C) block medians. A desk is one colour (within DESK_LEVELS of a
    plane: light may fall off across it) along at least half of the picture's edge, connected
    to it. The sheet, the largest piece of the rest, covers SHEET_SHARE of the picture, its
    median DESK_CONTRAST lighter than the desk, and is convex (SHEET_SOLIDITY of its hull: a
    quadrilateral, not strokes); it holds almost nothing of the desk's colour (where that
    colour is also enclosed by something else, it is paper around and inside bold strokes:
    light ink on dark paper cut out close, the insides of its loops; a drawn ring, a face) and
    something DESK_CONTRAST darker than itself away from its edge (the digit).
    """
    from scipy import ndimage as ndi

    grid_h, grid_w, _ = blocks.shape
    if min(grid_h, grid_w) < 4:
        return None
    edge = np.zeros((grid_h, grid_w), bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    # The desk's colour, a plane over the picture (light falling off across it): fitted to the
    # edge's blocks, twice more to the half of them nearest the last plane (the desk holds at
    # least half the edge; the sheet's blocks there are the rest), then to those within
    # 2 DESK_LEVELS of it.
    gy, gx = np.mgrid[0:grid_h, 0:grid_w]
    design = np.stack([np.ones(gy.shape), 2.0 * gy / grid_h - 1.0, 2.0 * gx / grid_w - 1.0], axis=2)
    ring, ring_design = blocks[edge], design[edge]  # (R, C), (R, 3)
    kept = np.ones(len(ring), bool)
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(ring_design[kept], ring[kept], rcond=None)  # (3, C)
        residual = np.abs(ring - ring_design @ coef).max(axis=1)
        kept = residual <= np.median(residual)
    kept = residual <= 2 * DESK_LEVELS / 255.0
    if kept.sum() < 0.5 * len(ring):
        return None
    coef, *_ = np.linalg.lstsq(ring_design[kept], ring[kept], rcond=None)
    near = np.abs(blocks - design @ coef).max(axis=2) <= DESK_LEVELS / 255.0  # (grid_h, grid_w)
    if near[edge].mean() < 0.5:
        return None
    level = coef[0]  # (C,): the desk's colour at the picture's centre
    labels, _ = ndi.label(near)
    desk = np.isin(labels, np.unique(labels[edge & near]))
    if np.count_nonzero(near & ~desk) > ENCLOSED_SHARE * desk.size:
        return None
    # The sheet: the largest piece of the rest. Blocks of a grainy desk that stray past
    # DESK_LEVELS are desk too.
    pieces, count = ndi.label(~desk)
    if count == 0:
        return None
    sheet = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel(), minlength=count + 1)[1:]))
    if np.count_nonzero(sheet) < SHEET_SHARE * desk.size:
        return None
    desk = ~sheet
    paper = np.median(blocks[sheet], axis=0)  # (C,)
    if float((paper - level).mean()) < DESK_CONTRAST:
        return None  # the desk is darker than the sheet (a darker "sheet" is a tight crop's ink)
    # A sheet is a quadrilateral, convex; bold light strokes cut out close, with the dark paper
    # between them, are not.
    hull = cv2.convexHull(cv2.findNonZero(sheet.view(np.uint8)))  # (K, 1, 2): block centres
    # The hull's area through the blocks' centres, plus the half block along its perimeter.
    area = cv2.contourArea(hull) + 0.5 * cv2.arcLength(hull, True) + 1.0
    if np.count_nonzero(sheet) < SHEET_SOLIDITY * area:
        return None
    # The digit on the sheet, apart from its edge: darker blocks in the sheet less its rim (light
    # strokes cut out close are lighter than the dark paper between them, and darker only at
    # their soft edges, next to that paper).
    inner = ndi.binary_erosion(sheet, iterations=2)
    if not (inner & ((paper - blocks).mean(axis=2) >= DESK_CONTRAST)).any():
        return None
    return desk


def _fit_background(values: np.ndarray) -> _Background:
    """Robust smooth background per channel of (H, W, C) values: the paper under uneven
    lighting, as a :class:`_Background` (evaluated at pixels by its ``plane`` method).

    Works on a coarse grid (block medians, at most 64 blocks a side): a quadratic surface
    is fitted and refitted without the blocks that stand out (ink, of either polarity),
    then what the quadratic misses (a soft shadow) is added back from the remaining paper
    blocks by normalized Gaussian smoothing (scale: 1/8 of the image). Ink blocks and
    their neighbours never contribute, so strokes do not leak into the background.
    """
    from scipy import ndimage as ndi

    height, width, channels = values.shape
    step = max(1, int(np.ceil(max(height, width) / 64)))
    rows, cols = height // step * step, width // step * step
    if rows == 0 or cols == 0:
        step, rows, cols = 1, height, width
    grid_h, grid_w = rows // step, cols // step
    coarse = _block_medians(values, step, grid_h, grid_w)  # (G, C)
    gy, gx = np.mgrid[0:grid_h, 0:grid_w]
    # Block centres in [-1, 1] image coordinates.
    ys = ((gy.ravel() + 0.5) * step / height) * 2 - 1
    xs = ((gx.ravel() + 0.5) * step / width) * 2 - 1

    def design(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)

    basis = design(ys, xs)
    # A flat desk around a sheet is no part of the paper: it is left out of the fit, and the ink
    # map makes its pixels paper (_Background.desk_pixels). Fitted with the sheet, when it is
    # near half the blocks (the median falls between the two), the surface ramped from one to
    # the other, and the desk's side of the ramp stayed as a band of faint ink along the sheet.
    desk = _flat_border(coarse.reshape(grid_h, grid_w, channels))
    paper_like = np.ones(len(coarse), bool) if desk is None else ~desk.ravel()
    # Start from a flat background (the median: paper is most of a picture of a digit).
    coef = np.zeros((6, channels))
    coef[0] = np.median(coarse[paper_like], axis=0)
    keep = paper_like
    for _ in range(4):
        residual = np.linalg.norm(coarse - basis @ coef, axis=1)
        sigma = max(1.4826 * float(np.median(residual[paper_like])), 2.0 / 255.0)
        keep = (residual < 2.5 * sigma) & paper_like
        if keep.sum() < 12:
            break
        coef, *_ = np.linalg.lstsq(basis[keep], coarse[keep], rcond=None)
    # Local correction from paper blocks only (ink blocks and their neighbours excluded).
    paper = ~ndi.binary_dilation(~keep.reshape(grid_h, grid_w), structure=np.ones((3, 3), bool))
    rest = (coarse - basis @ coef).reshape(grid_h, grid_w, channels)
    spread = max(grid_h, grid_w) / 8.0
    weight = ndi.gaussian_filter(paper.astype(np.float64), spread, mode="nearest")
    correction = np.stack(
        [
            ndi.gaussian_filter(rest[:, :, c] * paper, spread, mode="nearest") / np.maximum(weight, 1e-6)
            for c in range(channels)
        ],
        axis=2,
    )
    # Where hardly any paper is near (a digit filling the frame), trust the quadratic alone.
    correction *= np.clip(weight / 0.3, 0.0, 1.0)[:, :, None]
    return _Background(coef, correction.astype(np.float32), step, height, width, desk)


@dataclass
class _Background:
    """The fitted background: a quadratic plus a correction per block, bilinear between
    block centres (at (i + 0.5) * step, clamped at the edges)."""

    coef: np.ndarray  # (6, C): the quadratic in [-1, 1] image coordinates, per channel
    correction: np.ndarray  # (grid_h, grid_w, C) float32
    step: int  # block side, px
    height: int
    width: int
    desk: np.ndarray | None = None  # (grid_h, grid_w) bool: a flat desk's blocks (_flat_border)

    def desk_pixels(self) -> np.ndarray | None:
        """The desk's pixels, (height, width) bool, grown by a block: the blocks along the
        sheet's edge hold some of both (their median is neither's, so they count as the
        sheet), or None without a desk. A stroke within a block (a 64th of the picture's
        longer side, or less) of the sheet's edge goes with the desk."""
        if self.desk is None:
            return None
        grown = cv2.dilate(self.desk.view(np.uint8), np.ones((3, 3), np.uint8))
        grid_h, grid_w = grown.shape
        pixels = cv2.resize(grown, (grid_w * self.step, grid_h * self.step), interpolation=cv2.INTER_NEAREST)
        # The rows and columns past the whole blocks repeat the last ones (as plane() clamps).
        pixels = cv2.copyMakeBorder(
            pixels, 0, self.height - pixels.shape[0], 0, self.width - pixels.shape[1], cv2.BORDER_REPLICATE
        )
        return pixels > 0

    def plane(self, weights: np.ndarray, stride: int = 1) -> np.ndarray:
        """sum_c weights[c] * background[:, :, c] at every ``stride``-th row and column,
        (H', W') float32. The background is linear in its coefficients, so a weighted sum of
        its channels is one plane from the weighted coefficients, not C planes."""
        w = np.asarray(weights, np.float32)
        correction = self.correction @ w  # (grid_h, grid_w)
        c = (self.coef @ w).astype(np.float32)  # (6,)
        ys = np.arange(0, self.height, stride)
        xs = np.arange(0, self.width, stride)

        def taps(where: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            at = np.clip((where + 0.5) / self.step - 0.5, 0, cells - 1)
            lo = np.minimum(at.astype(np.int64), max(cells - 2, 0))
            return lo, np.minimum(lo + 1, cells - 1), (at - lo).astype(np.float32)

        grid_h, grid_w = correction.shape
        ny = ((ys + 0.5) / self.height * 2 - 1).astype(np.float32)[:, None]  # (H', 1)
        nx = ((xs + 0.5) / self.width * 2 - 1).astype(np.float32)[None, :]  # (1, W')
        if stride == 1:
            # OpenCV's bilinear resize maps pixel x to (x + 0.5) / step - 0.5 on the grid and
            # clamps at the edges: the same interpolation; the remainder (the last rows and
            # columns past the whole blocks) repeats the edge, as the clamping does.
            size = (grid_w * self.step, grid_h * self.step)
            out = cv2.resize(correction, size, interpolation=cv2.INTER_LINEAR)
            out = cv2.copyMakeBorder(
                out, 0, self.height - out.shape[0], 0, self.width - out.shape[1], cv2.BORDER_REPLICATE
            )
        else:
            y0, y1, fy = taps(ys, grid_h)
            x0, x1, fx = taps(xs, grid_w)
            # Separable: along the grid's rows first, (grid_h, W'), then between rows.
            across = correction[:, x0] * (1 - fx) + correction[:, x1] * fx
            out = across[y0] * (1 - fy)[:, None]
            out += across[y1] * fy[:, None]
        # The quadratic, per row a(y) + b(y) x, plus c x^2 per column: no (H, W, 6) array.
        out += c[0] + c[2] * ny + c[5] * ny * ny
        out += (c[1] + c[4] * ny) * nx
        out += c[3] * nx * nx
        return out

    def channels(self, stride: int = 1) -> np.ndarray:
        """The background itself, (H', W', C) float32."""
        count = self.coef.shape[1]
        return np.stack([self.plane(np.eye(count)[k], stride) for k in range(count)], axis=2)


def _noise_sigma(plane: np.ndarray) -> float:
    """Pixel noise of a 2-D map, robust to strokes: MAD of horizontal neighbour differences
    (of every row given: a large map passes every other row)."""
    if plane.shape[1] < 2:
        return 0.0
    diffs = np.abs(np.diff(plane, axis=1))
    return 1.4826 * _quantile(diffs, 0.5) / np.sqrt(2.0)


@dataclass
class _InkMap:
    ink: np.ndarray  # (H, W) float32 in [0, 1]: 1 = full ink, 0 = paper
    scale: float  # analysis pixels per original pixel (<= 1)
    # 8-connected labels of ink > 0.5 and their count, when already computed (None: not yet).
    cores: tuple[np.ndarray, int] | None = None
    coarse: bool = False  # analysed below full analysis resolution (see _ink_map's coarse)


def _ink_map(image: Picture, scale: float = 1.0, coarse: bool = False) -> _InkMap | None:
    """White-ink-on-black map of the image at analysis resolution, or None if there is no ink.

    ``scale``: the image's pixels per original pixel, when it was decoded reduced. ``coarse``:
    an 8-bit colour image of HALVE_ABOVE to LARGE pixels (a drawing from a canvas) is
    analysed at half its resolution (2x2 block means), a third of the work; a larger one
    (a photo) area-averaged down to at most LARGE pixels instead of ANALYSIS_PIXELS, a
    quarter of the work (the map's ``coarse`` says whether either happened).

    1. to float channels (transparency composited); large images area-averaged down;
    2. subtract a smooth robust background (lighting gradient, shadow, tinted paper); a
       flat background (a canvas drawing, a clean scan) is taken as it is, without a fit;
    3. the ink's colour: the mean residual of the 1% most deviating pixels. Dark ink on
       light paper has a negative residual and is inverted; coloured ink on coloured paper
       projects onto its own colour direction. Polarity is thus decided against the
       background, not guessed from the mean;
    4. lighting: the ink's contrast is divided by the local paper brightness (relative to
       its median), as a dimly lit corner dims ink and paper alike;
    5. noise: a grainy picture (noise above 4% of full scale) is median- and
       Gaussian-filtered; clean pictures are left alone, anti-aliasing included;
    6. contrast stretch between the noise floor (paper + 3 sigma) and the ink's typical
       level: anti-aliased edges keep their intermediate values;
    7. a soft shadow the background fit left (wider than any stroke) is taken out
       (:func:`_without_shadows`).
    """
    reduced = coarse and _pixel_count(image) > LARGE
    channels = _to_channels(image, LARGE if reduced else ANALYSIS_PIXELS)
    scale *= channels.scale
    rgb = channels.rgb
    halved = coarse and rgb is not None and HALVE_ABOVE < rgb.shape[0] * rgb.shape[1] <= LARGE and not reduced
    if halved and rgb is not None:
        half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        channels = _Channels(channels.scale / 2, None, half)
        scale /= 2
    counts = None if channels.levels is None else _histogram(channels.levels)
    flat = _flat_paper(channels, counts)
    if flat is not None and channels.rgb is not None:
        # Coloured ink on flat paper (the drawing page's dark blue): projected on the ink's
        # colour into 8-bit levels, then the gray path below.
        projected = _colour_on_flat_paper(channels.rgb, flat)
        if projected is None:
            return None
        channels = _Channels(channels.scale, projected)
        counts = _histogram(projected)
        flat = np.ones(1, np.float32)
    if flat is not None and channels.levels is not None and counts is not None:
        quick = _gray_on_flat_paper(channels.levels, counts, flat[0])
        if quick is None:
            return None
        if not isinstance(quick, str):
            return _finish(quick[0], quick[1], scale, halved or reduced)
    values = channels.values
    height, width, count = values.shape
    # Large pictures: the ink's colour and the noise are estimated on every other row and
    # column (a quarter of the pixels, the same statistics to a fraction of a percent).
    stride = 2 if height * width > LARGE else 1
    background = None
    if flat is not None:
        residual = values[::stride, ::stride] - flat  # (H', W', C)
    else:
        background = _fit_background(values)
        residual = values[::stride, ::stride] - background.channels(stride)
    if count == 1:
        plane = residual[:, :, 0]
        strength = np.abs(plane)
        strongest = strength >= _quantile(strength, 0.99)
        direction = np.array([plane[strongest].mean()])
    else:
        norms = np.sqrt(np.einsum("ijk,ijk->ij", residual, residual))
        strongest = norms >= _quantile(norms, 0.99)
        direction = residual[strongest].mean(axis=0)
    length = float(np.linalg.norm(direction))
    if length < 1e-6:
        return None
    # Per-channel units: projecting gray ink onto (1,1,1)/sqrt(3) would give sqrt(3)x.
    unit = (direction / length / np.sqrt(count)).astype(np.float32)
    # (values - background) @ unit, as values @ unit - (background @ unit): one plane.
    # (A matrix-vector product through BLAS: numpy's matmul on an (H, W, 3) array is 5x slower.)
    ink = (
        values[:, :, 0] * unit[0] if count == 1 else (values.reshape(-1, count) @ unit).reshape(height, width)
    )
    if background is None:
        assert flat is not None
        ink = ink - float(flat @ unit)
    else:
        ink = ink - background.plane(unit)
        brightness = background.plane(np.full(count, 1.0 / count))
        # +0.1 keeps a black background (chalk, MNIST itself) from being divided by ~0.
        ink = ink / np.clip((brightness + 0.1) / (_quantile(brightness, 0.5) + 0.1), 0.3, 3.0)
    # (A flat background has the same brightness everywhere: the division is by 1.)
    sigma = _noise_sigma(ink[::stride])
    if sigma > 0.04:
        # 3x3 median, then a Gaussian of sigma 1 px (radius 4, reflected edges): as SciPy's
        # median_filter and gaussian_filter, at a fraction of their cost.
        ink = cv2.medianBlur(np.ascontiguousarray(ink, np.float32), 3)
        ink = cv2.GaussianBlur(ink, (9, 9), 1.0, borderType=cv2.BORDER_REFLECT)
        sigma = _noise_sigma(ink[::stride])
    desk = None if background is None else background.desk_pixels()
    if desk is None:
        paper = _quantile(ink, 0.5)
    else:
        # A flat desk the fit left out (_flat_border) is paper, not ink: where light falls off
        # across it, its lighter side would be faint ink in patches under the noise, and where
        # it is half the picture or more, the paper's level (the median) would be the desk's.
        paper = _quantile(ink[~desk], 0.5)
        ink[desk] = paper
    floor = paper + max(3.0 * sigma, 0.5 / 255.0)
    stretched = _stretch(ink, floor, sigma)
    if stretched is None:
        return None
    stretched = _without_shadows(stretched)
    return _finish(stretched, lambda: (ink, paper, floor, sigma), scale, halved or reduced)


def _without_shadows(stretched: np.ndarray) -> np.ndarray:
    """The ink map without what is much wider than a stroke: a soft shadow the background
    fit left (its blocks stand out like ink, so the fit works around them).

    A grey opening with a disk twice the strokes' width (the widest stroke at half
    intensity, measured where it is solid: a shadow is never solid) removes every stroke
    and keeps what is wider; that is subtracted (a top-hat). Done at reduced resolution
    (strokes about 3 px in radius there), where the opening is cheap. Nothing that wide at
    SHADOW_LEVEL or more: the map is returned as it is. Measured on 60 phone photos of
    MNIST test digits (1600x1200, a soft shadow 40 levels deep beside the digit): 55 read
    right before, 60 with it; 70 levels deep: 25 and 60; no shadow: 60 and 60.
    """
    # A large map (a photo's) is measured at half resolution: a quarter of the work.
    step = 2 if stretched.size > LARGE else 1
    height, width = stretched.shape
    probe = (
        stretched
        if step == 1
        else cv2.resize(stretched, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    )
    solid = probe > 0.9
    if not solid.any():
        return stretched
    # A stroke's half-width at half intensity (its anti-aliased or blurred edge included),
    # read at its solid pixels; noise leaves pinholes, which would make strokes look thin:
    # a 5x5 median first. That median also erases strokes under 3 px wide: hence a floor of
    # 2 px (without it, a fine pen's strokes measured 0 and were taken out with the shadow).
    inked = cv2.medianBlur((probe > 0.5).view(np.uint8), 5)
    distance = cv2.distanceTransform(inked, cv2.DIST_L2, 3)
    # A deep shadow can hold solid pixels too, but it is soft: its half-intensity region is
    # several times its solid part (measured 3.9-6.2x; strokes 1.2-2.3x under uneven light,
    # noise and a desk around the sheet), and it is a blob: wide for its size. Strokes are
    # measured on the firm, stroke-like regions if any, else on the firm ones. (A shadow
    # beside a digit a tenth of a photo's height is most of the ink: the stretch then makes
    # it firm, 2.9-3.1x, but it stays a blob, its half-width 0.35 of its longer side.)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inked, connectivity=8)
    owner = np.asarray(labels[solid], np.intp)  # (S,): each solid pixel's region (0: erased by the median)
    solid_area = np.bincount(owner, minlength=count)
    firm = (solid_area > 0) & (stats[:, cv2.CC_STAT_AREA] <= SOFT_RATIO * solid_area)
    firm[0] = False
    reach = np.zeros(count, np.float32)  # per region, the largest half-width at a solid pixel
    np.maximum.at(reach, owner, distance[solid])
    longer = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    stroke_like = firm & (reach <= STROKE_LIKE * longer)
    measured = stroke_like if stroke_like.any() else firm if firm.any() else solid_area > 0
    radius = max(2.0, step * float(reach[measured].max()))
    factor = max(1.0, radius / 3.0)
    reduced = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = cv2.resize(stretched, reduced, interpolation=cv2.INTER_AREA)
    side = 2 * int(np.ceil(2.0 * radius / factor)) + 1
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    wide = cv2.morphologyEx(small, cv2.MORPH_OPEN, disk)
    if wide.max() < SHADOW_LEVEL:
        return stretched
    wide = cv2.resize(wide, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(stretched - wide, 0.0, 1.0)


# The unstretched ink map, the paper's level, the floor and the noise: to stretch again.
_Unstretched = Callable[[], tuple[np.ndarray, float, float, float]]


def _finish(
    stretched: np.ndarray, unstretched: _Unstretched, scale: float, coarse: bool = False
) -> _InkMap | None:
    """The ink map, with the desk around a photographed sheet and faint printed lines removed."""
    stretched = _without_faint_lines(stretched)
    cores = _label_cores(stretched)
    beyond = _beyond_the_paper(stretched, cores)
    if beyond is not None:
        ink, paper, floor, sigma = unstretched()
        # The desk around the sheet: not ink. Make it paper and stretch again without it.
        again = _stretch(np.where(beyond, paper, ink), floor, sigma)
        if again is None:
            return None
        again = _without_faint_lines(_without_shadows(again))  # stretched again from the raw ink
        return _InkMap(again, scale, _label_cores(again), coarse)
    return _InkMap(stretched, scale, cores, coarse)


# Printed lines fainter than the ink (squared or ruled paper, a form's light rules): a straight
# run of ink (> 0.15) along a row or a column over LINE_SPAN of the picture whose median is at
# most FAINT_LINE (the ink's own level is 1 after the stretch).
LINE_SPAN = 0.8
FAINT_LINE = 0.6


def _without_faint_lines(ink: np.ndarray) -> np.ndarray:
    """The ink map (H, W) float32 without faint straight lines across it: their pixels become
    paper, but where a stroke crosses one and is darker than it (more than 0.15 over the line's
    median). A digit on squared paper otherwise reads as one piece with the whole grid (the
    crop is the picture), and the grid left in its 28x28 input made the model answer "not a
    digit" for 20% of USPS test digits on a light blue 5 mm grid (400 digits).

    A line over LINE_SPAN of the picture covers its middle 60%, whose ends and centre most
    rows of a digit miss (the quick no); a drawn bar that does not is not that straight, that
    long and that faint at once.
    """
    out = ink
    for along_rows in (True, False):
        plane = out if along_rows else out.T  # (lines, length): a view, written through
        length = plane.shape[1]
        if length < 16:
            continue
        # A run over LINE_SPAN of the length covers its middle [lo, hi) whatever its start.
        lo, hi = int((1.0 - LINE_SPAN) * length), int(np.ceil(LINE_SPAN * length))
        probed = np.flatnonzero((plane[:, [lo, (lo + hi) // 2, hi - 1]] > 0.15).all(axis=1))
        if probed.size == 0:
            continue
        candidates = probed[(plane[probed, lo:hi] > 0.15).all(axis=1)]
        centre = length // 2
        for row in candidates:
            inked = plane[row] > 0.15
            gaps_before = np.flatnonzero(~inked[:centre])
            gaps_after = np.flatnonzero(~inked[centre:])
            start = gaps_before[-1] + 1 if gaps_before.size else 0
            stop = centre + gaps_after[0] if gaps_after.size else length
            if stop - start < LINE_SPAN * length:
                continue
            run = plane[row, start:stop]
            level = float(np.median(run))
            if level > FAINT_LINE:
                continue
            if out is ink:  # copy once, before the first change
                out = ink.copy()
                plane = out if along_rows else out.T
                run = plane[row, start:stop]
            run[run <= level + 0.15] = 0.0
    return out


def _histogram(levels: np.ndarray) -> np.ndarray:
    """How many pixels of an (H, W) uint8 array have each level, (256,) int64 (OpenCV's
    histogram, 1.7x faster than np.bincount on a 280x280 image)."""
    counts = cv2.calcHist([np.ascontiguousarray(levels)], [0], None, [256], [0, 256])
    return np.rint(counts[:, 0]).astype(np.int64)


def _level_quantile(table: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``_quantile`` of the values ``table[level]`` taken ``counts[level]`` times each."""
    order = np.argsort(table, kind="stable")
    cumulative = np.cumsum(counts[order])
    position = q * (cumulative[-1] - 1)
    lo = int(position)
    hi = min(lo + 1, int(cumulative[-1]) - 1)
    low = float(table[order[np.searchsorted(cumulative, lo, side="right")]])
    high = float(table[order[np.searchsorted(cumulative, hi, side="right")]])
    return low + (high - low) * (position - lo)


def _colour_on_flat_paper(rgb: np.ndarray, paper: np.ndarray) -> np.ndarray | None:
    """Step 3 of :func:`_ink_map` for 8-bit colour on flat paper, in 8-bit arithmetic:
    (H, W) uint8 levels, paper at 255 and the ink darker by its projection on the ink's
    colour (as the float path projects it: per-channel units, so the values stay within
    0..255), or None when no pixel differs from the paper.

    The ink's colour: the mean of the 1% of pixels farthest from the paper (the largest
    channel difference here, the Euclidean distance in the float path: the same pixels,
    the solid strokes). Colours on the far side of the paper (lighter than it along the
    ink's direction) clip to paper, as the stretch would clip them anyway.
    """
    paper_levels = paper * 255.0  # (3,)
    scalar = np.append(np.rint(paper_levels), 0.0)  # OpenCV's (4,) float64 scalar
    difference = cv2.absdiff(rgb, scalar)  # (H, W, 3) uint8
    # The largest channel difference, (H, W) uint8 (OpenCV: NumPy's max over the last axis
    # is 20x slower).
    distance = cv2.max(cv2.max(*cv2.split(difference)[:2]), cv2.extractChannel(difference, 2))
    histogram = _histogram(distance)
    # The largest distance that 1% of the pixels reach. When the ink is under 1% of the
    # picture (a small digit), that is 0: every pixel counts, as in the float path (whose
    # 99th percentile is then the paper's), and the mean still leans towards the ink.
    beyond = np.cumsum(histogram[::-1])[::-1]
    cutoff = int(np.flatnonzero(beyond >= max(1, 0.01 * distance.size))[-1])
    strongest = (distance >= cutoff).view(np.uint8)
    direction = np.array(cv2.mean(rgb, mask=strongest)[:3]) - paper_levels
    length = float(np.linalg.norm(direction))
    if length < 1e-6:
        return None
    unit = direction / length / np.sqrt(3.0)
    # levels = 255 - (rgb - paper) . unit, rounded and saturated to 0..255 by OpenCV.
    matrix = np.concatenate([-unit, [255.0 + float(paper_levels @ unit)]])[None, :]
    return cv2.transform(rgb, matrix)


def _gray_on_flat_paper(
    levels: np.ndarray, counts: np.ndarray, paper_value: float
) -> tuple[np.ndarray, _Unstretched] | Literal["grainy"] | None:
    """Steps 3-6 of :func:`_ink_map` for 8-bit gray on flat paper, from the histogram of
    the 256 levels: every statistic is that of the float path (the same multiset of
    values), and the stretched map is a 256-entry table looked up once per pixel.

    ``counts``: the histogram of ``levels``. Returns the stretched map (and how to get the
    unstretched one, rarely needed), None for no ink, or "grainy" when the picture is
    grainy (the float path filters it).
    """
    residual = np.arange(256, dtype=np.float32) / 255.0 - np.float32(paper_value)  # per level
    strength = np.abs(residual)
    threshold = _level_quantile(strength, counts, 0.99)
    strongest = (strength >= threshold) & (counts > 0)
    total = counts[strongest].sum()
    direction = float((residual[strongest].astype(np.float64) * counts[strongest]).sum() / total)
    if abs(direction) < 1e-6:
        return None
    ink = residual * np.float32(1.0 if direction > 0 else -1.0)
    if levels.shape[1] < 2:
        sigma = 0.0
    else:
        # Horizontal neighbour differences: |ink[b] - ink[a]| is |b - a| / 255 (to float
        # rounding) for neighbouring levels a, b; their median from a histogram of |b - a|.
        steps = cv2.absdiff(levels[:, 1:], levels[:, :-1])  # (H, W - 1) uint8
        step_counts = _histogram(steps)
        median_step = _level_quantile(np.arange(256, dtype=np.float32), step_counts, 0.5)
        sigma = 1.4826 * (median_step / 255.0) / np.sqrt(2.0)
    if sigma > 0.04:
        return "grainy"
    paper = _level_quantile(ink, counts, 0.5)
    floor = paper + max(3.0 * sigma, 0.5 / 255.0)
    above = (ink > floor) & (counts > 0)
    if not above.any():
        return None
    level = _level_quantile(ink[above], counts[above], 0.9)
    if level - floor < max(MIN_CONTRAST, 3.0 * sigma):
        return None
    table = np.clip((ink - floor) / (level - floor), 0.0, 1.0).astype(np.float32)
    # (A float32 table through cv2.LUT gives float32 values, 3-4x faster than NumPy's take.)
    return cv2.LUT(levels, table), lambda: (ink[levels], paper, floor, sigma)


def _label_cores(stretched: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels of the solid ink (> 0.5) and their count."""
    return _label(stretched > 0.5)


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels, count), as ndi.label with a 3x3
    structure (OpenCV's labelling numbers them in the same raster order, 5x faster)."""
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels, int(count) - 1


def _stretch(ink: np.ndarray, floor: float, sigma: float) -> np.ndarray | None:
    """Contrast stretch from ``floor`` (0) to the ink's typical level (1); None if no ink."""
    above = ink[ink > floor]
    if above.size == 0:
        return None
    level = _quantile(above, 0.9)
    if level - floor < max(MIN_CONTRAST, 3.0 * sigma):
        return None  # nothing stands out of the paper: blank
    return np.clip((ink - floor) / (level - floor), 0.0, 1.0).astype(np.float32)


def _beyond_the_paper(stretched: np.ndarray, cores: tuple[np.ndarray, int]) -> np.ndarray | None:
    """Solid regions along the image's edge (a desk or a table around a photographed sheet),
    as a mask, or None.

    A region qualifies if it runs along 60% of one side of the image, or if it covers at
    least 15% of the image's border and is much thicker (2x the largest inscribed circle)
    than the ink away from the border: strokes are thin and cross the border, a desk is
    not and does not. With no ink away from the border, nothing is removed (a digit
    cropped tightly touches the border too). ``cores``: the labels of ``stretched > 0.5``.
    """
    labels, count = cores
    if count < 2:
        return None
    sides = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    edge = np.concatenate(sides)
    on_edge = np.bincount(edge, minlength=count + 1)
    on_edge[0] = 0
    # Covering most of one side: a strip of desk, however thin.
    along = np.zeros(count + 1, bool)
    for side in sides:
        along |= np.bincount(side, minlength=count + 1) >= 0.6 * side.size
    along[0] = False
    candidates = np.where((on_edge >= 0.15 * edge.size) | along)[0]
    if candidates.size == 0:
        return None
    from scipy import ndimage as ndi

    # Half-thickness per region: the largest distance from a pixel to the region's edge.
    radius = ndi.maximum(ndi.distance_transform_edt(labels > 0), labels, np.arange(1, count + 1))
    radius = np.concatenate([[0.0], np.asarray(radius)])
    inner = [label for label in range(1, count + 1) if on_edge[label] == 0]
    if not inner:
        return None
    stroke = max(radius[label] for label in inner)
    marked = [int(label) for label in candidates if along[label] or radius[label] >= 2.0 * max(stroke, 1.0)]
    if not marked:
        return None
    # Grown a little: the region's soft edge goes with it.
    return ndi.binary_dilation(np.isin(labels, marked), iterations=2)


# --------------------------------------------------------------------------- components


@dataclass
class _Piece:
    labels: list[int]  # component labels that make up this digit
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    mass: float
    seed: tuple[int, int]  # (row, col) of one pixel of the first component
    # Two or more digit-sized pieces merged because they overlap horizontally: maybe one
    # digit written in two strokes (a 4), maybe two digits side by side (a 3 and a slanted 1).
    parts: list[_Piece] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _components(
    ink: np.ndarray, cores: tuple[np.ndarray, int] | None = None
) -> tuple[np.ndarray, list[_Piece]]:
    """Label the ink (8-connected at half intensity, the halo joined to the nearest core)
    and drop specks. ``cores``: the labels of ``ink > 0.5``, if already known.

    Returns the label image and the kept pieces (one per component), unsorted.
    """
    mask = ink > 0.15
    # Connected at half intensity: two digits whose anti-aliased edges merely touch stay
    # apart. Every fainter inked pixel then joins its nearest core.
    core_labels, count = cores if cores is not None else _label_cores(ink)
    if count == 0:
        return core_labels, []
    regions, region_count = _label(mask)
    # Most faint pixels touch one core only: their region (of ink > 0.15) holds one core,
    # whose label they take. The distance transform (the nearest core) is needed only
    # where a region holds several cores (two digits whose halos touch).
    core_pixels = core_labels > 0
    # Each core lies inside one region (ink > 0.5 is part of ink > 0.15, and connected).
    region_of = np.zeros(count + 1, np.int64)
    region_of[core_labels[core_pixels]] = regions[core_pixels]
    owner = np.zeros(region_count + 1, np.int32)
    owner[region_of[1:]] = np.arange(1, count + 1)
    cores_per_region = np.bincount(region_of[1:], minlength=region_count + 1)
    # Both labellings number in raster order; with one core per region they often agree.
    labels = regions if np.array_equal(owner, np.arange(region_count + 1)) else np.take(owner, regions)
    crowded = np.flatnonzero(cores_per_region > 1)
    if crowded.size:
        from scipy import ndimage as ndi

        shared = np.isin(regions, crowded)
        # The nearest core of each pixel of those regions, searched within their bounding box
        # and a margin (a halo is a few pixels wide: no nearer core lies farther out).
        rows, cols = np.nonzero(shared)
        margin = 16
        top, left = max(0, rows.min() - margin), max(0, cols.min() - margin)
        box = (slice(top, rows.max() + margin + 1), slice(left, cols.max() + margin + 1))
        nearest = ndi.distance_transform_edt(~core_pixels[box], return_distances=False, return_indices=True)
        labels = labels.copy() if labels is regions else labels
        near_rows, near_cols = nearest[0][rows - top, cols - left], nearest[1][rows - top, cols - left]
        labels[rows, cols] = core_labels[box][near_rows, near_cols]
    # Ink mass (sum of the map) per component: faint halos weigh little, strokes a lot.
    if count == 1:
        # One piece (most single digits): its box and mass straight from its mask (OpenCV),
        # 5x faster than labelled statistics.
        own = (labels > 0).view(np.uint8)
        x, y, w, h = cv2.boundingRect(own)
        boxes: list[Any] = [(slice(y, y + h), slice(x, x + w))]
        masses = np.array([cv2.sumElems(cv2.bitwise_and(ink, ink, mask=own))[0]])
    else:
        from scipy import ndimage as ndi

        boxes = ndi.find_objects(labels, max_label=count)
        inked = np.flatnonzero(mask)
        masses = np.bincount(labels.ravel()[inked], weights=ink.ravel()[inked], minlength=count + 1)[1:]
    biggest = masses.max()
    speck = masses < SPECK_FRACTION * biggest
    if speck.any() and count > 1:
        # A light, fine digit beside bold ones crosses half intensity only here and there: its
        # strokes are one region of faint ink (> 0.15) holding several small cores, none of
        # which holds half of the region's ink. Such a region's cores are kept (and grouped
        # again as one digit) when the region weighs more than a speck. A faint smudge touching
        # a bold digit stays a speck: the digit's core holds most of that region's ink.
        region_cores = region_of[1:]
        region_mass = np.bincount(region_cores, weights=masses, minlength=region_count + 1)
        region_top = np.zeros(region_count + 1)
        np.maximum.at(region_top, region_cores, masses)
        fragments = (region_mass >= SPECK_FRACTION * biggest) & (region_top < 0.5 * region_mass)
        speck &= ~fragments[region_cores]
    pieces = []
    # Every label holds its core (ink > 0.5), so no piece is all halo.
    for label, mass, found, dropped in zip(range(1, count + 1), masses, boxes, speck, strict=True):
        if found is None or dropped:
            continue
        along_y, along_x = found
        row, col = np.unravel_index(int(np.argmax(labels[found] == label)), labels[found].shape)
        seed = (along_y.start + int(row), along_x.start + int(col))
        pieces.append(
            _Piece([label], along_x.start, along_y.start, along_x.stop, along_y.stop, float(mass), seed)
        )
    return labels, pieces


# A frame is a piece whose box's sides are inked along at least this share of their length (a
# printed or ruled box around a digit; a 0's sides touch its box at a few points only).
FRAME_SIDE = 0.85
# A rule is a straight bar at least this many times wider than tall ...
RULE_ASPECT = 8.0
# ... wholly below the rest of the ink and this much wider than it (than each digit in a row):
# a form's line under a digit. A 2's base is about as wide as the 2; bars above (a 7's, a 5's)
# are never taken for rules.
RULE_WIDER = 1.5


def _is_frame(ink: np.ndarray, labels: np.ndarray, piece: _Piece) -> bool:
    """Is this piece a box drawn around something: three or four of its box's sides inked along
    FRAME_SIDE of their length, within a band of a tenth of the box (at least 2 px)?"""
    if min(piece.width, piece.height) < 8:
        return False
    own = _piece_crop(ink, labels, piece) > 0.5
    band_y, band_x = max(2, piece.height // 10), max(2, piece.width // 10)
    sides = [
        own[:band_y].any(axis=0).mean(),
        own[-band_y:].any(axis=0).mean(),
        own[:, :band_x].any(axis=1).mean(),
        own[:, -band_x:].any(axis=1).mean(),
    ]
    return sum(side >= FRAME_SIDE for side in sides) >= 3


def _without_frames_and_rules(
    ink: np.ndarray, labels: np.ndarray, pieces: list[_Piece], row: bool = False
) -> list[_Piece]:
    """The pieces less a box drawn around all the others (a form's cell, a frame) and a straight
    line under them much wider than them (a form's rule; with ``row``, than the widest of them,
    each a digit of a row): the digits are what is inside or above. Nothing is dropped unless
    something else is left."""
    if len(pieces) < 2:
        return pieces

    def others_max(values: list[int]) -> np.ndarray:
        """Per piece, the largest value among the other pieces (a texture can hold a hundred)."""
        array = np.array(values)
        top = int(array.argmax())
        out = np.full(len(array), array[top])
        out[top] = np.partition(array, -2)[-2]
        return out

    # The box of all the other pieces, per piece (minima as maxima of negatives).
    x0 = -others_max([-p.x0 for p in pieces])
    y0 = -others_max([-p.y0 for p in pieces])
    x1, y1 = others_max([p.x1 for p in pieces]), others_max([p.y1 for p in pieces])
    span = others_max([p.width for p in pieces]) if row else x1 - x0
    kept = []
    for k, piece in enumerate(pieces):
        inside = piece.x0 <= x0[k] and x1[k] <= piece.x1 and piece.y0 <= y0[k] and y1[k] <= piece.y1
        if inside and _is_frame(ink, labels, piece):
            continue
        straight = piece.width >= RULE_ASPECT * piece.height
        if straight and y1[k] <= piece.y0 and piece.width >= RULE_WIDER * span[k]:
            continue
        kept.append(piece)
    return kept or pieces


def _large_enough(piece: _Piece, shape: tuple[int, ...]) -> bool:
    longest = max(piece.width, piece.height)
    return longest >= max(MIN_DIGIT_PX, MIN_DIGIT_FRACTION * max(shape))


# --------------------------------------------------------------------------- to 28x28


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels of a binary mask: 2 * area / boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    # 4-connected erosion with nothing outside (ndi.binary_erosion's default, 15x faster).
    eroded = cv2.erode(mask.view(np.uint8), _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    boundary = int(np.count_nonzero(mask) - np.count_nonzero(eroded))
    return 2.0 * area / max(boundary, 1)


@lru_cache(maxsize=1024)
def _lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32: row k the weights of output pixel k along one axis, as
    Pillow computes them for its anti-aliased Lanczos (Resample.c: a 3-lobe windowed sinc
    stretched by the reduction factor, centred at (k + 0.5) * scale, over the input pixels
    within its support, normalized per row). All rows at once, over each row's support only:
    0.17 ms, and it runs often (1,000 different drawings brought 843 new sizes in 3,966
    resizes; built a row at a time it took 3 ms and made normalizing slower than Pillow's)."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 3.0 * stretch
    centres = (np.arange(out_size) + 0.5) * scale  # (out,)
    first = np.maximum(np.floor(centres - support + 0.5), 0.0).astype(np.int64)  # (out,)
    stop = np.minimum(np.floor(centres + support + 0.5), in_size).astype(np.int64)
    taps = first[:, None] + np.arange(int(np.ceil(support)) * 2 + 1)  # (out, k)
    t = (taps - centres[:, None] + 0.5) / stretch
    x = np.pi * np.where(t == 0.0, 1e-20, t)
    weights = np.sin(x) / x * (np.sin(x / 3.0) / (x / 3.0))  # sinc(t) * sinc(t / 3)
    weights[(taps >= stop[:, None]) | (t < -3.0) | (t >= 3.0)] = 0.0
    totals = weights.sum(axis=1, keepdims=True)
    weights /= np.where(totals == 0.0, 1.0, totals)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
    inside = weights != 0.0
    matrix[rows[inside], taps[inside]] = weights[inside]
    return matrix


def _resize(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W) float -> (height, width) float32: Pillow's Lanczos resize of a mode "F" image
    (horizontal pass, then vertical) as two small float32 matrix products, 2-4x faster on the
    sizes _to_mnist resizes when the size's weights are cached (a 98x79 crop to 80x64: 0.23 ->
    0.09 ms; 80x64 to 20x16: 0.14 -> 0.04 ms, the conversions to and from an Image included;
    a new size adds 0.17 ms for its weights). The same values to float32
    rounding (Pillow accumulates in double): of 6,187 images (the robustness suite,
    optdigits-orig, USPS test), 9 normalized differently, by one gray level in a pixel."""
    rows, cols = values.shape
    out = np.asarray(values, dtype=np.float32)
    if width != cols:
        out = out @ _lanczos_weights(cols, width).T
    if height != rows:
        out = _lanczos_weights(rows, height) @ out
    return out


def _centre_of_mass(values: np.ndarray) -> tuple[float, float]:
    """(row, column) of an (H, W) image's centre of mass, as ndi.center_of_mass gives it
    without its overhead (50 -> 20 us on 20x20); the image must have some ink."""
    mass = values.astype(np.float64)
    total = float(mass.sum())
    rows, cols = mass.shape
    return float(mass.sum(axis=1) @ np.arange(rows)) / total, float(
        mass.sum(axis=0) @ np.arange(cols)
    ) / total


def paste_centred(small: np.ndarray) -> np.ndarray:
    """(28, 28) float32: an (H, W) image of ink (H, W <= 28, some ink) pasted with its centre of
    mass on pixel (14, 14), as MNIST was prepared, or as near as keeps it inside; values as given."""
    height, width = small.shape
    cy, cx = _centre_of_mass(small)
    top = int(np.clip(round(CENTRE - cy), 0, SIZE - height))
    left = int(np.clip(round(CENTRE - cx), 0, SIZE - width))
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top : top + height, left : left + width] = small
    return out


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= radius * radius + 0.5


def _to_mnist(crop: np.ndarray) -> np.ndarray | None:
    """A tight crop of one digit's ink map (white on black, float in [0, 1]) -> (28, 28) uint8.

    Scale to the work size (longer side 80 px, aspect kept), thicken strokes that are
    much thinner than MNIST's, scale to fit 20x20 (anti-aliased Lanczos), and paste into
    28x28 with the centre of mass on pixel (14, 14), as MNIST was prepared.
    """
    height, width = crop.shape
    factor = WORK / max(height, width)
    work_w, work_h = max(1, round(width * factor)), max(1, round(height * factor))
    pad = WORK // 4
    if factor < 0.5:
        # Much larger than the work size (a drawing, a photo's crop): an area average, 5x
        # faster than Lanczos; the strokes are measured and the result resized again below,
        # and the robustness suite reads the same (docs/speed.md).
        shrunk = cv2.resize(crop.astype(np.float32), (work_w, work_h), interpolation=cv2.INTER_AREA)
    else:
        shrunk = _resize(crop, work_w, work_h)
    work = np.pad(np.clip(shrunk, 0, 1), pad)
    mask = work > 0.5
    if not mask.any():
        return None
    target = MNIST_STROKE * WORK
    stroke = _stroke_width(mask)
    if stroke < 0.6 * target:
        # Thin pen on a big canvas: grow the strokes to MNIST's width (grey dilation keeps edges soft).
        radius = (0.85 * target - stroke) / 2.0
        work = cv2.dilate(work.astype(np.float32), _disk(radius).view(np.uint8))
    # Back to the tight box after dilation, then fit 20x20 keeping the aspect ratio.
    rows = np.where((work > 0.05).any(axis=1))[0]
    cols = np.where((work > 0.05).any(axis=0))[0]
    work = work[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = work.shape
    factor = BOX / max(height, width)
    small_w, small_h = max(1, round(width * factor)), max(1, round(height * factor))
    small = np.clip(_resize(work, small_w, small_h), 0.0, 1.0)
    if small.max() <= 0:
        return None
    small = np.clip(small / small.max(), 0.0, 1.0)
    return (paste_centred(small) * 255.0 + 0.5).astype(np.uint8)


def _piece_crop(ink: np.ndarray, labels: np.ndarray, piece: _Piece) -> np.ndarray:
    """The piece's ink, with other components inside its box (neighbours, specks) removed."""
    box = (slice(piece.y0, piece.y1), slice(piece.x0, piece.x1))
    own = labels[box] == piece.labels[0] if len(piece.labels) == 1 else np.isin(labels[box], piece.labels)
    return np.where(own, ink[box], 0.0)


def _already_mnist(image: Picture) -> np.ndarray | None:
    """The pixels of an image that is already in MNIST's form, else None: 28x28 8-bit gray,
    white ink on exact black, the ink's longer side 19 or 20 px and its centre of mass within
    half a pixel of (14, 14) (a few hundredths' slack), full ink (254 or 255, as in every MNIST
    digit). Every MNIST digit is in this form, and so is normalize_digit's own output; a picture
    that is not (a photo, a drawing, a digit filling its frame) has no such exact black frame.
    An MNIST digit saved as dark ink on exact white (plotted with a reversed gray map, as
    tutorials show them) is the same digit inverted: its pixels are returned inverted, where
    normalizing it again would thicken and blur it (MNIST's test set read that way: 99.50%,
    99.67% as it is); either one saved in colour, every pixel gray and opaque (plt.imsave
    writes RGBA), is its gray channel."""
    if isinstance(image, np.ndarray):
        pixels = image
    elif image.size != (SIZE, SIZE) or image.mode not in ("L", "LA", "RGB", "RGBA"):
        return None
    else:
        pixels = np.asarray(image)
    if pixels.shape[:2] != (SIZE, SIZE):
        return None
    if pixels.ndim == 3:
        # Saved in colour (plt.imsave writes RGBA): the same digit if every pixel is gray and opaque.
        channels = pixels.shape[2]
        if pixels.dtype != np.uint8 or channels not in (2, 3, 4):
            return None
        if channels in (2, 4) and pixels[:, :, -1].min() < 255:
            return None
        colour = pixels[:, :, : 3 if channels >= 3 else 1]
        if (colour != colour[:, :, :1]).any():
            return None
        pixels = colour[:, :, 0]
    found = _in_mnist_form(pixels)
    if found is None and pixels.dtype == np.uint8:
        found = _in_mnist_form(255 - pixels)
    return found


def _in_mnist_form(pixels: np.ndarray) -> np.ndarray | None:
    """``pixels`` (28, 28) if they are white ink on exact black as MNIST's digits are, else None."""
    if int(pixels.max()) < 254:
        return None
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 not in (BOX - 1, BOX):
        return None
    cy, cx = _centre_of_mass(pixels)
    if max(abs(cy - CENTRE), abs(cx - CENTRE)) > 0.55:
        return None
    return pixels.copy()


# Pictures enlarged by repeating pixels (below): the largest repeat undone, how many edges each
# axis needs before its repeat is trusted, and the largest picture looked at.
MAX_REPEAT = 32
MIN_REPEAT_EDGES = 4
REPEAT_PIXELS = LARGE


def _repeat(changed: np.ndarray) -> tuple[int, int]:
    """(k, phase): every True of ``changed`` (a (N - 1,) bool: pixel i + 1 differs from pixel i)
    sits where a block of k pixels begins (at phase + j * k), or (1, 0) when no k >= 2 fits or
    the axis has under MIN_REPEAT_EDGES edges to tell."""
    starts = np.flatnonzero(changed) + 1  # first pixel of each new run
    if starts.size < MIN_REPEAT_EDGES:
        return 1, 0
    k = int(np.gcd.reduce(np.diff(starts)))
    return (k, int(starts[0] % k)) if 2 <= k <= MAX_REPEAT else (1, 0)


@dataclass
class _Blocks:
    """A picture made of k x k blocks of equal pixels, one pixel per block."""

    small: np.ndarray  # (h, w[, C]) uint8: one pixel per block, the partial first ones widened
    k_y: int
    k_x: int
    pad_y: int  # rows of the first block cut off by the picture's edge (0 <= pad < k)
    pad_x: int
    height: int  # the picture's size
    width: int

    def smoothly(self) -> np.ndarray:
        """The same picture enlarged bicubically instead: the same size, the blocks' centres in place."""
        size = (self.small.shape[1] * self.k_x, self.small.shape[0] * self.k_y)
        large = cv2.resize(self.small, size, interpolation=cv2.INTER_CUBIC)
        rows, cols = slice(self.pad_y, self.pad_y + self.height), slice(self.pad_x, self.pad_x + self.width)
        return np.ascontiguousarray(large[rows, cols])


def _pixel_blocks(picture: Picture) -> _Blocks | None:
    """The blocks of an 8-bit picture enlarged by repeating its pixels (nearest neighbour: an 8x8
    or 16x16 scan shown large, pixel art, a zoomed screenshot), else None.

    Such blocks read as a coarser digit than the same pixels enlarged smoothly: optdigits-orig
    and USPS test as UCI's 8x8 block counts shown 8x pixel by pixel read at 97.8% and 96.2%
    as they are, 98.1% and 96.7% enlarged bicubically here (whole sets; bilinearly 97.7% and
    96.6%; drawn smoothly in the first place, 98.4% and 96.6%). The test is exact:
    along each axis every edge of the picture lies on one grid of k >= 2 pixels, so each k x k
    block holds one value and one pixel per block loses nothing. A drawing or a photo has
    edges between neighbouring pixels somewhere (anti-aliasing, noise), which a few sampled
    rows show at once (20 us on a 280x280 drawing).
    """
    if isinstance(picture, Image.Image):
        if picture.mode not in ("L", "RGB", "RGBA") or _pixel_count(picture) > REPEAT_PIXELS:
            return None
        pixels = np.asarray(picture)
    elif _pixel_count(picture) > REPEAT_PIXELS:
        return None
    else:
        pixels = picture
    height, width = pixels.shape[:2]
    if min(height, width) < 2 * MIN_REPEAT_EDGES:
        return None
    # The quick no: edges in two adjacent columns of a few rows of the first channel (every
    # drawing and photo; blocks have their edges on the grid in every channel).
    rows = (pixels if pixels.ndim == 2 else pixels[:, :, 0])[np.linspace(0, height - 1, 9).astype(int)]
    along = (rows[:, 1:] != rows[:, :-1]).any(axis=0)  # (W - 1,)
    if (along[1:] & along[:-1]).any():
        return None
    columns = pixels[:, 1:] != pixels[:, :-1]  # (H, W - 1[, C])
    lines = pixels[1:] != pixels[:-1]  # (H - 1, W[, C])
    if pixels.ndim == 3:
        columns, lines = columns.any(axis=2), lines.any(axis=2)
    k_x, phase_x = _repeat(columns.any(axis=0))
    k_y, phase_y = _repeat(lines.any(axis=1))
    if k_x == 1 or k_y == 1:
        return None
    # Whole blocks from the corner: the first, partial ones widened by their own value.
    pad_y, pad_x = (k_y - phase_y) % k_y, (k_x - phase_x) % k_x
    spread = ((pad_y, 0), (pad_x, 0)) + (((0, 0),) if pixels.ndim == 3 else ())
    small = np.ascontiguousarray(np.pad(pixels, spread, mode="edge")[::k_y, ::k_x])
    return _Blocks(small, k_y, k_x, pad_y, pad_x, height, width)


def _smooth_pixel_repeats(picture: Picture) -> Picture:
    """A picture enlarged by repeating pixels, enlarged bicubically instead; any other as it is."""
    blocks = _pixel_blocks(picture)
    return picture if blocks is None else blocks.smoothly()


# A digit on flat paper with little paper around it (a tight crop, a 16x16 USPS scan) gets
# this much more paper (of its longer side, on every side) before it is looked at: enough
# that paper is most of the picture, whatever the ink covers ((1 + 2 * 0.25)^2 = 2.25x).
EDGE_MARGIN = 0.25
# Below this size (px, the shorter side) a picture on flat paper always gets the margin: a
# scanner's cell (USPS's 16x16), whose strokes' edges are so much of it that, cut by its edge,
# the noise estimate takes them for grain.
SMALL_PICTURE = 64
# Paper is flat within this many gray levels of its commonest. The margin added is exactly flat,
# so noisy paper must not pass: with 3 levels (to let JPEG's ringing along a tight crop's strokes
# pass: USPS test cut-outs at quality 60, 87.0% -> 93.2%) scans with sensor noise got a flat
# margin, their own paper then read as ink, and some normalized to nothing.
PAPER_LEVELS = 1


# A photo cut out close to its digit (:func:`_cut_out_photo_margin`): its ink is the levels within
# this share of the way from the darkest (5th percentile) to the lightest (90th), which must be
# this many gray levels apart. Ink at the picture's edge (the crop cut through strokes): the ink
# covers at least CUT_OUT_COVER of the picture and comes within CUT_OUT_NEAR of its size of every
# side. Paper all along the edge (a little paper left): CUT_OUT_CLEAR_COVER and CUT_OUT_CLEAR_NEAR.
# Never over CUT_OUT_MAX_COVER. (With only the first pair, a photo cut out with a little paper left
# was missed: its strokes' dark cores lie further in than the soft edges the crop followed. 500
# digits 120 px tall with 8 and 16 px of paper: optdigits-orig 93.8% and 85.0%, USPS test 88.8%
# and 93.2%, against 97.8% and 94.4% with none.)
CUT_OUT_INK = 0.25
CUT_OUT_CONTRAST = 60
CUT_OUT_COVER = 0.25
CUT_OUT_NEAR = 0.1
CUT_OUT_CLEAR_COVER = 0.2
CUT_OUT_CLEAR_NEAR = 0.2
CUT_OUT_MAX_COVER = 0.75

# OpenCV's conversion to gray by channel count.
_TO_GRAY = {3: cv2.COLOR_RGB2GRAY, 4: cv2.COLOR_RGBA2GRAY}


def _nothing_beyond(gray: np.ndarray, level: int) -> bool:
    """Whether no pixel of ``gray`` is lighter than ``level``, or none darker (within
    PAPER_LEVELS): flat paper at the edge of a tight crop, however little of the edge it is (a
    1's bar cut out touches every side). Paper with noise or grain has pixels on both sides of
    its commonest level."""
    return int(gray.max()) <= level + PAPER_LEVELS or int(gray.min()) >= level - PAPER_LEVELS


def _cut_out_photo_margin(
    pixels: np.ndarray, sample: np.ndarray, gray: np.ndarray, ring: np.ndarray
) -> tuple[Picture, int]:
    """A photo cut out close to its digit, with EDGE_MARGIN of paper like its own around it,
    and the margin (px); any other picture as it is, and 0. ``pixels``: the picture's (H, W[, C])
    uint8 array; ``sample``: the pixels looked at (every 4th of a large picture); ``gray``: their
    gray levels; ``ring``: those of its edge.

    Bold dark strokes cut out closely cover a third to a half of the picture, and the paper left
    is grainy or unevenly lit, so :func:`_paper_margin` adds no flat margin; the background fit,
    which starts from the picture's median, then took the ink for the paper and read the paper
    as ink (optdigits-orig's digits photographed and cut out to their ink, 500: 56% read; the
    polarity flipped in 94 of 111 mistakes of a sample with sensor noise alone). Dark ink on
    light paper is assumed when ink (within CUT_OUT_INK of the way from the darkest level to
    the lightest) covers a quarter to three quarters of the picture and comes within a tenth
    of its size of every side (a fifth and a fifth when paper runs all along the edge: a
    little paper left), and the edge is not mostly dark (a desk around a sheet). The margin:
    the median colour of the picture's lightest pixels, with their grain (their gray spread,
    from a fixed seed).
    """
    light, dark = float(np.percentile(gray, 90)), float(np.percentile(gray, 5))
    if light - dark < CUT_OUT_CONTRAST:
        return pixels, 0
    threshold = dark + CUT_OUT_INK * (light - dark)
    inky = gray < threshold  # (h, w) bool
    cover = float(inky.mean())
    if cover > CUT_OUT_MAX_COVER or float((ring < (light + dark) / 2).mean()) > 0.6:
        return pixels, 0
    # Paper all along the edge: a little paper was left around the digit, so its ink may lie
    # further in and cover less. Ink at the edge holds to the tighter figures: it may be a
    # lighting gradient's dark side (the robustness suite's uneven lighting: 11 of 500 digits
    # misread with the wider band alone; a USPS 2 in the handwriting benchmark's photos
    # with the lower cover alone).
    clear_edge = not bool((ring < threshold).any())
    least, share = (CUT_OUT_CLEAR_COVER, CUT_OUT_CLEAR_NEAR) if clear_edge else (CUT_OUT_COVER, CUT_OUT_NEAR)
    near = max(1, round(share * max(gray.shape)))
    if cover < least or not (
        inky[:near].any() and inky[-near:].any() and inky[:, :near].any() and inky[:, -near:].any()
    ):
        return pixels, 0
    paper = gray >= light - 0.25 * (light - dark)  # the lightest pixels: paper
    levels = gray[paper].astype(np.float32)
    grain = 1.4826 * float(np.median(np.abs(levels - np.median(levels))))
    colour = np.median(sample[paper].reshape(-1, 1 if sample.ndim == 2 else sample.shape[2]), axis=0)
    height, width = pixels.shape[:2]
    margin = max(1, round(EDGE_MARGIN * max(height, width)))
    noise = np.random.default_rng(0).normal(0.0, grain, (height + 2 * margin, width + 2 * margin))
    canvas = colour[None, None, :] + noise[:, :, None]  # (H', W', C) float
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        canvas[:, :, 3] = 255.0  # opaque: the picture's edge is (checked before)
    canvas = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    canvas = canvas[:, :, 0] if pixels.ndim == 2 else canvas
    canvas[margin : margin + height, margin : margin + width] = pixels
    return canvas, margin


def _dark_inside(dark: np.ndarray) -> bool:
    """Whether some of ``dark`` (bool (H, W)) lies apart from the picture's edge: a sheet on a
    desk has the digit's ink on it, away from the desk; light ink cut out close has dark paper
    between its strokes, all of it reaching the edge, but for the insides of loops."""
    labels, count = _label(dark)
    if count == 0:
        return False
    at_edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return count > int(np.count_nonzero(at_edge))


def _paper_margin(picture: Picture) -> tuple[Picture, int]:
    """A picture of ink on flat paper with little paper (under half the picture), or small,
    with EDGE_MARGIN of that paper around it, and the margin (px); any other picture as it is,
    and 0.

    The flat-paper test (half the picture one colour, :func:`_flat_paper`) fails on a tight
    crop, and the background fit that follows takes thick strokes for background (hollow
    strokes, or none): USPS test's digits (1,000; their ink fills the box) as 16x16 images
    read at 91.7%, 115 of them "no digit"; enlarged 8x, 92.8%, with a margin of 2% of their
    size 91.6%, of 5% 95.8%; with this margin 98.3-98.6% in each presentation, as with a
    margin of a quarter to begin with. The paper: at least half of the edge's pixels within
    PAPER_LEVELS of the edge's commonest gray level (a photo's edge is not, and is fitted as
    before), or, in a picture under SMALL_PICTURE px a side, that level the picture's lightest
    or darkest (:func:`_nothing_beyond`): a narrow digit cut out to its ink leaves little paper
    at the edge (USPS test's 1s cut out and shown 4x: 103 of 264 read as "not a digit"; the
    whole set answered right 91.1% -> 96.9%, MNIST test's first 2,000 cut out 96.9% -> 98.4%).
    Neither: a photo cut out close to its digit may still get a margin of grainy paper
    (:func:`_cut_out_photo_margin`).
    A desk around a photographed sheet stays at the edge, where the ink map finds it: a real
    desk is not flat, and a flat one is darker than the sheet, which covers more. Looked at on
    every 4th pixel of every 4th row of a picture SMALL_PICTURE px or more a side.
    """
    if isinstance(picture, Image.Image):
        if picture.mode not in ("L", "RGB", "RGBA") or _pixel_count(picture) > ANALYSIS_PIXELS:
            return picture, 0
    elif _pixel_count(picture) > ANALYSIS_PIXELS:
        return picture, 0
    pixels = np.asarray(picture)  # (H, W[, C]) uint8: 8-bit pixels, or an L/RGB/RGBA image's
    height, width = pixels.shape[:2]
    step = 4 if min(height, width) >= SMALL_PICTURE else 1
    sample = (
        pixels
        if step == 1
        else cv2.resize(pixels, (width // step, height // step), interpolation=cv2.INTER_NEAREST)
    )
    if sample.ndim == 3 and sample.shape[2] == 4:
        alpha = sample[:, :, 3]
        if min(alpha[0].min(), alpha[-1].min(), alpha[:, 0].min(), alpha[:, -1].min()) < 255:
            return picture, 0  # transparent edges: compositing decides the paper
    # The tests on gray levels (NumPy's reductions over a short colour axis are slow: 200 us);
    # a colour picture's margin gets the colour of its edge's commonest gray.
    gray = sample if sample.ndim == 2 else cv2.cvtColor(sample, _TO_GRAY[sample.shape[2]])
    ring = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])  # (N,) levels
    paper = int(np.argmax(np.bincount(ring, minlength=256)))
    small = step == 1  # under SMALL_PICTURE px a side (looked at on every pixel)
    flat = np.count_nonzero(np.abs(ring.astype(np.int16) - paper) <= PAPER_LEVELS)
    if flat < 0.5 * ring.size and not (small and _nothing_beyond(gray, paper)):
        return _cut_out_photo_margin(pixels, sample, gray, ring)
    # Paper enough: no margin. With room to spare: a margin where none was needed changes
    # nothing but the time.
    covered = cv2.countNonZero(
        cv2.inRange(gray, max(0, paper - PAPER_LEVELS), min(255, paper + PAPER_LEVELS))
    )
    if not small and covered >= 0.6 * gray.size:
        return picture, 0
    # A lighter level covering more of the picture than the edge's is a sheet, and the edge a
    # desk around it (the ink map removes a desk at the edge, not inside a margin of it), but
    # in a picture under SMALL_PICTURE px a side it is light ink cut out close on dark paper (no
    # photo of a sheet is so small; a bold 1 cut out to its ink, light on dark, is a light bar
    # with dark strips beside it, as a sheet with the desk along two sides). A darker one is the
    # ink of a tight crop (bold strokes can outnumber the paper).
    commonest = int(np.argmax(np.bincount(gray.ravel(), minlength=256)))
    if (
        not small
        and commonest > paper + 1
        and cv2.countNonZero(cv2.inRange(gray, commonest - 1, min(255, commonest + 1))) > covered
        and _dark_inside(gray < (paper + commonest) / 2)
    ):
        return picture, 0
    if sample.ndim == 2:
        value: tuple[float, ...] = (float(paper),)
    else:
        colours = np.concatenate([sample[0], sample[-1], sample[:, 0], sample[:, -1]])  # (N, C)
        value = tuple(float(level) for level in colours[int(np.argmax(ring == paper))])
    margin = max(1, round(EDGE_MARGIN * max(height, width)))
    padded = cv2.copyMakeBorder(
        np.ascontiguousarray(pixels), margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=value
    )
    return padded, margin


def normalize_digit(image: Any) -> np.ndarray | None:
    """Bring a picture of one handwritten digit into MNIST's form: (28, 28) uint8, or None.

    ``image`` is anything :func:`load_image` accepts. The steps, the same everywhere
    (CLI, server, Python API):

    0. an image already in MNIST's form (28x28 gray, white ink on exact black, the ink
       20 px on its longer side, centred by its mass: an MNIST digit, or this function's
       output) is returned as it is, and the same digit as dark ink on exact white (an
       MNIST digit saved as tutorials plot it) inverted; an image enlarged by repeating its pixels (a small
       scan or an MNIST digit zoomed pixel by pixel) is read as its own pixels enlarged
       smoothly (bicubic), or as the MNIST digit it shows; a digit on flat paper with little
       paper around it (a tight crop, a scanner's 16x16 cell) gets a margin of its paper;
    1. grayscale (any mode; transparency composited on the right background;
       coloured ink on coloured paper is projected on the ink's colour);
    2. polarity from the background: dark ink on light paper is inverted to MNIST's
       white ink on black;
    3. uneven lighting and paper texture evened out: a smooth background fitted
       robustly is subtracted, then the contrast is stretched from the paper's noise
       floor to the ink's level (anti-aliasing kept); a soft shadow, much wider than
       the strokes, is taken out;
    4. crop to the ink's bounding box, ignoring specks (connected pieces with under 6%
       of the main piece's ink, unless they are the fragments of one light stroke), a box
       drawn around the rest and a wide straight line under it (a form's cell and rule);
    5. strokes much thinner than MNIST's are thickened (a narrow glyph's much thicker
       ones thinned); scale to fit 20x20 keeping the aspect ratio (anti-aliased);
    6. paste into 28x28 with the centre of mass at the centre.

    A picture over LARGE pixels (a photo) is looked at first reduced to at most LARGE
    pixels, and again at the full analysis resolution only when its digit spans under
    SMALLEST_COARSE px there (a canvas drawing likewise at half resolution).

    Returns None when the image is blank or near blank (no ink, or only specks): no
    digit found, rather than a guess.
    """
    decoded, scale = load_picture(image, JPEG_DRAFT_PIXELS)
    # Already in MNIST's form (an MNIST digit saved as a file, this function's own output):
    # taken as it is. Normalizing it again would shrink and blur it a little (MNIST's test set:
    # 99.46% read that way, 99.59% as it is).
    already = _already_mnist(decoded)
    if already is not None:
        return already
    blocks = _pixel_blocks(decoded)
    if blocks is not None:
        # An MNIST digit shown large, pixel by pixel (a zoomed screenshot, pixel art): its own pixels.
        already = _already_mnist(blocks.small)
        if already is not None:
            return already
        decoded = blocks.smoothly()
    decoded, _ = _paper_margin(decoded)
    # Seen coarsely, a digit that came out small, or none found, is looked for again at full
    # resolution (a faint fine pen averaged down can fall under the contrast floor); if that
    # finds none, the coarse look's small digit stands (a small digit on a large noisy page:
    # averaging down lifts it out of the noise).
    found = None
    for coarse in (True, False) if _pixel_count(decoded) > HALVE_ABOVE else (False,):
        inkmap = _ink_map(decoded, scale, coarse=coarse)
        if inkmap is None:
            continue
        labels, pieces = _components(inkmap.ink, inkmap.cores)
        pieces = [p for p in pieces if _large_enough(p, inkmap.ink.shape)]
        pieces = _without_frames_and_rules(inkmap.ink, labels, pieces)
        if not pieces:
            continue
        merged = pieces[0]
        for piece in pieces[1:]:
            merged = _union(merged, piece)
        found = _piece_crop(inkmap.ink, labels, merged)
        if not inkmap.coarse or max(merged.width, merged.height) >= SMALLEST_COARSE:
            break
    return None if found is None else _to_mnist(found)


# --------------------------------------------------------------------------- several digits


def _union(a: _Piece, b: _Piece, parts: list[_Piece] | None = None) -> _Piece:
    return _Piece(
        a.labels + b.labels,
        min(a.x0, b.x0),
        min(a.y0, b.y0),
        max(a.x1, b.x1),
        max(a.y1, b.y1),
        a.mass + b.mass,
        a.seed,
        parts or [],
    )


def _gap(a: _Piece, b: _Piece) -> int:
    """Horizontal distance between two pieces' boxes (0 if they overlap)."""
    return max(0, max(a.x0, b.x0) - min(a.x1, b.x1))


def _absorb(group: _Piece, fragment: _Piece) -> _Piece:
    """A small fragment joins a group (and, if the group has parts, its nearest part)."""
    parts = group.parts
    if parts:
        nearest = min(range(len(parts)), key=lambda k: _gap(parts[k], fragment))
        parts = [_union(p, fragment) if k == nearest else p for k, p in enumerate(parts)]
    return _union(group, fragment, parts)


def _join(a: _Piece, b: _Piece, reference: float) -> _Piece:
    """Two pieces taken as one digit. If both are digit-sized, the parts are kept: the
    recognizer also reads them as two digits and keeps the more confident reading."""
    if min(a.height, b.height) >= TALL * reference:
        return _union(a, b, (a.parts or [a]) + (b.parts or [b]))
    return _absorb(b, a) if a.height < b.height else _absorb(a, b)


def _reference_height(pieces: list[_Piece]) -> float:
    """A digit's height in this row: the median of the tall pieces (not fragments, dashes)."""
    tallest = max(p.height for p in pieces)
    return float(np.median([p.height for p in pieces if p.height >= 0.6 * tallest]))


def _group_pieces(ink: np.ndarray, pieces: list[_Piece]) -> list[_Piece]:
    """Group the pieces of ink into digits, left to right.

    1. pieces less than 4% of a digit's height apart are one digit (a hairline gap in a
       stroke); found by labelling the ink grown by that distance;
    2. pieces that overlap horizontally by half the narrower one are one digit (the bar of
       a 5 over its body, the halves of a broken 4);
    3. a fragment (under half a digit's height) joins its nearest neighbour if that is
       less than a third of a digit's height away; an isolated small fragment (under 35%)
       is a dash or a stray mark and is dropped.
    """
    if not pieces:
        return []
    reference = _reference_height(pieces)
    radius = 0.04 * reference
    if radius >= 1.0 and len(pieces) > 1:
        grown, _ = _label(cv2.dilate((ink > 0.15).view(np.uint8), _disk(radius).view(np.uint8)) > 0)
        by_region: dict[int, _Piece] = {}
        for piece in pieces:
            region = int(grown[piece.seed])
            by_region[region] = _join(by_region[region], piece, reference) if region in by_region else piece
        pieces = list(by_region.values())

    changed = True
    while changed:
        changed = False
        pieces.sort(key=lambda p: p.x0)
        for k in range(len(pieces) - 1):
            a, b = pieces[k], pieces[k + 1]
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
            if overlap >= 0.5 * min(a.width, b.width):
                pieces[k : k + 2] = [_join(a, b, reference)]
                changed = True
                break

    changed = True
    while changed:
        changed = False
        pieces.sort(key=lambda p: p.x0)
        for k, piece in enumerate(pieces):
            if piece.height >= 0.5 * reference or len(pieces) == 1:
                continue
            others = [j for j in range(len(pieces)) if j != k]
            nearest = min(others, key=lambda j: _gap(piece, pieces[j]))
            if _gap(piece, pieces[nearest]) <= reference / 3:
                merged = _absorb(pieces[nearest], piece)
                pieces = [p for j, p in enumerate(pieces) if j not in (k, nearest)] + [merged]
                changed = True
                break
    pieces = [p for p in pieces if p.height >= 0.35 * reference]
    return sorted(pieces, key=lambda p: p.x0)


def _cuts(crop: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Column ranges splitting ``crop`` into ``count`` digits: each cut at the column of
    least ink (smoothed projection) near its expected place."""
    from scipy import ndimage as ndi

    width = crop.shape[1]
    if count < 2:
        return [(0, width)]
    projection = ndi.uniform_filter1d(crop.sum(axis=0), size=max(1, width // 40))
    cuts = [0]
    for k in range(1, count):
        expected = k * width / count
        lo = max(cuts[-1] + 1, int(expected - 0.3 * width / count))
        hi = min(width - 1, int(expected + 0.3 * width / count))
        cuts.append(lo + int(np.argmin(projection[lo : hi + 1])) if hi > lo else int(expected))
    cuts.append(width)
    return list(itertools.pairwise(cuts))


# One digit read from a row: its (28, 28) uint8 image and its box (x, y, w, h) in the
# original image's pixels.
Segment = tuple[np.ndarray, tuple[int, int, int, int]]


@dataclass
class SegmentGroup:
    """One group of ink in a row and the ways to read it.

    options[k] is a reading of the group as one or more digits (left to right);
    options[preferred] is the geometric guess (split when much wider than a digit).
    A recognizer may pick another option by how confidently it reads each.
    """

    options: list[list[Segment]]
    preferred: int


def _two_way_cuts(crop: np.ndarray, tries: int = 3) -> list[list[tuple[int, int]]]:
    """Up to ``tries`` ways to cut ``crop`` in two: at the columns of least ink between 20%
    and 80% of its width, at least 8% of the width apart (touching digits rarely meet at
    the very minimum of the projection)."""
    from scipy import ndimage as ndi

    width = crop.shape[1]
    projection = ndi.uniform_filter1d(crop.sum(axis=0), size=max(1, width // 40))
    lo, hi = int(0.2 * width), int(0.8 * width)
    chosen: list[int] = []
    for column in lo + np.argsort(projection[lo : hi + 1], kind="stable"):
        if all(abs(int(column) - c) >= 0.08 * width for c in chosen):
            chosen.append(int(column))
        if len(chosen) == tries:
            break
    return [[(0, c), (c, width)] for c in chosen if 0 < c < width]


def _read_part(labels: np.ndarray, ink: np.ndarray, part: _Piece, inverse: float) -> Segment | None:
    """One piece of ink (its own components only) as a digit and its box in original pixels."""
    digit = _to_mnist(_piece_crop(ink, labels, part))
    if digit is None:
        return None
    box = (
        int(part.x0 * inverse),
        int(part.y0 * inverse),
        round(part.width * inverse),
        round(part.height * inverse),
    )
    return digit, (box[0], box[1], max(1, box[2]), max(1, box[3]))


def _split_options(
    ink: np.ndarray, labels: np.ndarray, piece: _Piece, reference: float, inverse: float
) -> SegmentGroup | None:
    """Readings of one group: as one digit; when wide, as 2..5 touching digits (each cut-off
    piece at least TALL of the row's digit height); when made of digit-sized parts that
    overlap, as those parts."""
    crop = _piece_crop(ink, labels, piece)
    height = max(reference, piece.height)
    width = crop.shape[1]
    estimate = max(1, round(width / (0.75 * height)))
    cut_sets: list[list[tuple[int, int]]] = [[(0, width)]]
    preferred_count = estimate if width >= SPLIT_RATIO * height and estimate >= 2 else 1
    preferred = 0
    if width >= CONSIDER_SPLIT * height:
        cut_sets += _two_way_cuts(crop)
        cut_sets += [_cuts(crop, n) for n in (estimate - 1, estimate, estimate + 1) if 3 <= n <= 5]
        if preferred_count > 1:
            preferred = next((k for k, cuts in enumerate(cut_sets) if len(cuts) == preferred_count), 0)
    options: list[list[Segment]] = []
    if len(piece.parts) > 1:
        # Each digit-sized part read on its own (labels restrict each to its own ink).
        separate = [
            _read_part(labels, ink, part, inverse) for part in sorted(piece.parts, key=lambda p: p.x0)
        ]
        if all(segment is not None for segment in separate):
            options.append([segment for segment in separate if segment is not None])
    for index, cuts in enumerate(cut_sets):
        option: list[Segment] = []
        for start, stop in cuts:
            part = crop[:, start:stop]
            rows = np.where((part > 0.15).any(axis=1))[0]
            cols = np.where((part > 0.15).any(axis=0))[0]
            if rows.size == 0:
                break
            part = part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            if len(cuts) > 1 and part.shape[0] < TALL * reference:
                # A cut-off piece much shorter than the row's digits is part of a wide digit (the
                # curve of a flat 5, the foot of a wide 2), not a digit of its own.
                break
            digit = _to_mnist(part)
            if digit is None:
                break
            box = (
                int((piece.x0 + start + cols[0]) * inverse),
                int((piece.y0 + rows[0]) * inverse),
                max(1, round(part.shape[1] * inverse)),
                max(1, round(part.shape[0] * inverse)),
            )
            option.append((digit, box))
        if len(option) == len(cuts):
            if index == preferred:
                preferred = len(options)
            options.append(option)
        elif index == preferred:
            preferred = 0
    return SegmentGroup(options, min(preferred, len(options) - 1)) if options else None


def segment_groups(image: Any) -> list[SegmentGroup]:
    """Like :func:`segment_digits`, with every candidate reading of each group of ink.

    :class:`digitrec.recognition.Recognizer` uses this to decide between "one wide digit"
    and "touching digits" by how confidently the model reads each option.
    """
    decoded, scale = load_picture(image, JPEG_DRAFT_PIXELS)
    height, width = decoded.shape[:2] if isinstance(decoded, np.ndarray) else (decoded.height, decoded.width)
    widened, margin = _paper_margin(_smooth_pixel_repeats(decoded))
    inkmap = _ink_map(widened, scale)
    if inkmap is None:
        return []
    labels, pieces = _components(inkmap.ink, inkmap.cores)
    pieces = _without_frames_and_rules(inkmap.ink, labels, pieces, row=True)
    if not pieces:
        return []
    pieces = [p for p in _group_pieces(inkmap.ink, pieces) if _large_enough(p, inkmap.ink.shape)]
    if not pieces:
        return []
    reference = _reference_height(pieces)
    groups = []
    for piece in pieces:
        group = _split_options(inkmap.ink, labels, piece, reference, 1.0 / inkmap.scale)
        if group is not None:
            groups.append(
                group
                if margin == 0
                else _without_margin(group, margin / scale, width / scale, height / scale)
            )
    return groups


def _without_margin(group: SegmentGroup, margin: float, width: float, height: float) -> SegmentGroup:
    """A group's boxes in the picture's own pixels, from those of the picture with a margin
    around it (``margin`` px of the original on each side; the original ``width`` x ``height``)."""

    def inside(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0 = max(0, round(box[0] - margin)), max(0, round(box[1] - margin))
        x1 = min(round(width), round(box[0] + box[2] - margin))
        y1 = min(round(height), round(box[1] + box[3] - margin))
        return x0, y0, max(1, x1 - x0), max(1, y1 - y0)

    options = [[(digit, inside(box)) for digit, box in option] for option in group.options]
    return SegmentGroup(options, group.preferred)


def segment_digits(image: Any) -> list[Segment]:
    """Split a row of handwritten digits into MNIST-style digits, left to right.

    Each item is ``(digit, (x, y, w, h))``: the (28, 28) uint8 image (as from
    :func:`normalize_digit`) and the bounding box in the original image's pixels.
    Connected pieces of ink are found as in :func:`normalize_digit` and grouped into digits
    (broken strokes merged, stray fragments dropped: see :func:`_group_pieces`); a group
    at least 1.6x wider than a digit is tall is split into touching digits at the columns
    of least ink. An empty list means no digit was found. (The Recognizer goes further:
    for a wide group it reads every split and keeps the most confident, see
    :func:`segment_groups`.)
    """
    return [segment for group in segment_groups(image) for segment in group.options[group.preferred]]
