"""Robustness suite (issue 6): MNIST test digits rendered the way people present digits.

The targets are for the bundled default model: >= 97% agreement with the true label over
all single-digit conditions, and >= 95% of 4-digit numbers read exactly. The per-condition
table is printed (``pytest -s``); ``python -m benchmarks.rendered_handwriting`` prints it with more digits.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks import rendered_handwriting as handwriting

from digitrec.recognition import Recognizer

PER_CONDITION = 100
NUMBERS = 100


def test_renderings_are_deterministic(mnist):
    images, labels = mnist.test_images[:3].numpy(), mnist.test_labels[:3].numpy()
    for name in handwriting.CONDITIONS:
        first = handwriting.render_condition(name, images, labels, seed=7)
        again = handwriting.render_condition(name, images, labels, seed=7)
        for (a, label_a), (b, label_b) in zip(first, again, strict=True):
            assert label_a == label_b
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    numbers = handwriting.render_numbers(mnist.test_images.numpy(), mnist.test_labels.numpy(), 2, seed=7)
    again = handwriting.render_numbers(mnist.test_images.numpy(), mnist.test_labels.numpy(), 2, seed=7)
    assert [t for _, t in numbers] == [t for _, t in again] and all(len(t) == 4 for _, t in numbers)


@pytest.mark.slow
def test_default_model_meets_the_robustness_targets():
    results = handwriting.evaluate(Recognizer.default(), PER_CONDITION, NUMBERS, seed=0)
    print()
    print(handwriting.format_table(results))
    assert handwriting.single_digit_rate(results) >= 0.97
    correct, total, _ = results[handwriting.NUMBERS]
    assert correct / total >= 0.95
