"""The training mixture: MNIST plus other writers, drawn digits and things that are not digits.

A recipe's ``mix`` names each ingredient and how many samples of it to add to MNIST's
training set (README "Training data")::

    usps-train        USPS's zip.train (real handwriting from U.S. mail), read from --usps-dir
    rescanned-digits  MNIST's (and usps-train's) training digits as other scanners deliver them:
                      coarse grids, stretched to fill the box, binarized (synthetic.rescan)
    drawn-digits      digits from fonts, Hershey strokes and hand-made styles (synthetic.py)
    not-digits        letters, scribbles, shapes, smileys, hatching, textures (label -1)
    fashion-mnist     Fashion-MNIST training images (label -1), from Debian's dataset-fashion-mnist

Every image passes through :func:`digitrec.images.normalize_digit`, as ``predict`` would
read it. Drawn samples are cached (``$DIGITREC_CACHE_DIR/mixture``), keyed by seed, count,
generator version and the installed font files, so the second run starts at once.

With ``calibrate``, a held-out slice (the last 5,000 of a fixed permutation of MNIST train
and 1,000 USPS train digits) is kept out of training for fitting the temperature.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from .data import Dataset, default_cache_dir, load_idx_folder
from .errors import DigitrecError
from .fileio import write_cache_file

if TYPE_CHECKING:
    from .handwriting import DigitSet

_T = TypeVar("_T")
INGREDIENTS = ("usps-train", "rescanned-digits", "drawn-digits", "not-digits", "fashion-mnist")
RESCANNED = "rescanned-digits"
NOT_A_DIGIT = -1  # the label of a training image that is no digit (outlier exposure)
# Part of every cache key, with a digest of the code that draws and normalizes (the cache holds
# normalized 28x28 images), so an edit to either module never reads stale images. A version
# number alone did not suffice: an experiment's cache entries, drawn by generator code that was
# later reverted, carried the same number (3) as the next normalization change. 4: the
# normalization thins a narrow glyph in a felt-tip pen (the bundled model was trained on 2). 5: the
# non-digits include shapes and hatching (not_digit_kind; mixture.py is not in the digest). 6: no
# thinning of felt-tip glyphs. 7: four more hand-made shapes (narrow 1s; a 4, a 7 and a 9).
GENERATOR_VERSION = 7
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
HOLDOUT_MNIST = 5_000
HOLDOUT_USPS = 1_000
_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
USPS_URL = "https://hastie.su.domains/ElemStatLearn/datasets/zip.train.gz"


@dataclass(frozen=True)
class Mixture:
    """The training set with the mixture added, and the held-out digits for calibration (or None)."""

    dataset: Dataset
    holdout_images: torch.Tensor | None  # (N, 28, 28) uint8
    holdout_labels: torch.Tensor | None  # (N,) int64


def _fixed_permutation(count: int) -> np.ndarray:
    return np.random.default_rng(20261201).permutation(count)


def _normalize_all(images: Sequence[object]) -> np.ndarray:
    """Each image through normalize_digit; an image with no ink becomes all zeros."""
    from .images import normalize_digit

    out = np.zeros((len(images), 28, 28), np.uint8)
    for index, image in enumerate(images):
        digit = normalize_digit(image)
        if digit is not None:
            out[index] = digit
    return out


def not_digit_kind(index: int) -> str:
    """The kind of non-digit sample ``index`` is: letters, the largest and hardest kind, every other
    sample; the other kinds in turn between them, each an equal share of the rest."""
    from . import synthetic

    others = [kind for kind in synthetic.NOT_DIGIT_KINDS if kind != "letter"]
    # (Taking NOT_DIGIT_KINDS[index % 6] and making every even index a letter, as version 4 did,
    # never drew a shape or hatching: both sat at even positions.)
    return "letter" if index % 2 == 0 else others[(index // 2) % len(others)]


def _draw_chunk(kind: str, seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples start..stop-1 of ``kind`` ("drawn-digits" or "not-digits"), normalized: images, labels."""
    from . import synthetic

    images, labels = [], []
    for index in range(start, stop):
        rng = synthetic.sample_rng(seed, kind, index)
        if kind == "drawn-digits":
            label = index % 10
            images.append(synthetic.draw_digit(label, rng))
        else:
            label = NOT_A_DIGIT
            images.append(synthetic.draw_not_digit(not_digit_kind(index), rng))
        labels.append(label)
    return _normalize_all(images), np.asarray(labels, np.int64)


def _usps_chunk(inks: np.ndarray) -> np.ndarray:
    from .handwriting import render_digit

    return _normalize_all([render_digit(ink, scale=4) for ink in inks])


def _one_thread() -> None:
    """A draw worker's initializer (images, and OpenCV with it, imported in the worker only)."""
    from .images import one_thread_per_process

    one_thread_per_process()


def _parallel(jobs: Sequence[tuple[Any, ...]], function: Callable[..., _T]) -> list[_T]:
    """``function(*job)`` for each job, in order, on every core (one process per core)."""
    workers = max(1, min(len(os.sched_getaffinity(0)), len(jobs)))
    if workers == 1:
        return [function(*job) for job in jobs]
    # forkserver: the workers import only numpy, PIL and scipy, never this process's torch threads.
    # One BLAS thread each: the background fit's small least-squares problems run 5-10x slower when
    # every worker's BLAS spreads over all cores (the server inherits the environment it starts with).
    saved = {name: os.environ.get(name) for name in _BLAS_THREADS}
    os.environ.update(dict.fromkeys(_BLAS_THREADS, "1"))
    try:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("forkserver"), initializer=_one_thread
        ) as pool:
            return list(pool.map(function, *zip(*jobs, strict=True)))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _code_digest() -> str:
    """SHA-256 (hex, 12 digits) of the source of the modules whose output the cache holds:
    synthetic.py (drawing) and images.py (normalizing)."""
    from . import images, synthetic

    digest = hashlib.sha256()
    for module in (synthetic, images):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:12]


def _cache_key(kind: str, seed: int, count: int) -> str:
    from . import synthetic

    fonts = "\n".join(p.name for p in synthetic.font_files())
    hershey = ",".join(sorted(synthetic.hershey_glyphs()))
    text = f"{kind}|{seed}|{count}|{GENERATOR_VERSION}|{_code_digest()}|{fonts}|{hershey}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached_samples(
    path: Path | None, make: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) read from the cache file ``path``, or made now by ``make``, the samples
    left blank by normalization dropped, and written to ``path`` (when given)."""
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                return saved["images"], saved["labels"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is made again
    images, labels = make()
    # A sample that normalization finds no ink in (a glyph or a digit lost at 8x8, say) never
    # reaches a model.
    inked = images.reshape(len(images), -1).max(axis=1) > 0
    images, labels = images[inked], labels[inked]
    if path is not None:
        write_cache_file(path, lambda handle: np.savez_compressed(handle, images=images, labels=labels))
    return images, labels


def drawn(kind: str, count: int, seed: int, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalized samples of ``kind``, from the cache or drawn now (on every core)."""
    from . import synthetic

    synthetic.check_sources()
    path = cache_dir / "mixture" / f"{kind}-{_cache_key(kind, seed, count)}.npz" if cache_dir else None

    def draw() -> tuple[np.ndarray, np.ndarray]:
        step = 500
        jobs = [(kind, seed, a, min(a + step, count)) for a in range(0, count, step)]
        parts = _parallel(jobs, _draw_chunk)
        images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 28, 28), np.uint8)
        labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        return images, labels

    return _cached_samples(path, draw)


def _usps_split(usps_dir: str | None, count: int, calibrate: bool) -> tuple[DigitSet, np.ndarray, np.ndarray]:
    """USPS's training digits (16x16 ink maps) and the indexes of the ``count`` trained on and of
    those held out for calibration (a fixed permutation picks both)."""
    from .handwriting import default_shared_data, load_usps

    folder = Path(usps_dir) if usps_dir else default_shared_data() / "usps"
    if not folder.is_dir():
        raise DigitrecError(
            f"{folder}: USPS folder not found; the mixture's usps-train reads zip.train.gz from --usps-dir "
            f"(download: {USPS_URL})"
        )
    digits = load_usps(folder, split="train")  # checks the file's SHA-256
    order = _fixed_permutation(len(digits.labels))
    # 1,000 held out beside the default recipe's 6,291; a small mix holds out a sixth of its count.
    held_count = min(HOLDOUT_USPS, count // 6) if calibrate else 0
    held = order[len(order) - held_count :] if held_count else order[:0]
    chosen = order[: min(count, len(order) - len(held))]
    return digits, chosen, held


def _usps(split: tuple[DigitSet, np.ndarray, np.ndarray], cache_dir: Path | None) -> tuple[np.ndarray, ...]:
    """USPS train digits (a _usps_split) normalized as predict reads them: (train images, labels,
    held-out images, labels). The whole set is cached (by content) once a build has normalized
    all of it."""
    digits, chosen, held = split
    needed = np.concatenate([chosen, held])
    name = f"usps-train-v{GENERATOR_VERSION}-{_code_digest()}.npz"
    path = cache_dir / "mixture" / name if cache_dir else None
    images: np.ndarray | None = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                if np.array_equal(saved["labels"], digits.labels):
                    images = saved["images"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is normalized again
    if images is None:
        images = np.zeros((len(digits.labels), 28, 28), np.uint8)
        step = 500
        jobs = [(digits.images[needed[a : a + step]],) for a in range(0, len(needed), step)]
        if jobs:
            images[needed] = np.concatenate(_parallel(jobs, _usps_chunk))
        if path is not None and len(needed) == len(digits.labels):
            write_cache_file(
                path, lambda handle: np.savez_compressed(handle, images=images, labels=digits.labels)
            )
    return images[chosen], digits.labels[chosen], images[held], digits.labels[held]


def _rescan_chunk(inks: list[np.ndarray], seed: int, start: int) -> np.ndarray:
    from . import synthetic

    rngs = [synthetic.sample_rng(seed, RESCANNED, start + k) for k in range(len(inks))]
    return _normalize_all([synthetic.rescan(ink, rng) for ink, rng in zip(inks, rngs, strict=True)])


def rescanned(
    inks: Sequence[np.ndarray], labels: np.ndarray, count: int, seed: int, cache_dir: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` of the real digits ``inks`` (ink maps, 255 = ink, any size) picked at random and
    each presented as another scanner would (synthetic.rescan), normalized: images, labels. Cached,
    keyed by the picked digits' content as well as the seed and code."""
    pick = np.sort(
        np.random.default_rng([seed, zlib.crc32(RESCANNED.encode())]).choice(
            len(inks), size=min(count, len(inks)), replace=False
        )
    )
    picked = [np.ascontiguousarray(inks[i], np.uint8) for i in pick]
    content = hashlib.sha256()
    for ink in picked:
        content.update(f"{ink.shape}".encode())
        content.update(ink.tobytes())
    key = _cache_key(f"{RESCANNED}|{content.hexdigest()}", seed, len(picked))
    path = cache_dir / "mixture" / f"{RESCANNED}-{key}.npz" if cache_dir else None

    def draw() -> tuple[np.ndarray, np.ndarray]:
        step = 500
        jobs = [(picked[a : a + step], seed, a) for a in range(0, len(picked), step)]
        parts = _parallel(jobs, _rescan_chunk)
        images = np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.uint8)
        return images, np.asarray(labels, np.int64)[pick]

    return _cached_samples(path, draw)


def _fashion(count: int) -> np.ndarray:
    for folder in FASHION_DIRS:
        if folder.is_dir():
            break
    else:
        raise DigitrecError(
            f"the mixture's fashion-mnist needs Debian's dataset-fashion-mnist ({FASHION_DIRS[0]} not found):"
            " "
            "apt-get install dataset-fashion-mnist"
        )
    train = load_idx_folder(folder, "fashion-mnist").train_images.numpy()
    chosen = train[_fixed_permutation(len(train))[:count]]
    step = 500
    jobs = [(chosen[a : a + step],) for a in range(0, len(chosen), step)]
    parts = _parallel(jobs, _fashion_chunk)
    return np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.uint8)


def _fashion_chunk(images: np.ndarray) -> np.ndarray:
    """Fashion-MNIST's 28x28 pictures (light on dark) read as predict would read them."""
    from PIL import Image

    return _normalize_all([Image.fromarray(image, mode="L") for image in images])


def build_mixture(
    base: Dataset,
    mix: dict[str, int],
    seed: int,
    *,
    usps_dir: str | None = None,
    calibrate: bool = False,
    cache_dir: Path | None = None,
    log: object = None,
) -> Mixture:
    """MNIST's training set (``base``) plus each ingredient of ``mix``; the test set is unchanged."""
    unknown = sorted(set(mix) - set(INGREDIENTS))
    if unknown:
        raise DigitrecError(
            f"unknown mixture ingredients: {', '.join(unknown)} (known: {', '.join(INGREDIENTS)})"
        )
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    say = log if callable(log) else (lambda _line: None)
    train_images = base.train_images.numpy()
    train_labels = base.train_labels.numpy()
    held_images: list[np.ndarray] = []
    held_labels: list[np.ndarray] = []
    if calibrate:
        order = _fixed_permutation(len(train_images))
        held_count = min(HOLDOUT_MNIST, len(order) // 12)  # 5,000 of MNIST's 60,000
        keep, held = order[: len(order) - held_count], order[len(order) - held_count :]
        held_images.append(train_images[held])
        held_labels.append(train_labels[held])
        train_images, train_labels = train_images[np.sort(keep)], train_labels[np.sort(keep)]
    parts_images, parts_labels = [train_images], [train_labels]
    # USPS's split, read once: usps-train normalizes it, rescanned-digits rescans its chosen digits.
    usps_count = int(mix.get("usps-train", 0))
    usps = _usps_split(usps_dir, usps_count, calibrate) if usps_count > 0 else None
    for name in INGREDIENTS:
        count = int(mix.get(name, 0))
        if count <= 0:
            continue
        say(f"mixture: adding {count} {name}")
        if name == "usps-train":
            assert usps is not None  # count > 0
            images, labels, usps_held, usps_held_labels = _usps(usps, cache)
            parts_images.append(images)
            parts_labels.append(labels.astype(np.int64))
            if calibrate:
                held_images.append(usps_held)
                held_labels.append(usps_held_labels.astype(np.int64))
        elif name == RESCANNED:
            # MNIST's training digits (those trained on) and, with usps-train in the mix, USPS's.
            inks: list[np.ndarray] = list(train_images)
            pool_labels = [train_labels]
            if usps is not None:
                usps_digits, usps_chosen, _ = usps
                inks.extend(usps_digits.images[usps_chosen])
                pool_labels.append(usps_digits.labels[usps_chosen])
            images, labels = rescanned(inks, np.concatenate(pool_labels), count, seed, cache)
            parts_images.append(images)
            parts_labels.append(labels)
        elif name == "fashion-mnist":
            parts_images.append(_fashion(count))
            parts_labels.append(np.full(count, NOT_A_DIGIT, np.int64))
        else:
            images, labels = drawn(name, count, seed, cache)
            parts_images.append(images)
            parts_labels.append(labels)
    dataset = Dataset(
        name=base.name,
        train_images=torch.from_numpy(np.ascontiguousarray(np.concatenate(parts_images))),
        train_labels=torch.from_numpy(np.concatenate(parts_labels).astype(np.int64)),
        test_images=base.test_images,
        test_labels=base.test_labels,
        source=base.source,
    )
    if not held_images:
        return Mixture(dataset, None, None)
    return Mixture(
        dataset,
        torch.from_numpy(np.concatenate(held_images)),
        torch.from_numpy(np.concatenate(held_labels).astype(np.int64)),
    )


def held_out_digits(
    base: Dataset, mix: dict[str, int], *, usps_dir: str | None = None, cache_dir: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits a calibrated build of ``mix`` holds out of training, (N, 28, 28) uint8 and (N,):
    the same for every seed (a fixed permutation picks them), which lets an ensemble of members
    trained from different seeds be calibrated on digits none of them saw."""
    holding_out = {name: count for name, count in mix.items() if name == "usps-train"}
    mixture = build_mixture(base, holding_out, seed=0, usps_dir=usps_dir, calibrate=True, cache_dir=cache_dir)
    assert mixture.holdout_images is not None and mixture.holdout_labels is not None
    return mixture.holdout_images, mixture.holdout_labels
