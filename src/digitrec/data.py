"""Datasets and batches: MNIST bundled in the package, other IDX datasets from a
folder or a verified download, and an in-memory batch iterator.

The whole of MNIST is 47 MB of uint8 and lives in memory as tensors; a batch is
one ``index_select`` and one conversion to float, with no per-sample Python.

>>> ds = load_dataset("mnist")
>>> ds.train_images.shape, ds.train_images.dtype
(torch.Size([60000, 28, 28]), torch.uint8)
"""

from __future__ import annotations

import gzip
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .errors import DigitrecError
from .fileio import find_data_file, sha256_hex, write_bytes_atomic, write_cache_file
from .idx import parse_idx, read_idx_bytes

DATA_DIR_ENV = "DIGITREC_DATA_DIR"
CACHE_DIR_ENV = "DIGITREC_CACHE_DIR"

# The four standard IDX file names, by role.
SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Largest download we accept per file (Fashion-MNIST's biggest .gz is 26 MB).
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DatasetSpec:
    """A known IDX dataset: the SHA-256 of each *decompressed* file, and where to get it.

    Content checksums, not wrapper checksums: two gzip files with the same
    content but other headers verify the same.
    """

    name: str
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    credit: str
    bundled: bool = False


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            sha256={
                "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
            mirrors=(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ),
            credit="Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0",
            bundled=True,
        ),
        DatasetSpec(
            name="fashion-mnist",
            sha256={
                "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
            mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            credit="Han Xiao, Kashif Rasul, Roland Vollgraf (Zalando Research); MIT licence",
        ),
    )
}


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory.

    images: (N, 28, 28) uint8 in [0, 255]; labels: (N,) int64 in [0, 9].
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every tensor on ``device`` (keeps data resident on a GPU)."""
        return Dataset(
            self.name,
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            self.source,
        )


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "digitrec"


def _load_array(path: Path, expected_sha256: str | None, cache_dir: Path | None) -> np.ndarray:
    """Read one IDX file; verify its content hash; cache the verified array as .npy."""
    cached = cache_dir / f"{expected_sha256}.npy" if (cache_dir and expected_sha256) else None
    if cached is not None and cached.is_file():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    content = read_idx_bytes(path)
    if expected_sha256 is not None:
        actual = sha256_hex(content)
        if actual != expected_sha256:
            raise DigitrecError(
                f"{path}: checksum mismatch: content SHA-256 is {actual}, expected {expected_sha256}"
            )
    array = parse_idx(content, str(path))
    if cached is not None:
        write_cache_file(cached, lambda handle: np.save(handle, array, allow_pickle=False))
    return array


def _assemble(name: str, arrays: dict[str, np.ndarray], folder: Path, source: str) -> Dataset:
    for split in ("train", "test"):
        if f"{split}_images" not in arrays:  # test_only: an empty training split
            arrays[f"{split}_images"] = np.zeros((0, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = np.zeros((0,), dtype=np.int64)
            continue
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_file = folder / SPLIT_FILES[f"{split}_images"]
        label_file = folder / SPLIT_FILES[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise DigitrecError(
                f"{image_file}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1:
            raise DigitrecError(f"{label_file}: expected a 1-D label array, got shape {labels.shape}")
        if len(images) != len(labels):
            raise DigitrecError(
                f"{folder}: {split} image/label count mismatch: {len(images)} images, {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise DigitrecError(f"{label_file}: labels must lie in 0-9, found {labels.max()}")
    return Dataset(
        name=name,
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=source,
    )


def load_idx_folder(
    folder: str | os.PathLike[str],
    name: str | None = None,
    checksums: dict[str, str] | None = None,
    cache_dir: Path | None = None,
    test_only: bool = False,
) -> Dataset:
    """Load the four standard IDX files from ``folder`` (each raw or ``.gz``); with ``test_only``
    the two t10k files alone (the training split then empty), for evaluating."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DigitrecError(f"{folder}: data folder not found")
    arrays = {}
    for role, stem in SPLIT_FILES.items():
        if test_only and role.startswith("train"):
            continue
        expected = checksums.get(stem) if checksums else None
        arrays[role] = _load_array(find_data_file(folder, stem), expected, cache_dir)
    return _assemble(name or folder.name, arrays, folder, source=str(folder))


def bundled_mnist_dir() -> Path:
    """The folder inside the installed package that holds MNIST's four .gz files."""
    return Path(str(resources.files("digitrec") / "_data" / "mnist"))


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    test_only: bool = False,
) -> Dataset:
    """Load a dataset into memory (``test_only``: its test split alone, the training split empty).

    ``data_dir`` (or the ``DIGITREC_DATA_DIR`` environment variable) points at a
    folder with the four standard IDX files; otherwise ``name`` picks a known
    dataset: ``mnist`` ships with the package, others are downloaded once (with
    checksum verification) into the cache folder.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    chosen_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    spec = KNOWN_DATASETS.get(name)
    if chosen_dir is not None:
        # A user's folder: verify against the known checksums only when the name is known.
        return load_idx_folder(
            chosen_dir, name, spec.sha256 if spec else None, cache_dir=None, test_only=test_only
        )
    if spec is None:
        known = ", ".join(sorted(KNOWN_DATASETS))
        raise DigitrecError(f"unknown dataset {name!r} (known: {known}; or pass --data-dir)")
    if spec.bundled:
        folder = bundled_mnist_dir()
    else:
        folder = cache / "datasets" / spec.name
        if not all((folder / f"{stem}.gz").is_file() for stem in SPLIT_FILES.values()):
            if not download:
                raise DigitrecError(f"dataset {name!r} is not downloaded (folder {folder})")
            download_dataset(spec.name, folder)
    return load_idx_folder(folder, spec.name, spec.sha256, cache_dir=cache / "arrays", test_only=test_only)


def download_dataset(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    mirrors: tuple[str, ...] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download a known dataset's four files, trying each mirror in turn.

    Each file's decompressed content must match its SHA-256 before it is
    written (atomically) into ``dest``; a file already there and valid is kept.
    """
    spec = KNOWN_DATASETS.get(name)
    if spec is None:
        raise DigitrecError(f"unknown dataset {name!r} (known: {', '.join(sorted(KNOWN_DATASETS))})")
    folder = Path(dest) if dest is not None else default_cache_dir() / "datasets" / name
    urls = mirrors or spec.mirrors
    for stem, expected in spec.sha256.items():
        target = folder / f"{stem}.gz"
        if target.is_file():
            try:
                if sha256_hex(read_idx_bytes(target)) == expected:
                    continue
            except DigitrecError:
                pass  # broken leftover: fetch it again
        failures = []
        for base in urls:
            url = f"{base.rstrip('/')}/{stem}.gz"
            try:
                payload = _fetch(url, timeout)
                content = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
            except urllib.error.HTTPError as exc:
                failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
                continue
            except (urllib.error.URLError, OSError, EOFError, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
                continue
            actual = sha256_hex(content)
            if actual != expected:
                failures.append(f"{url}: checksum mismatch (content SHA-256 {actual[:16]}...)")
                continue
            write_bytes_atomic(
                target, gzip.compress(content, mtime=0) if payload[:2] != b"\x1f\x8b" else payload
            )
            break
        else:
            raise DigitrecError(f"could not download {stem} for {name}: " + "; ".join(failures))
    return folder


def _fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "digitrec"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
    return data


class BatchIterator:
    """Batches from uint8 tensors held in memory.

    Each batch is ``x``: (B, 1, 28, 28) float32 in [0, 1] and ``y``: (B,) int64,
    on the same device as the images. The order of epoch ``e`` is a
    permutation drawn from ``(seed, e)`` alone, so it is the same on every rank
    and after a resume. With ``world_size > 1`` each global batch of
    ``batch_size`` is split into ``world_size`` nearly equal contiguous parts
    and rank ``r`` gets part ``r``. The last partial batch is kept.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 100,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8:
            raise ValueError("images must be uint8")
        if batch_size < world_size:
            raise DigitrecError(f"batch size {batch_size} is smaller than the {world_size} processes")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The global sample order of ``epoch``: (N,) int64 on the images' device."""
        count = len(self.images)
        if not self.shuffle:
            return torch.arange(count, device=self.images.device)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(count, generator=generator).to(self.images.device)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(x, y, global_batch_size)`` for this rank's share of each batch."""
        order = self.order(epoch)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            global_size = len(index)
            if self.world_size > 1:
                index = index.tensor_split(self.world_size)[self.rank]
            x = self.images.index_select(0, index).unsqueeze(1).to(torch.float32).div_(255.0)
            yield x, self.labels.index_select(0, index), global_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.batches(self.epoch):
            yield x, y
