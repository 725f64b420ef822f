"""Score digits with an exported ONNX model on onnxruntime, without torch.

    scorer = OnnxScorer("lenet.onnx")
    scores = scorer(images)          # images: (N, 1, 28, 28) float32 in [0, 1] -> (N, 10) float32
    digits = scores.argmax(1)

This module imports only numpy and onnxruntime (and digitrec's torch-free
``errors``), so a process that only predicts starts without loading PyTorch.
Write the model with ``digitrec export DIR --format onnx``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DigitrecError

INPUT_SHAPE = (1, 28, 28)  # per image; the batch axis is dynamic
NUM_CLASSES = 10


def import_onnxruntime() -> Any:
    """``onnxruntime``, imported with its telemetry off unless the user has chosen
    (``ORT_DISABLE_TELEMETRY``). Its recent official Linux builds (1.32 here) otherwise write a
    device id under ``~/.cache/Microsoft``, leave a ``.ses`` file in ``$TMPDIR`` and send usage
    events: not what reading a digit should do behind the user's back. The setting must
    precede the import (onnxruntime reads it once); child processes inherit it. Raises
    ImportError where onnxruntime is not installed."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    return onnxruntime


class OnnxScorer:
    """A callable over an onnxruntime session: (N, 1, 28, 28) float32 -> (N, 10) scores.

    ``info`` holds what digitrec stored in the model (model, recipe, dataset, epoch,
    validation accuracy, the full training configuration) plus ``format`` and ``path``.
    """

    def __init__(
        self, path: str | os.PathLike[str], threads: int | None = None, *, data: bytes | None = None
    ) -> None:
        """``data``: the model's bytes (``digitrec serve --backend onnx`` exports in memory);
        ``path`` then only names it in messages and ``info``."""
        try:
            onnxruntime = import_onnxruntime()
        except ImportError:
            raise DigitrecError("ONNX scoring needs onnxruntime: pip install 'digitrec[onnx]'") from None
        self.path = Path(path)
        if data is None:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                raise DigitrecError(f"{self.path}: file not found") from None
            except IsADirectoryError:
                raise DigitrecError(f"{self.path}: is a folder, not an .onnx file") from None
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DigitrecError(f"{self.path}: not a usable ONNX model ({first_line})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or list(inputs[0].shape[1:]) != list(INPUT_SHAPE):
            shapes = [i.shape for i in inputs]
            raise DigitrecError(f"{self.path}: expected one input of shape (N, 1, 28, 28), got {shapes}")
        self._input, self._output = inputs[0].name, outputs[0].name
        self.info = _model_info(self._session.get_modelmeta().custom_metadata_map, self.path)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: (N, 1, 28, 28) float32 in [0, 1] (other float dtypes are converted) -> (N, 10) float32."""
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            raise DigitrecError(f"expected images of shape (N, 1, 28, 28), got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise DigitrecError(f"expected float images in [0, 1], got dtype {x.dtype}")
        if len(x) == 0:
            return np.empty((0, NUM_CLASSES), dtype=np.float32)
        x = np.ascontiguousarray(x, dtype=np.float32)
        (scores,) = self._session.run([self._output], {self._input: x})
        return np.asarray(scores, dtype=np.float32)


def _model_info(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"format": "onnx", "path": str(path)}
    try:
        config = json.loads(metadata.get("digitrec_config", "{}"))
    except ValueError:
        config = {}
    for key in ("model", "recipe", "dataset"):
        if key in config:
            info[key] = config[key]
    if metadata.get("epoch"):
        info["epoch"] = int(metadata["epoch"])
    if metadata.get("val_accuracy"):
        info["val_accuracy"] = float(metadata["val_accuracy"])
    # Written by digitrec 0.1 exports since 2026-12-03; older files lack them.
    if metadata.get("parameters", "").isdigit():
        info["parameters"] = int(metadata["parameters"])
    with contextlib.suppress(ValueError):
        info["temperature"] = float(metadata.get("temperature", ""))
    if metadata.get("weights_sha256"):
        info["weights_sha256"] = metadata["weights_sha256"]
    try:
        below = float(metadata.get("not_digit_energy_below", ""))
    except ValueError:  # absent or empty: a model without the threshold never says "not a digit"
        below = None
    if below is not None and math.isfinite(below):
        info["not_digit_energy_below"] = below
    if config:
        info["config"] = config
    return info
