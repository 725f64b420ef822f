"""Train the ``default`` recipe on a machine that cannot build its mixture (a bare GPU box).

The ``default`` recipe's mixture draws digits from Debian's font packages and reads Fashion-MNIST
from ``dataset-fashion-mnist``; a rented GPU machine often has neither (and no network). Build the
mixture where they are installed, copy one file, and train there::

    python scripts/prebuilt_mixture.py build mixture.npz            # here: fonts, USPS, Fashion-MNIST
    python scripts/prebuilt_mixture.py train mixture.npz -- --recipe default --device cuda --seed 42

``train`` runs ``digitrec train`` with the arguments after ``--``; the mixture comes from the file
instead of being drawn (the file holds the mixture of ``--seed``'s build, 42 by default; other
training seeds change the initialization, shuffling and distortions only). Training needs
digitrec's source on ``PYTHONPATH`` (or installed) and PyTorch, NumPy, Pillow, SciPy, safetensors
and OpenCV: not the fonts. The model is the one ``digitrec train`` makes on a machine with
everything installed (docs/speed.md, "On a GPU": the recipe on one H200, 2026-12-04).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitrec import training
from digitrec.config import RECIPES
from digitrec.data import Dataset, load_dataset
from digitrec.errors import DigitrecError
from digitrec.fileio import write_cache_file
from digitrec.mixture import Mixture, build_mixture


def build(path: Path, seed: int) -> None:
    """The default recipe's mixture (with its calibration hold-out) written to ``path`` (.npz)."""
    recipe = RECIPES["default"]
    mixture = build_mixture(
        load_dataset("mnist"), recipe["mix"], seed, calibrate=bool(recipe["calibrate"]), log=print
    )
    assert mixture.holdout_images is not None and mixture.holdout_labels is not None
    arrays = {
        "train_images": mixture.dataset.train_images.numpy(),  # (N, 28, 28) uint8
        "train_labels": mixture.dataset.train_labels.numpy(),  # (N,) int64, -1 = not a digit
        "held_images": mixture.holdout_images.numpy(),
        "held_labels": mixture.holdout_labels.numpy(),
        "seed": np.asarray(seed),
    }
    write_cache_file(path, lambda handle: np.savez_compressed(handle, **arrays))  # type: ignore[arg-type]
    counts = len(arrays["train_labels"]), len(arrays["held_labels"])
    print(f"wrote {path}: {counts[0]} training images, {counts[1]} held out")


def train_from(path: Path, train_args: list[str]) -> int:
    """``digitrec train TRAIN_ARGS`` with the mixture read from ``path``."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}

    def prebuilt(base: Dataset, mix: dict[str, int], seed: int, **_: Any) -> Mixture:
        if int(arrays["seed"]) != seed:
            print(f"note: {path} was built with seed {int(arrays['seed'])}; training seed {seed}")
        dataset = Dataset(
            name=base.name,
            train_images=torch.from_numpy(arrays["train_images"]),
            train_labels=torch.from_numpy(arrays["train_labels"]),
            test_images=base.test_images,
            test_labels=base.test_labels,
            source=base.source,
        )
        return Mixture(
            dataset, torch.from_numpy(arrays["held_images"]), torch.from_numpy(arrays["held_labels"])
        )

    training.build_mixture = prebuilt  # the one name train() calls to make its mixture
    from digitrec.cli import main

    return main(["train", *train_args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build the default recipe's mixture into FILE")
    build_parser.add_argument("file", type=Path)
    build_parser.add_argument("--seed", type=int, default=42, help="the mixture's seed (default: 42)")
    train_parser = commands.add_parser("train", help="digitrec train ARGS with the mixture read from FILE")
    train_parser.add_argument("file", type=Path)
    train_parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: digitrec train's")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.file, args.seed)
            return 0
        if not args.file.is_file():
            raise DigitrecError(f"{args.file}: no such mixture file (make one with the build command)")
        rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
        return train_from(args.file, rest)
    except DigitrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
