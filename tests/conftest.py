"""Shared fixtures: real MNIST (bundled), a small real-MNIST IDX folder for fast runs, NumPy digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitrec.data import SPLIT_FILES, Dataset, load_dataset
from digitrec.idx import write_idx

from .recognition_support import ink_on_paper


def cli_exit_code(args: list[str]) -> int:
    """digitrec's exit code for ``args``, whether main() returns it or argparse raises SystemExit."""
    from digitrec.cli import main

    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests never touch the user's cache or pick up a DIGITREC_DATA_DIR from the environment.
    monkeypatch.setenv("DIGITREC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("DIGITREC_DATA_DIR", raising=False)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # Some tests pin torch to one thread to match torchrun workers; later tests must not inherit that
    # (bit-identity checks compare against subprocesses that use the default thread count).
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_dataset("mnist", cache_dir=None)


@pytest.fixture(scope="session")
def digits(mnist: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test digits 0..39 (uint8 (40, 28, 28)) and their labels, as NumPy arrays."""
    return mnist.test_images[:40].numpy(), mnist.test_labels[:40].numpy()


@pytest.fixture(scope="session")
def seven(mnist: Dataset) -> np.ndarray:
    """MNIST test digit 0 (a 7) as black ink on white, 200 px tall on 320x320."""
    return ink_on_paper(mnist.test_images[0].numpy())


def write_subset(folder: Path, ds: Dataset, n_train: int, n_test: int, gz: bool = True) -> Path:
    """Write the first n_train / n_test real MNIST images as an IDX folder."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train_images": ds.train_images[:n_train],
        "train_labels": ds.train_labels[:n_train],
        "test_images": ds.test_images[:n_test],
        "test_labels": ds.test_labels[:n_test],
    }
    for role, tensor in arrays.items():
        array = tensor.numpy().astype("uint8")
        write_idx(folder / f"{SPLIT_FILES[role]}{suffix}", array)
    return folder


@pytest.fixture(scope="session")
def small_mnist_dir(tmp_path_factory: pytest.TempPathFactory, mnist: Dataset) -> Path:
    """2,000 training and 500 test images of real MNIST, gzipped IDX."""
    return write_subset(tmp_path_factory.mktemp("small-mnist"), mnist, 2000, 500)


@pytest.fixture(scope="session")
def small_mnist(small_mnist_dir: Path) -> Dataset:
    return load_dataset("small", data_dir=small_mnist_dir)
