"""The layout of a run directory, without torch: the file names, and the bundled run.

A run directory holds::

    config.json             what rebuilds the model and reruns the training
    metrics.jsonl           one JSON object per completed epoch
    model.safetensors       the latest weights (the unwrapped model, no DDP prefix)
    checkpoint.safetensors  weights + optimizer state + epoch, for --resume

:mod:`digitrec.checkpoints` reads and writes them; the bundled default model
(:func:`default_model_dir`) is such a folder inside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
ONNX_FILE = "model.onnx"  # digitrec export's default file in the run


def default_model_dir() -> Path:
    """The bundled default model: a run directory (config.json + model.safetensors) inside the package."""
    return Path(str(resources.files("digitrec") / "_data" / "default_model"))
