"""Shared by the recognition tests: images of MNIST digits."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def ink_on_paper(digit: np.ndarray, height: int = 200, canvas: int = 320) -> np.ndarray:
    """An MNIST digit (28, 28) uint8 as black ink on white paper, ``height`` px tall, centred on a
    ``canvas`` px square: (canvas, canvas) uint8."""
    rows = np.where(digit.max(axis=1) > 0)[0]
    cols = np.where(digit.max(axis=0) > 0)[0]
    tight = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    width = max(1, round(tight.width * height / tight.height))
    big = np.asarray(tight.resize((width, height), Image.Resampling.BICUBIC))
    page = np.zeros((canvas, canvas), np.uint8)
    top, left = (canvas - height) // 2, (canvas - width) // 2
    page[top : top + height, left : left + width] = big
    return 255 - page


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two (28, 28) images."""
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def first_unsure_digit(recognizer: object, images: np.ndarray) -> int:
    """The index of the first (28, 28) uint8 image of ``images`` that ``recognizer`` reads below
    SECOND_LOOK_BELOW, the second look's threshold (below it after the look, so below it before:
    the look was taken)."""
    from digitrec.recognition import SECOND_LOOK_BELOW

    probabilities = recognizer._probabilities(list(images))[:, :10]  # type: ignore[attr-defined]
    unsure = np.flatnonzero(probabilities.max(axis=1) < SECOND_LOOK_BELOW)
    assert unsure.size, f"no unsure digit among {len(images)} images"
    return int(unsure[0])
