"""Evaluation: accuracy, per-class precision and recall, confusion matrix.

Training's ``val_accuracy`` and ``digitrec evaluate`` both go through
:func:`score`, with the same batch size, so they agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Small batches keep a convolution's activations in cache: on 2 cores, 200 images per forward pass
# score the test set 1.3x (LeNet) to 1.8x (cnn, resnet) faster than 1000 do. A GPU wants large
# batches to fill its cores; 2000 keeps the largest model's activations to a few hundred MB.
EVAL_BATCH_SIZE = 200
GPU_EVAL_BATCH_SIZE = 2000


@torch.no_grad()
def score(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Scores for uint8 images (N, 28, 28): returns (N, 10) float32 on the images' device (or
    whatever ``model`` outputs per image: the not-a-digit head's fit reads features with it).

    ``batch_size`` defaults to ``EVAL_BATCH_SIZE`` on the CPU and ``GPU_EVAL_BATCH_SIZE`` elsewhere."""
    if batch_size is None:
        batch_size = EVAL_BATCH_SIZE if images.device.type == "cpu" else GPU_EVAL_BATCH_SIZE
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].unsqueeze(1).to(torch.float32).div_(255.0)
        outputs.append(model(x).float())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 10, device=images.device)
    return torch.cat(outputs)


# Test-time augmentation: the image itself and its one-pixel shifts (dy, dx).
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift uint8 images (N, 28, 28) by whole pixels, filling with background (0)."""
    if dy == 0 and dx == 0:
        return images
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    return padded[:, 1 - dy : 1 - dy + images.shape[1], 1 - dx : 1 - dx + images.shape[2]]


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Class probabilities (N, 10) for uint8 images (N, 28, 28); with ``tta`` averaged over 1-pixel shifts."""
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    total = torch.zeros(len(images), 10, device=images.device)
    for dy, dx in shifts:
        total += score(model, _shift(images, dy, dx)).softmax(dim=1)
    return total / len(shifts)


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(num_classes, num_classes) int64; row = true class, column = predicted class."""
    flat = labels.to(torch.int64) * num_classes + predicted.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class EvalReport:
    accuracy: float
    num_examples: int
    confusion: list[list[int]]  # row = true digit, column = predicted digit

    @property
    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        for digit in range(len(self.confusion)):
            true_positive = self.confusion[digit][digit]
            support = sum(self.confusion[digit])
            predicted = sum(row[digit] for row in self.confusion)
            rows.append(
                {
                    "digit": digit,
                    "precision": true_positive / predicted if predicted else 0.0,
                    "recall": true_positive / support if support else 0.0,
                    "support": support,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "num_examples": self.num_examples,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion,
        }


def report_from_predictions(predicted: torch.Tensor, labels: torch.Tensor) -> EvalReport:
    matrix = confusion_matrix(predicted.cpu(), labels.cpu())
    correct = int(matrix.diagonal().sum())
    total = int(matrix.sum())
    return EvalReport(
        accuracy=correct / total if total else 0.0, num_examples=total, confusion=matrix.tolist()
    )


def evaluate(
    model: nn.Module | list[nn.Module], images: torch.Tensor, labels: torch.Tensor, tta: bool = False
) -> EvalReport:
    """Evaluate a model, or an ensemble of models (their probabilities averaged), on uint8 images
    (N, 28, 28) with int labels (N,). Without ``tta`` a single model's argmax is exactly the one that
    training's ``val_accuracy`` used."""
    models = model if isinstance(model, list) else [model]
    device = next(models[0].parameters()).device
    images = images.to(device)
    if len(models) == 1 and not tta:
        return report_from_predictions(score(models[0], images).argmax(1), labels)
    probabilities = sum(predict_proba(m, images, tta=tta) for m in models)
    assert isinstance(probabilities, torch.Tensor)
    return report_from_predictions(probabilities.argmax(1), labels)


def format_report(report: EvalReport) -> str:
    """A human-readable table: accuracy, per-class precision/recall, confusion matrix."""
    lines = [f"accuracy: {report.accuracy:.4f} ({report.num_examples} images)", ""]
    lines.append("digit  precision  recall  support")
    for row in report.per_class:
        lines.append(
            f"{row['digit']:>5}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['support']:>7}"
        )
    lines += ["", "confusion matrix (rows: true digit, columns: predicted digit)"]
    lines.append("      " + "".join(f"{d:>6}" for d in range(len(report.confusion))))
    for digit, counts in enumerate(report.confusion):
        lines.append(f"{digit:>5} " + "".join(f"{count:>6}" for count in counts))
    return "\n".join(lines)
