import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from digitrec.cli import main
from digitrec.data import (
    KNOWN_DATASETS,
    SPLIT_FILES,
    BatchIterator,
    bundled_mnist_dir,
    download_dataset,
    load_dataset,
)
from digitrec.errors import DigitrecError
from digitrec.idx import read_idx_bytes, write_idx

from .conftest import write_subset


def test_bundled_mnist_is_complete_and_verified(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.dtype == torch.int64 and mnist.train_labels.shape == (60000,)
    assert sorted(mnist.train_labels.unique().tolist()) == list(range(10))
    # the bundled bytes match the published content checksums
    for stem, digest in KNOWN_DATASETS["mnist"].sha256.items():
        content = read_idx_bytes(bundled_mnist_dir() / f"{stem}.gz")
        assert hashlib.sha256(content).hexdigest() == digest


def test_cache_holds_verified_arrays_and_heals(tmp_path):
    first = load_dataset("mnist", cache_dir=tmp_path)
    cached = sorted((tmp_path / "arrays").glob("*.npy"))
    assert [p.stem for p in cached] == sorted(KNOWN_DATASETS["mnist"].sha256.values())
    cached[0].write_bytes(b"garbage")  # a damaged cache entry is rebuilt, not trusted
    second = load_dataset("mnist", cache_dir=tmp_path)
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert np.load(cached[0]).size > 0


def test_an_unwritable_cache_costs_time_not_the_run(tmp_path, monkeypatch):
    """The cache folder cannot be made (a read-only home; here a path through a file): the data
    loads as without a cache (before: "cannot write ...npy; nothing was written", exit 2, from
    `digitrec train` itself)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    dataset = load_dataset("mnist", cache_dir=blocker / "cache")
    assert len(dataset.train_labels) == 60000 and not (blocker / "cache").exists()
    monkeypatch.setenv("DIGITREC_CACHE_DIR", str(blocker / "cache"))
    assert main(["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize("gz", [True, False])
def test_data_dir_raw_or_gz(tmp_path, mnist, gz):
    folder = write_subset(tmp_path / "d", mnist, 300, 100, gz=gz)
    ds = load_dataset("custom", data_dir=folder)
    assert ds.train_images.shape == (300, 28, 28) and ds.test_labels.shape == (100,)
    assert torch.equal(ds.train_images, mnist.train_images[:300])


def test_data_dir_from_environment(tmp_path, mnist, monkeypatch):
    folder = write_subset(tmp_path / "env", mnist, 200, 50)
    monkeypatch.setenv("DIGITREC_DATA_DIR", str(folder))
    assert len(load_dataset("custom").train_images) == 200
    with pytest.raises(DigitrecError, match="checksum mismatch"):  # a known name is verified
        load_dataset("mnist")


def test_real_fashion_mnist_folder_if_installed():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        assert not os.environ.get("CI"), ".ci/run must install Debian's dataset-fashion-mnist"
        pytest.skip("Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
    ds = load_dataset("fashion-mnist", data_dir=folder)  # verified against the known checksums
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)


def test_count_mismatch(tmp_path, mnist):
    folder = write_subset(tmp_path / "d", mnist, 300, 100)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:99].numpy().astype(np.uint8))
    with pytest.raises(DigitrecError, match="test image/label count mismatch: 100 images, 99 labels"):
        load_dataset("custom", data_dir=folder)


def test_missing_file_and_folder(tmp_path, mnist):
    folder = write_subset(tmp_path / "d", mnist, 10, 10)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DigitrecError, match="missing train-labels-idx1-ubyte"):
        load_dataset("custom", data_dir=folder)
    with pytest.raises(DigitrecError, match="data folder not found"):
        load_dataset("custom", data_dir=tmp_path / "nowhere")
    # Evaluating needs the test split only; a missing test file is still an error.
    test_only = load_dataset("custom", data_dir=folder, test_only=True)
    assert test_only.train_images.shape == (0, 28, 28) and test_only.train_labels.shape == (0,)
    assert torch.equal(test_only.test_images, mnist.test_images[:10])
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DigitrecError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset("custom", data_dir=folder, test_only=True)


def test_checksum_mismatch_for_a_known_name(tmp_path, mnist):
    folder = tmp_path / "mnist-copy"
    shutil.copytree(bundled_mnist_dir(), folder)
    labels = mnist.test_labels.numpy().astype(np.uint8).copy()
    labels[0] = (labels[0] + 1) % 10  # one flipped label
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DigitrecError, match="checksum mismatch"):
        load_dataset("mnist", data_dir=folder)


def test_wrong_image_shape(tmp_path, mnist):
    folder = write_subset(tmp_path / "d", mnist, 10, 10)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DigitrecError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        load_dataset("custom", data_dir=folder)


def test_unknown_dataset():
    with pytest.raises(DigitrecError, match="unknown dataset 'nope'"):
        load_dataset("nope")


# --- downloads, against a real HTTP server on loopback ---


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for stem in SPLIT_FILES.values():
        source = bundled_mnist_dir() / f"{stem}.gz"
        shutil.copy(source, root / "good" / f"{stem}.gz")
        # same size class, wrong content: must be rejected by the content checksum
        (root / "bad" / f"{stem}.gz").write_bytes(gzip.compress(b"\x00" * 100))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_falls_back_to_next_mirror(tmp_path, http_root):
    dest = tmp_path / "dl"
    download_dataset(
        "mnist", dest, mirrors=(f"{http_root}/missing/", f"{http_root}/bad/", f"{http_root}/good/")
    )
    for stem, digest in KNOWN_DATASETS["mnist"].sha256.items():
        assert hashlib.sha256(read_idx_bytes(dest / f"{stem}.gz")).hexdigest() == digest
    assert not list(dest.glob(".*tmp"))  # no temp files left behind
    ds = load_dataset("mnist", data_dir=dest)
    assert len(ds.train_images) == 60000


def test_download_fails_cleanly_when_no_mirror_is_good(tmp_path, http_root):
    dest = tmp_path / "dl"
    with pytest.raises(DigitrecError) as info:
        download_dataset("mnist", dest, mirrors=(f"{http_root}/bad/", f"{http_root}/missing/"))
    message = str(info.value)
    assert "checksum mismatch" in message and "404" in message
    assert not dest.exists() or not any(dest.iterdir())  # nothing half-written


# --- the batch iterator ---


def test_batches_shapes_range_and_last_partial_batch(small_mnist):
    it = BatchIterator(small_mnist.train_images[:250], small_mnist.train_labels[:250], batch_size=100)
    batches = list(it)
    assert [len(y) for _, y in batches] == [100, 100, 50] and len(it) == 3
    x, y = batches[0]
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64
    # without shuffling, order is the dataset's
    assert torch.equal(x[:, 0], small_mnist.train_images[:100].float() / 255)


def test_shuffle_is_a_seeded_permutation_per_epoch(small_mnist):
    images, labels = small_mnist.train_images, small_mnist.train_labels
    it = BatchIterator(images, labels, batch_size=64, shuffle=True, seed=7)
    again = BatchIterator(images, labels, batch_size=64, shuffle=True, seed=7)
    other = BatchIterator(images, labels, batch_size=64, shuffle=True, seed=8)
    order0, order1 = it.order(0), it.order(1)
    assert torch.equal(order0, again.order(0))
    assert not torch.equal(order0, order1) and not torch.equal(order0, other.order(0))
    assert torch.equal(order0.sort().values, torch.arange(len(images)))
    # batches follow the order, labels stay with their images
    x, y, _ = next(it.batches(0))
    assert torch.equal(y, labels[order0[:64]])
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), images[order0[:64]])


def test_shards_partition_every_global_batch(small_mnist):
    images, labels = small_mnist.train_images[:1030], small_mnist.train_labels[:1030]
    world = 3
    shards = [
        list(BatchIterator(images, labels, 100, True, 1, rank, world).batches(2)) for rank in range(world)
    ]
    single = list(BatchIterator(images, labels, 100, True, 1).batches(2))
    assert all(len(s) == len(single) for s in shards)
    for step, (x, y, global_size) in enumerate(single):
        parts = [shards[rank][step] for rank in range(world)]
        assert all(p[2] == global_size for p in parts)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
