"""Shared by the recognition tests: the model they read with, and image helpers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from digitrec.recognition import default_model_dir


def has_default_model() -> bool:
    folder = default_model_dir()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def model_run(tmp_root: Path) -> Path:
    """The bundled default model's folder; without it (a checkout before the model was
    committed), a small MLP trained for real on MNIST in a few seconds."""
    if has_default_model():
        return default_model_dir()
    from digitrec.config import recipe_config
    from digitrec.training import train

    out = tmp_root / "fallback-mlp"
    train(recipe_config("tutorial-mlp", epochs=5, device="cpu"), out_dir=out, progress=False)
    return out


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
