"""Export a run's model to ONNX, for onnxruntime and other runtimes.

    digitrec export runs/tutorial-lenet-20261126-091500 --out lenet.onnx

The ONNX model has one input, ``images``: float32 (N, 1, 28, 28) in [0, 1] with
a dynamic batch axis N (every digitrec model takes exactly that, so any
normalization lives inside the graph), and one output, ``scores``: float32
(N, 10), the model's unnormalized class scores (argmax = predicted digit).
The run's configuration and epoch travel in the model's metadata.

Uses PyTorch's maintained exporter (``torch.onnx.export(..., dynamo=True)``,
which needs ``onnxscript``); the TorchScript-based one is deprecated. Needs
``pip install 'digitrec[onnx]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .checkpoints import last_metrics, load_model, read_calibration
from .errors import DigitrecError
from .fileio import sha256_hex, write_bytes_atomic
from .models import count_parameters, fuse_ensemble
from .runs import MODEL_FILE, ONNX_FILE

INPUT_NAME = "images"
OUTPUT_NAME = "scores"
DEFAULT_OPSET = 18  # the oldest opset the exporter targets; runs on onnxruntime >= 1.14


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the exporter imports it; fail here with a clear message)
    except ImportError as exc:
        raise DigitrecError(f"ONNX export needs {exc.name}: pip install 'digitrec[onnx]'") from None
    return onnx


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs a warning per optional torchvision op it cannot register and emits
    # deprecation warnings from its internals: noise for a user who asked for a file.
    # onnxscript logs its version converter's fallbacks (checked below: the opset written).
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def model_to_onnx(
    model: nn.Module, opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None
) -> Any:
    """An ``onnx.ModelProto`` of ``model`` (taking (N, 1, 28, 28) float32), checked by onnx.checker."""
    onnx = _require_onnx()
    model = model.cpu().eval()
    # Batch 2, not 1: the exporter would specialize a size-1 axis instead of keeping it dynamic.
    example = torch.zeros(2, 1, 28, 28)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the first line
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DigitrecError(f"ONNX export failed: {first_line}") from exc
    if program is None:  # only when exporting to a path; typed Optional for that case
        raise DigitrecError("ONNX export failed: the exporter returned no program")
    proto = program.model_proto
    # Where no converter reaches the opset asked for, the exporter keeps the one it made (18).
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise DigitrecError(f"ONNX export failed: the exporter wrote opset {written}, not {opset}")
    proto.producer_name, proto.producer_version = "digitrec", __version__
    proto.doc_string = (
        f"input '{INPUT_NAME}': float32 (N, 1, 28, 28) in [0, 1]; output '{OUTPUT_NAME}': float32 (N, 10) "
        "class scores (logits), argmax = predicted digit"
    )
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, opset: int = DEFAULT_OPSET
) -> Path:
    """Export the model of ``run_dir`` to ``out`` (default ``run_dir/model.onnx``), atomically."""
    newest = _require_onnx().defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise DigitrecError(
            f"--opset must be {DEFAULT_OPSET}-{newest} (the newest the installed onnx knows), got {opset}"
        )
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir / ONNX_FILE
    if target.is_dir():
        raise DigitrecError(f"{target}: is a folder; --out names the .onnx file to write")
    if target.suffix != ".onnx" and target.is_file() and target.resolve().parent == run_dir.resolve():
        # --out runs/x/model.safetensors: the run's own weights (or config, checkpoint, metrics).
        raise DigitrecError(f"{target}: is a file of the run itself; --out names the .onnx file to write")
    write_bytes_atomic(target, onnx_bytes(run_dir, opset))
    return target


def onnx_bytes(run_dir: str | os.PathLike[str], opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model of ``run_dir``, with its metadata (what export_onnx writes)."""
    _require_onnx()  # before loading anything: a missing package is the user's first problem
    model, config = load_model(run_dir)
    last = last_metrics(run_dir)
    calibration = read_calibration(run_dir)
    metadata = {
        "digitrec_config": json.dumps(config.to_dict()),
        "digitrec_version": __version__,
        "epoch": str(last["epoch"]) if last else "",
        "val_accuracy": str(last["val_accuracy"]) if last else "",
        # The temperature is already folded into the weights (recorded for info); the rejection
        # threshold travels here.
        "not_digit_energy_below": str(calibration.get("not_digit_energy_below", "")),
        "temperature": str(calibration.get("temperature", 1.0)),
        "parameters": str(count_parameters(model)),
        # Which weights this graph was made from: a copy shipped beside them (the bundled
        # model's) is used only while it still matches them (recognition.Recognizer.default).
        "weights_sha256": sha256_hex((Path(run_dir) / MODEL_FILE).read_bytes()),
    }
    # An ensemble as one graph with its members side by side (the same scores).
    proto = model_to_onnx(fuse_ensemble(model), opset=opset, metadata=metadata)
    data: bytes = proto.SerializeToString()
    return data
