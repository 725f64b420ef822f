"""Calibrated confidence and the not-a-digit rule (calibration.py, training.loss_with_not_digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digitrec.calibration import (
    accuracy_coverage_curve,
    energy,
    expected_calibration_error,
    fit_temperature,
    fold_temperature,
    not_digit_threshold,
    selective_summary,
)
from digitrec.errors import DigitrecError
from digitrec.models import create_model
from digitrec.recognition import softmax
from digitrec.training import loss_with_not_digits


def _calibrated_sample(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true chance of each label (labels drawn from it)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 10))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(10, p=row) for row in probabilities])
    return logits, labels


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    logits, labels = _calibrated_sample(20_000, 0)
    assert expected_calibration_error(softmax(logits), labels) < 0.01
    assert expected_calibration_error(softmax(logits * 4), labels) > 0.1


def test_fit_temperature_recovers_the_scale() -> None:
    logits, labels = _calibrated_sample(20_000, 1)
    assert fit_temperature(logits * 2.5, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.05)


def test_folding_the_temperature_divides_the_output() -> None:
    torch.manual_seed(0)
    model = create_model("cnn").eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        fold_temperature(model, 2.0)
        after = model(x)
    torch.testing.assert_close(after, before / 2.0, rtol=1e-4, atol=1e-5)


def test_folding_refuses_a_model_whose_output_is_not_its_last_linear_layer() -> None:
    model = create_model("lenet")  # ends in tanh
    with pytest.raises(DigitrecError, match="last linear layer"):
        fold_temperature(model, 2.0)


def test_energy_and_the_threshold() -> None:
    scores = np.array([[10.0] + [0.0] * 9, [0.0] * 10])
    np.testing.assert_allclose(energy(scores), [10 + np.log(1 + 9 * np.exp(-10)), np.log(10)])
    assert energy(np.array([[1000.0] * 10]))[0] == pytest.approx(1000 + np.log(10))  # no overflow
    # Keeping 99.7% of these 1,000 digits puts the threshold between the flat rows and the rest.
    digits = np.vstack([np.tile([[8.0] + [0.0] * 9], (997, 1)), np.zeros((3, 10))])
    assert np.log(10) <= not_digit_threshold(digits, keep=0.997) <= 8.0


def test_selective_summary_counts_coverage_and_reasons() -> None:
    p = np.array([[0.9, 0.1] + [0.0] * 8, [0.1, 0.9] + [0.0] * 8, [0.0] * 10, [0.6, 0.4] + [0.0] * 8])
    labels = np.array([0, 0, 3, 0])
    summary = selective_summary(p, labels, [None, None, "blank", "low_confidence"])
    assert summary["coverage"] == 0.5
    assert summary["answered_accuracy"] == 0.5
    assert summary["rejected"] == {"blank": 1, "low_confidence": 1}
    coverage, accuracy = accuracy_coverage_curve(p[[0, 1, 3]], labels[[0, 1, 3]])
    np.testing.assert_allclose(coverage, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(accuracy, [1.0, 0.5, 2 / 3])


def test_the_loss_is_cross_entropy_for_digits_and_uniform_for_non_digits() -> None:
    torch.manual_seed(0)
    scores = torch.randn(6, 10)
    digits = torch.tensor([3, 1, 4, 1, 5, 9])
    expected = F.cross_entropy(scores, digits, reduction="sum", label_smoothing=0.05)
    torch.testing.assert_close(loss_with_not_digits(scores, digits, 0.05, 0.5), expected)
    # A non-digit's loss is least when the scores are all equal (belief spread over the ten digits).
    none = torch.tensor([-1])
    flat = loss_with_not_digits(torch.zeros(1, 10), none, 0.05, 1.0)
    peaked = loss_with_not_digits(torch.tensor([[5.0] + [0.0] * 9]), none, 0.05, 1.0)
    assert flat.item() == pytest.approx(np.log(10))
    assert peaked.item() > flat.item()
