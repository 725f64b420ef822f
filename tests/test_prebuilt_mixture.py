"""scripts/prebuilt_mixture.py: the default recipe trained from a mixture file, as on a machine
without the fonts (a bare GPU box)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from digitrec.config import RECIPES
from digitrec.data import Dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prebuilt_mixture.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def _mixture_file(path: Path, small_mnist: Dataset) -> tuple[int, int]:
    """A small mixture in the file's layout: MNIST digits, blotches labelled not-a-digit (-1), and a
    held-out slice; returns (training images, held-out images)."""
    rng = np.random.default_rng(0)
    digits = small_mnist.train_images.numpy()
    labels = small_mnist.train_labels.numpy().astype(np.int64)
    blotches = (rng.random((200, 28, 28)) > 0.8).astype(np.uint8) * 255  # (200, 28, 28) uint8 noise
    train_images = np.concatenate([digits[:1500], blotches])
    train_labels = np.concatenate([labels[:1500], np.full(200, -1, np.int64)])
    np.savez_compressed(
        path,
        train_images=train_images,
        train_labels=train_labels,
        held_images=digits[1500:],
        held_labels=labels[1500:],
        seed=np.asarray(42),
    )
    return len(train_labels), len(digits) - 1500


def test_the_default_recipe_trains_from_a_mixture_file(tmp_path, small_mnist, small_mnist_dir):
    trained, held = _mixture_file(tmp_path / "mix.npz", small_mnist)
    run = tmp_path / "run"
    proc = _run(
        "train", str(tmp_path / "mix.npz"), "--", "--recipe", "default", "--epochs", "1",
        "--device", "cpu", "--data-dir", str(small_mnist_dir), "--out", str(run), "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # The file's images are what it trained on (MNIST's own 2,000 are not added again), and its
    # held-out digits are what it calibrated on.
    assert f"{trained} train / 500 test images" in proc.stdout
    assert f"calibrated on {held} held-out digits" in proc.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["mix"] == RECIPES["default"]["mix"]
    assert config["train"]["not_digit_head"] == RECIPES["default"]["not_digit_head"]
    assert "temperature" in config["calibration"]
    assert (run / "model.safetensors").stat().st_size > 100_000


def test_a_missing_mixture_file_is_one_line_and_exit_2(tmp_path):
    proc = _run("train", str(tmp_path / "nowhere.npz"), "--", "--recipe", "default")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere.npz'}: no such mixture file (make one with the build command)"
    ]
