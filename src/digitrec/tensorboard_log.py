"""TensorBoard logging for ``digitrec train --tensorboard``: event files in ``RUN/tensorboard/``.

What is logged (step = epoch number, 1-based)::

    samples/train        a grid of the first training images, at the start
    loss/train           mean training loss of the epoch
    accuracy/train       training accuracy over the epoch
    accuracy/validation  test-set accuracy at the end of the epoch
    time/epoch_seconds   wall seconds of the training pass
    mistakes             the most confident test-set mistakes, labelled, at the end

    tensorboard --logdir runs/      # then open http://localhost:6006

Needs the ``tensorboard`` package (``pip install 'digitrec[tensorboard]'``);
only the master process writes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DigitrecError
from .evaluation import score

TENSORBOARD_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard scalar tag
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/validation",
    "epoch_seconds": "time/epoch_seconds",
}
SAMPLE_COUNT = 32
MISTAKE_COUNT = 32


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a DigitrecError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DigitrecError(
            "--tensorboard needs the tensorboard package: pip install 'digitrec[tensorboard]'"
        ) from None
    return SummaryWriter


def tile(images: torch.Tensor, columns: int = 8, pad: int = 2, scale: int = 2) -> np.ndarray:
    """(N, 28, 28) uint8 -> one uint8 image of about (rows * 30 * scale, columns * 30 * scale),
    white digits on black; ``scale`` repeats pixels (TensorBoard shows images at their own size)."""
    images = images.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    count, height, width = images.shape
    rows = max(1, -(-count // columns))
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad), dtype=np.uint8)
    for i, image in enumerate(images.cpu().numpy()):
        top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def open_log(run_dir: str | os.PathLike[str], sample_images: torch.Tensor, start_epoch: int = 0) -> Any:
    """A SummaryWriter on ``run_dir/tensorboard`` with a grid of ``sample_images`` (N, 28, 28) uint8.

    On resume (``start_epoch`` > 0) events after ``start_epoch`` left by a killed run are discarded.
    """
    writer_class = summary_writer_class()
    log_dir = Path(run_dir) / TENSORBOARD_DIR
    writer = writer_class(log_dir=str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)
    writer.add_image("samples/train", tile(sample_images[:SAMPLE_COUNT]), start_epoch, dataformats="HW")
    writer.flush()
    return writer


def log_epoch(writer: Any, row: dict[str, Any]) -> None:
    """One metrics.jsonl row as scalars at step ``row["epoch"]``; flushed so a live TensorBoard sees it."""
    for key, tag in SCALAR_TAGS.items():
        if key in row:
            writer.add_scalar(tag, row[key], row["epoch"])
    writer.flush()


def log_mistakes(
    writer: Any, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, step: int
) -> None:
    """The most confident mistakes on images (N, 28, 28) uint8, labels (N,), as one labelled image."""
    from PIL import Image

    from .reports import find_mistakes, mistakes_figure, png_bytes

    probabilities = torch.softmax(score(model, images), dim=1).cpu()
    mistakes = find_mistakes(probabilities, labels.cpu())
    png = png_bytes(mistakes_figure(images.cpu(), mistakes[:MISTAKE_COUNT], len(mistakes)))
    with Image.open(io.BytesIO(png)) as picture:
        pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
    writer.add_image("mistakes", pixels, step, dataformats="HWC")
    writer.flush()
