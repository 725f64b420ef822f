import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from digitrec.checkpoints import load_checkpoint, load_model, read_metrics, write_config
from digitrec.cli import main
from digitrec.config import recipe_config
from digitrec.errors import DigitrecError
from digitrec.evaluation import evaluate, score
from digitrec.models import create_model
from digitrec.training import make_optimizer, train

METRIC_KEYS = {"epoch", "train_loss", "train_accuracy", "val_accuracy", "epoch_seconds"}


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def test_run_directory_and_metrics(tmp_path, small_mnist):
    config = recipe_config("tutorial-lenet", epochs=2)
    lines = []
    result = train(config, out_dir=tmp_path / "run", dataset=small_mnist, log=lines.append)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "checkpoint.safetensors",
    }
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r.keys() >= METRIC_KEYS for r in rows)
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_accuracy"] > 0.5  # far above chance after 40 steps on real digits
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"] == result.config.to_dict() and saved["torch_version"] == torch.__version__
    # the dataset given in memory is recorded, so evaluate and report later score the same test set
    assert (saved["train"]["dataset"], saved["train"]["data_dir"]) == ("small", small_mnist.source)
    assert any("validation acc" in line for line in lines)
    assert _weights_equal(result.model, load_model(run)[0])


def test_a_diverged_run_stops_in_one_line_and_saves_no_nan_model(
    tmp_path, small_mnist, small_mnist_dir, capsys
):
    """A learning rate far too high turns the loss (and the weights) into NaN: training stops at
    the end of that epoch, before the NaN weights are checkpointed or saved as the run's model
    (before: "loss nan" printed, then the NaN model saved and "saved <run>")."""
    config = recipe_config("tutorial-mlp", epochs=2, lr=1e30)
    with pytest.raises(
        DigitrecError, match=r"training diverged: the loss is nan in epoch 1 \(learning rate 1e\+30\)"
    ):
        train(config, out_dir=tmp_path / "api", dataset=small_mnist, log=None)
    run = tmp_path / "cli"
    args = ["train", "--data-dir", str(small_mnist_dir), "--lr", "1e30", "--epochs", "2", "--no-progress"]
    assert main([*args, "--out", str(run)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().startswith("digitrec train: error: training diverged")
    assert len(captured.err.strip().splitlines()) == 1 and "saved" not in captured.out
    for folder in (tmp_path / "api", run):
        assert (
            not (folder / "model.safetensors").exists() and not (folder / "checkpoint.safetensors").exists()
        )


def test_evaluate_matches_the_last_logged_val_accuracy(tmp_path, small_mnist):
    train(recipe_config("tutorial-mlp", epochs=2), out_dir=tmp_path / "r", dataset=small_mnist, log=None)
    model, _ = load_model(tmp_path / "r")
    report = evaluate(model, small_mnist.test_images, small_mnist.test_labels)
    assert report.accuracy == read_metrics(tmp_path / "r")[-1]["val_accuracy"]


def test_same_seed_gives_identical_metrics_and_weights(small_mnist):
    config = recipe_config("tutorial-mlp", epochs=2, seed=5)
    a = train(config, dataset=small_mnist, save=False, log=None)
    b = train(config, dataset=small_mnist, save=False, log=None)
    c = train(recipe_config("tutorial-mlp", epochs=2, seed=6), dataset=small_mnist, save=False, log=None)
    assert _without_time(a.metrics) == _without_time(b.metrics)
    assert _weights_equal(a.model, b.model)
    assert not _weights_equal(a.model, c.model)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_resume_is_bit_identical(tmp_path, small_mnist, momentum):
    full = train(
        recipe_config("tutorial-lenet", epochs=3, momentum=momentum),
        dataset=small_mnist,
        out_dir=tmp_path / "full",
        log=None,
    )
    train(
        recipe_config("tutorial-lenet", epochs=1, momentum=momentum),
        dataset=small_mnist,
        out_dir=tmp_path / "part",
        log=None,
    )
    resumed = train(
        recipe_config("tutorial-lenet", epochs=3, momentum=momentum),
        dataset=small_mnist,
        out_dir=tmp_path / "part",
        resume=True,
        log=None,
    )
    assert _weights_equal(full.model, resumed.model)
    assert _without_time(read_metrics(tmp_path / "full")) == _without_time(read_metrics(tmp_path / "part"))


def test_refuses_to_overwrite_a_run_and_checks_resume_changes(tmp_path, small_mnist):
    train(recipe_config("tutorial-mlp", epochs=1), dataset=small_mnist, out_dir=tmp_path / "r", log=None)
    with pytest.raises(DigitrecError, match="already holds a run"):
        train(recipe_config("tutorial-mlp", epochs=1), dataset=small_mnist, out_dir=tmp_path / "r", log=None)
    with pytest.raises(DigitrecError, match="may change only --epochs"):
        train(
            recipe_config("tutorial-mlp", epochs=2, lr=0.5),
            dataset=small_mnist,
            out_dir=tmp_path / "r",
            resume=True,
            log=None,
        )


def test_resume_before_the_first_checkpoint_starts_from_scratch(tmp_path, small_mnist_dir, capsys):
    """A run killed in its first epoch leaves its config.json and no checkpoint: --resume trains it
    from scratch, says so, and ends with the weights of an uninterrupted run."""
    run = tmp_path / "killed-early"
    config = recipe_config("tutorial-mlp", epochs=2, data_dir=str(small_mnist_dir))
    run.mkdir()
    write_config(run, config, {})  # all that a run has written before its first epoch ends
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"{run}: no epoch had completed; starting from scratch" in capsys.readouterr().out
    uninterrupted = train(config, save=False, log=None)
    assert _weights_equal(uninterrupted.model, load_model(run)[0])
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]


def test_resuming_a_model_without_its_checkpoint_is_one_line_and_keeps_the_model(tmp_path, capsys):
    """The bundled model ships without checkpoint.safetensors: --resume on (a copy of) it said "no
    epoch had completed; starting from scratch", then "already holds a run; pass --resume"."""
    import shutil

    from digitrec.runs import default_model_dir

    run = tmp_path / "bundled-copy"
    shutil.copytree(default_model_dir(), run)
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "8", "--no-progress"]) == 2
    captured = capsys.readouterr()
    message = f"{run}: holds a trained model but no checkpoint.safetensors to resume from"
    message += "; train a new run with --out"
    assert (
        captured.err.strip() == f"digitrec train: error: {message}"
        and "starting from scratch" not in captured.out
    )
    assert (run / "model.safetensors").read_bytes() == before


def test_kill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path, small_mnist_dir, small_mnist):
    """SIGKILL a real training process at several moments; each time the checkpoint loads and
    resuming finishes with exactly the weights of an uninterrupted run."""
    run = tmp_path / "killed"
    epochs = 30
    command = [
        sys.executable,
        "-m",
        "digitrec",
        "train",
        "--model",
        "mlp",
        "--data-dir",
        str(small_mnist_dir),
        "--epochs",
        str(epochs),
        "--out",
        str(run),
        "--no-progress",
    ]
    # The same thread count as the uninterrupted run below: bit-identity depends on it.
    same_threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for attempt, delay in enumerate((0.05, 0.17, 0.31)):
        args = (
            command
            if attempt == 0
            else [*command[:4], "--resume", str(run), "--epochs", str(epochs), "--no-progress"]
        )
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=same_threads)
        deadline = time.monotonic() + 60
        while (
            not (run / "checkpoint.safetensors").exists()
            and time.monotonic() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.01)
        time.sleep(delay)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""  # still training
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        model = create_model("mlp")
        done = load_checkpoint(run, model, make_optimizer(recipe_config("tutorial-mlp"), model))
        assert 1 <= done <= epochs
        load_model(run)
    finished = subprocess.run(
        [*command[:4], "--resume", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        env=same_threads,
    )
    assert finished.returncode == 0, finished.stderr
    uninterrupted = train(
        recipe_config("tutorial-mlp", epochs=epochs, data_dir=str(small_mnist_dir)), save=False, log=None
    )
    assert _weights_equal(load_model(run)[0], uninterrupted.model)
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, epochs + 1))
    assert not list(run.glob(".*.tmp"))  # temp files of killed writes are swept on resume


def test_bf16_autocast_trains_and_is_recorded(tmp_path, small_mnist_dir):
    run = tmp_path / "bf16"
    args = ["train", "--recipe", "fast", "--data-dir", str(small_mnist_dir), "--epochs", "2",
            "--precision", "bf16", "--out", str(run), "--no-progress"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "digitrec", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "bf16 autocast" in proc.stdout
    model, config = load_model(run)
    assert config.precision == "bf16"
    assert read_metrics(run)[-1]["val_accuracy"] > 0.8  # learns (chance is 0.1)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    fp32 = train(recipe_config("fast", epochs=2, data_dir=str(small_mnist_dir)), save=False, log=None)
    assert fp32.config.precision == "fp32"
    assert not torch.equal(fp32.model[0].weight, model[0].weight)  # autocast really changed the arithmetic


def test_unknown_precision_is_refused():
    with pytest.raises(DigitrecError, match="unknown precision 'fp8'"):
        recipe_config("fast", precision="fp8")


def test_ema_update_with_a_tensor_weight_equals_the_number():
    """The CUDA-graphed step passes the EMA weight as a device tensor; the arithmetic is the same."""
    from digitrec.training import update_ema

    torch.manual_seed(0)
    model, by_number, by_tensor = create_model("fastcnn"), create_model("fastcnn"), create_model("fastcnn")
    by_tensor.load_state_dict(by_number.state_dict())
    update_ema(by_number, model, 0.01)
    update_ema(by_tensor, model, torch.tensor(0.01))
    for a, b in zip(by_number.state_dict().values(), by_tensor.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(by_number[0].weight, model[0].weight)  # it moved towards the model, not onto it


def test_set_learning_rate_fills_a_tensor_in_place_and_replaces_a_number():
    from digitrec.training import set_learning_rate

    held = torch.tensor(1.0)
    graphed = torch.optim.AdamW(create_model("mlp").parameters(), lr=held, foreach=False)
    plain = torch.optim.SGD(create_model("mlp").parameters(), lr=1.0)
    set_learning_rate(graphed, 0.25)
    set_learning_rate(plain, 0.25)
    assert graphed.param_groups[0]["lr"] is held and held.item() == 0.25
    assert plain.param_groups[0]["lr"] == 0.25


def test_cuda_graphs_option_is_recorded_and_harmless_on_the_cpu(tmp_path, small_mnist_dir):
    run = tmp_path / "eager"
    args = ["train", "--recipe", "tutorial-mlp", "--data-dir", str(small_mnist_dir), "--epochs", "1",
            "--no-cuda-graphs", "--device", "cpu", "--out", str(run), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    _, config = load_model(run)
    assert config.cuda_graphs is False
    assert recipe_config("tutorial-mlp").cuda_graphs is True  # on by default; only CUDA uses it


@pytest.fixture
def small_disk(tmp_path):
    """A real 1.2 MB filesystem (tmpfs): room for a run's first checkpoint, not for its second."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_the_run_resumable(small_disk, tmp_path, small_mnist_dir):
    from safetensors import safe_open

    run = small_disk / "run"
    command = [sys.executable, "-m", "digitrec", "train", "--model", "mlp", "--data-dir",
               str(small_mnist_dir), "--epochs", "4", "--out", str(run), "--no-progress"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"digitrec train: error: {run}/checkpoint.safetensors: no space left on the device; nothing was "
        f"written; once fixed: digitrec train --resume {run}"
    ]
    with safe_open(run / "checkpoint.safetensors", "pt") as checkpoint:
        saved_epoch = int(checkpoint.metadata()["epoch"])
    assert saved_epoch == 1
    assert [row["epoch"] for row in read_metrics(run)] == [1]  # no row for the epoch that was not saved
    assert not list(run.glob(".*.tmp"))
    # Space found (here: the run moved to a roomy disk), --resume finishes the job.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert [row["epoch"] for row in read_metrics(moved)] == [1, 2, 3, 4]


def test_an_ensemble_trains_its_members_apart_and_averages_them_calibrated(tmp_path, small_mnist):
    """Members are whole runs from seeds seed, seed+1; the saved model scores the mean of the
    members' (each calibrated) scores divided by the ensemble's own temperature; --resume keeps
    finished members; the run refuses to be overwritten."""
    from digitrec.checkpoints import read_calibration, read_config

    config = recipe_config("fast", ensemble=2, mix={"usps-train": 120}, calibrate=True)
    run = tmp_path / "ensemble"
    result = train(config, out_dir=run, dataset=small_mnist, log=None)
    members = [run / "members" / str(k) for k in range(2)]
    assert [read_config(m).seed for m in members] == [42, 43]
    assert all(read_config(m).ensemble == 1 for m in members)
    ensemble, saved = load_model(run)
    assert saved.ensemble == 2 and len(ensemble.members) == 2
    assert (saved.dataset, saved.data_dir) == (small_mnist.name, small_mnist.source)  # as its members
    temperature = read_calibration(run)["temperature"]
    images = small_mnist.test_images[:64]
    x = images.unsqueeze(1).float() / 255
    with torch.no_grad():
        mean = torch.stack([load_model(m)[0](x) for m in members]).mean(0)
        assert torch.allclose(ensemble(x), mean / temperature, atol=1e-4)
    accuracy = evaluate(ensemble, small_mnist.test_images, small_mnist.test_labels).accuracy
    assert read_metrics(run)[-1]["val_accuracy"] == accuracy == result.metrics[-1]["val_accuracy"]
    # The Recognizer scores a few images with the members side by side, more one by one: the same.
    from digitrec.recognition import Recognizer, softmax

    recognizer = Recognizer.from_run(run)
    recognizer.second_look = False  # the members' mean itself (a 2-epoch ensemble is often unsure)
    assert recognizer.info()["ensemble"] == 2
    one = np.stack([recognizer.predict_pixels(image.numpy()).probabilities for image in images[:8]])
    many = np.stack([p.probabilities for p in recognizer.predict_prepared(list(images[:8].numpy()))])
    expected = softmax((mean / temperature)[:8].double().numpy())
    assert np.allclose(one, expected, atol=1e-5) and np.allclose(many, expected, atol=1e-5)

    stamps = [(m / "model.safetensors").stat().st_mtime_ns for m in members]
    with pytest.raises(DigitrecError, match="already holds a run"):
        train(config, out_dir=run, dataset=small_mnist, log=None)
    lines: list[str] = []
    again = train(config, out_dir=run, dataset=small_mnist, resume=True, log=lines.append)
    assert sum("had finished; kept" in line for line in lines) == 2
    assert [(m / "model.safetensors").stat().st_mtime_ns for m in members] == stamps
    assert again.metrics[-1]["val_accuracy"] == accuracy


def test_an_ensemble_needs_a_member(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--recipe", "fast", "--ensemble", "0"])
    assert exit_.value.code == 2
    assert "argument --ensemble: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(DigitrecError, match="ensemble must be at least 1"):
        recipe_config("fast", ensemble=0)


# A mixture with a few of each kind of non-digit, for the not-a-digit head's tests.
HEAD_MIX = {"usps-train": 100, "not-digits": 400, "fashion-mnist": 100}


def _fresh_non_digits(count: int) -> torch.Tensor:
    """Non-digits drawn from a seed no training run here uses, in MNIST's form: (N, 28, 28) uint8."""
    from digitrec.mixture import _draw_chunk

    images, _ = _draw_chunk("not-digits", 999, 0, count)
    return torch.from_numpy(images)


def test_a_not_digit_head_is_fitted_after_training_and_lowers_the_energy_of_non_digits(tmp_path, small_mnist):
    """train fits the head on the frozen features, saves it with the model, and picks the threshold
    on what the saved model outputs; the probabilities stay the classifier's."""
    from digitrec.calibration import energy, not_digit_threshold
    from digitrec.checkpoints import read_calibration
    from digitrec.mixture import held_out_digits
    from digitrec.models import NotDigitHead

    config = recipe_config("fast", mix=HEAD_MIX, calibrate=True, not_digit_head=16)
    run = tmp_path / "head"
    lines: list[str] = []
    result = train(config, out_dir=run, dataset=small_mnist, log=lines.append)
    assert any("not-a-digit head of 16 units fitted" in line for line in lines)
    model, saved = load_model(run)
    assert isinstance(model, NotDigitHead) and saved.not_digit_head == 16
    assert isinstance(result.model, NotDigitHead)
    digits = small_mnist.test_images[:300]
    others = _fresh_non_digits(300)
    with torch.no_grad():
        shift = {}
        for name, images in (("digits", digits), ("others", others)):
            x = images.unsqueeze(1).float() / 255
            plain = model.scores(model.body(x))
            shifted = model(x)
            assert torch.allclose(shifted.softmax(1), plain.softmax(1), atol=1e-5)
            shift[name] = float((plain - shifted)[:, 0].mean())
    assert shift["others"] > 3 * shift["digits"]  # the head sees what is not a digit
    images, _ = held_out_digits(small_mnist, config.mix)
    threshold = not_digit_threshold(score(model, images).numpy())
    assert read_calibration(run)["not_digit_energy_below"] == pytest.approx(threshold, abs=1e-4)
    # A run whose last epoch is saved but whose head is not yet fitted (a weights file without it) loads.
    from digitrec.checkpoints import save_model

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((run / "config.json").read_bytes())
    plain_model = torch.nn.Sequential(*model.body, model.scores)
    save_model(partial / "model.safetensors", plain_model, saved, 1)
    loaded, _ = load_model(partial)
    assert not isinstance(loaded, NotDigitHead)
    expected = energy(score(plain_model, digits).numpy())
    assert np.allclose(energy(score(loaded, digits).numpy()), expected, atol=1e-4)


def test_add_not_digit_head_gives_a_finished_run_one_in_place(tmp_path, small_mnist):
    from digitrec.checkpoints import read_calibration, read_config
    from digitrec.models import NotDigitHead
    from digitrec.training import add_not_digit_head

    config = recipe_config("fast", mix=HEAD_MIX, calibrate=True)
    run = tmp_path / "run"
    train(config, out_dir=run, dataset=small_mnist, log=None)
    before, _ = load_model(run)
    calibration = read_calibration(run)
    added = add_not_digit_head(run, hidden=16, log=None)
    after, saved = load_model(run)
    assert isinstance(after, NotDigitHead) and saved.not_digit_head == 16
    assert added["temperature"] == calibration["temperature"] == read_calibration(run)["temperature"]
    assert read_calibration(run)["not_digit_energy_below"] == added["not_digit_energy_below"]
    images = small_mnist.test_images[:200]
    assert torch.allclose(score(after, images).softmax(1), score(before, images).softmax(1), atol=1e-5)
    assert read_config(run).seed == config.seed
    assert not list(run.glob(".*.tmp"))
    with pytest.raises(DigitrecError, match="already has a not-a-digit head"):
        add_not_digit_head(run, hidden=16, log=None)
    # A new head in the old one's place: the classifier (its probabilities) untouched again.
    replaced = add_not_digit_head(run, hidden=8, log=None, replace=True)
    again, saved = load_model(run)
    assert isinstance(again, NotDigitHead) and saved.not_digit_head == 8
    assert again.head[1].weight.shape[0] == 8
    assert replaced["temperature"] == calibration["temperature"]
    assert torch.allclose(score(again, images).softmax(1), score(before, images).softmax(1), atol=1e-5)
    assert "replace=True" in json.loads((run / "config.json").read_text())["not_digit_head_added_by"]


def test_a_not_digit_head_needs_calibration_non_digits_and_a_model_that_takes_one(small_mnist):
    with pytest.raises(DigitrecError, match="not_digit_head needs"):
        recipe_config("fast", mix={"usps-train": 100}, calibrate=True, not_digit_head=16)
    with pytest.raises(DigitrecError, match="not_digit_head must be"):
        recipe_config("default", not_digit_head=-1)
    config = recipe_config("tutorial-lenet", mix=HEAD_MIX, calibrate=True, not_digit_head=16)
    with pytest.raises(DigitrecError, match="'lenet' cannot take a not-a-digit head"):
        train(config, dataset=small_mnist, save=False, log=None)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "0"}, "RANK=0 is set but WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not"),
        (
            {"RANK": "0", "WORLD_SIZE": "1", "MASTER_PORT": "29500"},
            "RANK=0 is set but MASTER_ADDR is not",
        ),
        (
            {"RANK": "first", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
            "RANK='first' and WORLD_SIZE='1' must be whole numbers",
        ),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
            "RANK=2 must be between 0 and WORLD_SIZE-1=1",
        ),
    ],
)
def test_a_stray_rank_in_the_environment_is_a_one_line_error(tmp_path, monkeypatch, capsys, env, message):
    # A RANK left in the shell by a cluster's job script, without torchrun's other variables:
    # torch's rendezvous would raise a traceback after the data loaded; this says so at once.
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--epochs", "1", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()
