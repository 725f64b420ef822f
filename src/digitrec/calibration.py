"""Calibrated confidence and "not a digit": temperature scaling, the rejection rule, ECE.

Confidence is calibrated when, of all answers given with confidence about 0.9, about 90% are
right. Label smoothing and weight averaging leave a model under-confident (right 99.5% of the
time at confidence 0.95); one number, a temperature T fitted on held-out digits by the
negative log-likelihood (Guo et al., "On Calibration of Modern Neural Networks", 2017), fixes
that. It is folded into the last layer (weights and bias divided by T), so every backend,
ONNX included, gives calibrated probabilities with nothing else to carry.

The rejection rule (README "Not a digit"), on the calibrated scores s (logits) of one image:

* ``not_a_digit`` when the energy score ``log(sum(exp(s)))`` (Liu et al., "Energy-based
  Out-of-distribution Detection", 2020) is below the model's ``not_digit_energy_below``: how
  strongly the evidence points at any digit at all. Trained with non-digits against the uniform
  distribution, the model gives a letter or a scribble low, even scores, while a digit it
  hesitates over (a 4 or a 9) still has strong evidence for two. Measured against the maximum
  probability and the mass of the two most likely digits at the same share of held-out digits
  kept, it flags the most non-digits (README "Not a digit, or not sure");
* ``low_confidence`` when the most likely digit has less than ``min_confidence`` (a user's
  setting; off by default).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
# Single mode looks for several digits in an image read below this confidence (or rejected): a row
# of digits squeezed into one 28x28 reads as nothing in particular.
SEVERAL_DIGITS_BELOW = 0.9
# The share of held-out digits the not-a-digit threshold keeps (its quantile on those digits).
KEEP_HELD_OUT = 0.997


def energy(scores: np.ndarray) -> np.ndarray:
    """(N, 10) scores (logits) -> (N,) log(sum(exp(scores))), computed stably in float64."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max(axis=1)
    return top + np.log(np.exp(scores - top[:, None]).sum(axis=1))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the gap between confidence and accuracy, averaged over equal-width
    confidence bins weighted by their share of the answers (a fraction; 0.02 = 2 points)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - right[inside].mean())
    return float(total)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimizes the NLL of softmax(logits / T): a grid, then a finer one."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))

    def nll(t: float) -> float:
        return float(-_log_softmax(logits / t)[rows, labels].mean())

    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = float(grid[int(np.argmin([nll(t) for t in grid]))])
    fine = best * np.exp(np.linspace(-0.06, 0.06, 61))
    return float(fine[int(np.argmin([nll(t) for t in fine]))])


def not_digit_threshold(scores: np.ndarray, keep: float = KEEP_HELD_OUT) -> float:
    """The energy below which an image is "not a digit": ``keep`` of these digits' scores are above."""
    return float(np.quantile(energy(scores), 1.0 - keep))


def fold_temperature(model: Any, temperature: float) -> None:
    """Divide the last linear layer by ``temperature``, in place: the model then outputs logits / T.

    Only right when that layer's output is the model's output; checked on a probe batch.
    """
    import torch
    from torch import nn

    from .errors import DigitrecError
    from .models import Ensemble, NotDigitHead

    if isinstance(model, Ensemble):
        # The mean of the members' scores divided by T is the mean of their scores divided by T.
        for member in model.members:
            fold_temperature(member, temperature)
        return
    if isinstance(model, NotDigitHead):
        # The classifier's scores are divided; the head's shift, common to all ten, stays as it is
        # (the softmax ignores it): it lowers the calibrated scores' energy.
        with torch.no_grad():
            model.scores.weight.div_(temperature)
            if model.scores.bias is not None:
                model.scores.bias.div_(temperature)
        return
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DigitrecError("calibration needs a model that ends in a linear layer")
    last = linears[-1]
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, output: seen.append(output.detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = torch.rand(2, 1, 28, 28, device=last.weight.device)
            out = model(probe)
        if not seen or not torch.allclose(seen[-1], out):
            raise DigitrecError("calibration needs a model whose output is its last linear layer's")
        with torch.no_grad():
            last.weight.div_(temperature)
            if last.bias is not None:
                last.bias.div_(temperature)
    finally:
        handle.remove()
        model.train(was_training)


def selective_summary(
    probabilities: np.ndarray, labels: np.ndarray, rejected: list[str | None], found: np.ndarray | None = None
) -> dict[str, Any]:
    """Coverage and accuracy at the chosen setting, and calibration.

    probabilities (N, 10) (zeros where no digit was found), labels (N,), rejected per image (None =
    answered). ``coverage``: the share answered; ``answered_accuracy``: right among those;
    ``ece``: expected calibration error over the images where ink was found.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    answered = np.array([r is None for r in rejected], dtype=bool)
    if found is None:
        found = probabilities.sum(axis=1) > 0
    right = probabilities.argmax(axis=1) == labels
    reasons: dict[str, int] = {}
    for reason in rejected:
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
    total = len(labels)
    return {
        "coverage": float(answered.mean()) if total else 0.0,
        "answered_accuracy": float(right[answered].mean()) if answered.any() else 0.0,
        "rejected": dict(sorted(reasons.items())),
        "ece": expected_calibration_error(probabilities[found], labels[found]),
    }


def accuracy_coverage_curve(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Answering only the most confident images first: (coverage, accuracy) at each count answered."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probabilities.max(axis=1), kind="stable")
    right = (probabilities.argmax(axis=1) == np.asarray(labels))[order]
    count = np.arange(1, len(right) + 1)
    return count / max(len(right), 1), np.cumsum(right) / count
