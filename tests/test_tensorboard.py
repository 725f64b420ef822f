"""digitrec train --tensorboard: real event files, read back with TensorBoard's own reader."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from digitrec.checkpoints import read_metrics
from digitrec.cli import main
from digitrec.config import recipe_config
from digitrec.errors import DigitrecError
from digitrec.tensorboard_log import SCALAR_TAGS, tile
from digitrec.training import train

pytest.importorskip("tensorboard")  # the optional extra; dev installs it, so CI runs these
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _events(run):
    # size_guidance 0 = keep every event (the default keeps a sample of images).
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def _decode(event):
    with Image.open(io.BytesIO(event.encoded_image_string)) as image:
        return np.asarray(image.convert("L"))


def test_train_tensorboard_writes_scalars_samples_and_mistakes(tmp_path, small_mnist_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--model", "mlp", "--data-dir", str(small_mnist_dir), "--out", str(run)]
    assert main([*args, "--epochs", "2", "--no-progress", "--tensorboard"]) == 0
    events = _events(run)
    tags = events.Tags()
    assert set(tags["scalars"]) == set(SCALAR_TAGS.values())
    rows = read_metrics(run)
    for key, tag in SCALAR_TAGS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert set(tags["images"]) == {"samples/train", "mistakes"}
    (samples,) = events.Images("samples/train")
    assert samples.step == 0 and samples.width > 400 and _decode(samples).max() == 255
    (mistakes,) = events.Images("mistakes")
    assert mistakes.step == 2 and mistakes.width > 800 and mistakes.height > 300

    # Resuming appends: the scalars go on at step 3, the mistakes are logged again at the end.
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress", "--tensorboard"]) == 0
    capsys.readouterr()
    events = _events(run)
    assert [s.step for s in events.Scalars("accuracy/validation")] == [1, 2, 3]
    assert [e.step for e in events.Images("mistakes")] == [2, 3]


def test_tile_puts_every_image_in_place(mnist):
    images = mnist.train_images[:10]
    grid = tile(images, columns=4, pad=2, scale=1)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2) and grid.dtype == np.uint8
    assert np.array_equal(grid[2:30, 2:30], images[0].numpy())
    assert np.array_equal(grid[32:60, 2 + 30 : 30 + 30], images[5].numpy())  # row 1, column 1
    assert np.array_equal(tile(images[:1], scale=2)[2:58, 2:58], np.kron(images[0].numpy(), np.ones((2, 2))))


def test_tensorboard_without_a_run_directory_is_refused(small_mnist):
    with pytest.raises(DigitrecError, match="needs save=True"):
        train(recipe_config("tutorial-mlp", epochs=1), dataset=small_mnist, save=False, tensorboard=True)


def test_missing_tensorboard_package_is_one_line_and_writes_nothing(tmp_path, small_mnist_dir):
    # A real interpreter in which the package cannot be imported (None in sys.modules blocks it).
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "from digitrec.cli import main\n"
        f"sys.exit(main(['train', '--data-dir', {str(small_mnist_dir)!r}, '--epochs', '1', "
        f"'--out', {str(tmp_path / 'run')!r}, '--tensorboard']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "digitrec train: error: --tensorboard needs the tensorboard package: "
        "pip install 'digitrec[tensorboard]'"
    ]
    assert not (tmp_path / "run").exists()
