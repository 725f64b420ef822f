"""Run directories and checkpoints: safetensors plus JSON, every write atomic.

What a run directory holds is listed in :mod:`digitrec.runs`. Nothing here unpickles: tensors
come from safetensors, everything else is JSON.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from .config import TrainConfig
from .errors import DigitrecError
from .fileio import write_bytes_atomic, write_json_atomic
from .models import create_ensemble, prefer_channels_last, with_not_digit_head
from .runs import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE

# A not-a-digit head's tensors: head.* in a model, members.<k>.head.* in an ensemble.
_HEAD_KEY = re.compile(r"(^|\.)head\.")

# Far above anything digitrec writes (config.json is a few KB; the largest checkpoint, weights plus
# AdamW state of `best-mlp`, about 25 MB), so that a wrong or hostile file is refused by its size
# before a byte of it is read into memory.
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 1 << 30


def read_run_file(path: Path, limit: int) -> bytes:
    """A run directory's file, read whole: one clear error for anything but a regular file of at
    most ``limit`` bytes (missing, a folder, a symlink loop, unreadable, too large)."""
    try:
        info = path.stat()  # follows symlinks: a loop raises ELOOP here
        if not stat.S_ISREG(info.st_mode):
            raise DigitrecError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise DigitrecError(f"{path}: {info.st_size:,} bytes, over this file's limit of {limit:,}")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)  # bounded even if the file grows after the stat
    except FileNotFoundError:
        raise DigitrecError(f"{path}: file not found") from None
    except OSError as exc:
        raise DigitrecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise DigitrecError(f"{path}: over this file's limit of {limit:,} bytes")
    return data


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    raw = read_run_file(path, MAX_WEIGHTS_BYTES)
    try:
        tensors = load_safetensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError, AttributeError) as exc:
        raise DigitrecError(f"{path}: not a valid safetensors file ({exc})") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DigitrecError(f"{path}: not a valid safetensors file (metadata is not a string map)")
    for name, tensor in tensors.items():
        # NaN weights would answer every image with "confidence nan"; a run that diverged is no model.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DigitrecError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors, metadata


def _check_fits(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Names, shapes and dtypes as the model has them: load_state_dict would cast another dtype
    silently (float16 weights into a float32 model load "fine" and read differently)."""
    expected = model.state_dict()
    given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise DigitrecError(f"{path}: weights do not fit the model ({detail})")
    for name, want in expected.items():
        got = given[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise DigitrecError(
                f"{path}: weights do not fit the model ({prefix}{name}: {got.dtype} {tuple(got.shape)}, "
                f"the model has {want.dtype} {tuple(want.shape)})"
            )


def write_config(run_dir: Path, config: TrainConfig, extra: dict[str, Any]) -> None:
    write_json_atomic(run_dir / CONFIG_FILE, {"train": config.to_dict(), **extra})


def read_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DigitrecError(f"{run_dir}: run directory not found")
    path = run_dir / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        raise DigitrecError(f"{path}: missing; is {run_dir} a digitrec run directory?")
    raw = read_run_file(path, MAX_CONFIG_BYTES)
    try:
        data = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise DigitrecError(f"{path}: corrupt run configuration (JSON nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DigitrecError(f"{path}: corrupt run configuration ({exc})") from None
    train = data.get("train") if isinstance(data, dict) else None
    if not isinstance(train, dict):
        raise DigitrecError(f'{path}: corrupt run configuration ("train" must be a JSON object)')
    try:
        return TrainConfig.from_dict(train)
    except DigitrecError as exc:
        raise DigitrecError(f"{path}: corrupt run configuration ({exc})") from None


def read_calibration(run_dir: str | os.PathLike[str]) -> dict[str, float]:
    """config.json's "calibration" (temperature, not_digit_energy_below), checked; {} without one."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = json.loads(read_run_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (ValueError, RecursionError):
        raise DigitrecError(f"{path}: corrupt run configuration") from None
    calibration = data.get("calibration", {}) if isinstance(data, dict) else {}
    if not isinstance(calibration, dict):
        raise DigitrecError(f'{path}: corrupt run configuration ("calibration" must be a JSON object)')
    out: dict[str, float] = {}
    for key, low, high in (("temperature", 0.0, float("inf")), ("not_digit_energy_below", -1e6, 1e6)):
        if key in calibration:
            value = calibration[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise DigitrecError(f"{path}: corrupt run configuration (calibration {key} {value!r})")
            out[key] = float(value)
    return out


def save_model(path: Path, model: nn.Module, config: TrainConfig, epoch: int) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"digitrec_config": json.dumps(config.to_dict()), "epoch": str(epoch)}
    write_bytes_atomic(path, save_safetensors(tensors, metadata=metadata))


def load_weights(model: nn.Module, path: Path) -> dict[str, str]:
    tensors, metadata = _read_safetensors(path)
    _load_tensors(model, path, tensors)
    return metadata


def _load_tensors(model: nn.Module, path: Path, tensors: dict[str, torch.Tensor]) -> None:
    _check_fits(path, model, tensors)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise DigitrecError(f"{path}: weights do not fit the model ({first_line})") from None


def load_model(
    run_dir: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """Rebuild a run's model from config.json and model.safetensors, in eval mode."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    try:
        model = create_ensemble(config.model, config.ensemble, **config.model_args)
    except DigitrecError as exc:
        raise DigitrecError(f"{run_dir / CONFIG_FILE}: {exc}") from None
    path = run_dir / MODEL_FILE
    tensors, _ = _read_safetensors(path)
    # A run with a not-a-digit head saves it after its last epoch (training.fit_not_digit_head): the
    # weights of an earlier epoch have none.
    if config.not_digit_head and any(_HEAD_KEY.search(name) for name in tensors):
        model = with_not_digit_head(model, config.not_digit_head)
    _load_tensors(model, path, tensors)
    return prefer_channels_last(model.to(device)).eval(), config


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    ema_model: nn.Module | None = None,
) -> None:
    """One file, one atomic replace: weights, weight average and optimizer state always agree."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema_model is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema_model.state_dict().items()})
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, state in optim_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    # A learning rate held in a tensor (a CUDA-graphed optimizer reads it from device memory) is saved
    # as a number: the checkpoint does not depend on how the run was executed.
    param_groups = [
        {key: float(value) if isinstance(value, torch.Tensor) else value for key, value in group.items()}
        for group in optim_state["param_groups"]
    ]
    metadata = {
        "epoch": str(epoch),
        "digitrec_config": json.dumps(config.to_dict()),
        "param_groups": json.dumps(param_groups),
        "optim_scalars": json.dumps(scalars),
    }
    write_bytes_atomic(run_dir / CHECKPOINT_FILE, save_safetensors(tensors, metadata=metadata))


# Optimizer settings that say how it runs, not what it computes: kept from the running optimizer.
EXECUTION_KEYS = ("capturable", "foreach", "fused", "differentiable")


def load_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema_model: nn.Module | None = None
) -> int:
    """Restore weights and optimizer state in place; returns the number of completed epochs."""
    path = run_dir / CHECKPOINT_FILE
    tensors, metadata = _read_safetensors(path)
    try:
        epoch = int(metadata["epoch"])
        param_groups = json.loads(metadata["param_groups"])
        scalars = json.loads(metadata["optim_scalars"])
    except (KeyError, ValueError) as exc:
        raise DigitrecError(f"{path}: checkpoint metadata is incomplete ({exc})") from None
    for prefix, target in (("model.", model), ("ema.", ema_model)):
        if target is not None:
            _check_fits(path, target, tensors, prefix)
    try:
        for prefix, target in (("model.", model), ("ema.", ema_model)):
            if target is not None:
                target.load_state_dict(
                    {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
                )
    except RuntimeError as exc:
        raise DigitrecError(f"{path}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in scalars.items():
        state.setdefault(int(param_id), {}).update(values)
    # How the optimizer executes (capturable for CUDA graphs, foreach, fused) belongs to this process,
    # not to the checkpoint: a run saved on a GPU resumes on a CPU and the other way round.
    for saved, current in zip(param_groups, optimizer.param_groups, strict=False):
        saved.update({key: current[key] for key in EXECUTION_KEYS if key in current})
    lr_tensors = [
        group["lr"] if isinstance(group["lr"], torch.Tensor) else None for group in optimizer.param_groups
    ]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    for group, lr_tensor in zip(optimizer.param_groups, lr_tensors, strict=True):
        if lr_tensor is not None:
            lr_tensor.fill_(float(group["lr"]))
            group["lr"] = lr_tensor
    return epoch


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    write_bytes_atomic(run_dir / METRICS_FILE, text.encode("utf-8"))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                raise DigitrecError(f"{path}:{number}: not valid JSON") from None
            problem = _metrics_row_problem(row)
            if problem:
                # A hand-edited or foreign file: said here, not as a KeyError in report or resume.
                raise DigitrecError(f"{path}:{number}: not a row of digitrec's metrics ({problem})")
            rows.append(row)
    return rows


def last_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last row of the run's metrics, for display only (a model's info, an export's
    metadata): None where there are none or the file is damaged, which costs the display its
    figures and never the use of the model."""
    try:
        rows = read_metrics(run_dir)
    except DigitrecError:
        return None
    return rows[-1] if rows else None


# What every row of metrics.jsonl holds (an ensemble's last row has members_val_accuracy too).
METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "epoch_seconds")


def _metrics_row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    for name in METRIC_FIELDS:
        if name not in row:
            return f"{name} is missing"
        value = row[name]
        wanted = int if name == "epoch" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            return f"{name} is {value!r}, not a number"
    if row["epoch"] < 1:
        return f"epoch is {row['epoch']}"
    return None
