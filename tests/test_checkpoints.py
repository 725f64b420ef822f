import json
import os
import re
import subprocess
import sys

import pytest
import torch

from digitrec.checkpoints import (
    last_metrics,
    load_checkpoint,
    load_model,
    read_config,
    read_metrics,
    save_checkpoint,
    save_model,
    write_config,
)
from digitrec.config import recipe_config
from digitrec.errors import DigitrecError
from digitrec.fileio import atomic_write
from digitrec.models import create_model

from .conftest import cli_exit_code


def _run_dir(tmp_path, momentum=0.9):
    config = recipe_config("tutorial-mlp", momentum=momentum)
    torch.manual_seed(0)
    model = create_model("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()  # creates momentum buffers
    write_config(tmp_path, config, {})
    save_model(tmp_path / "model.safetensors", model, config, epoch=3)
    save_checkpoint(tmp_path, model, optimizer, config, epoch=3)
    return config, model, optimizer


def test_model_roundtrip(tmp_path):
    _, model, _ = _run_dir(tmp_path)
    loaded, config = load_model(tmp_path)
    assert config.model == "mlp" and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_checkpoint_restores_optimizer_state(tmp_path):
    _, model, optimizer = _run_dir(tmp_path)
    fresh = create_model("mlp")
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    assert load_checkpoint(tmp_path, fresh, fresh_opt) == 3
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])


def test_missing_and_corrupt_run_directories(tmp_path):
    with pytest.raises(DigitrecError, match="run directory not found"):
        load_model(tmp_path / "none")
    with pytest.raises(DigitrecError, match=r"config\.json: missing"):
        load_model(tmp_path)
    _run_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DigitrecError, match="not a valid safetensors file"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(DigitrecError, match="corrupt run configuration"):
        read_config(tmp_path)


def test_weights_of_another_model_are_refused(tmp_path):
    _run_dir(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["train"]["model"] = "lenet"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(DigitrecError, match="weights do not fit the model"):
        load_model(tmp_path)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"new but incomplete")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_atomic_write_refuses_to_replace_a_fifo_or_device_and_follows_no_link(tmp_path):
    """Moving the finished file into place would replace a FIFO or device node itself (as root,
    `digitrec export --out /dev/full` replaced the device with a file): refused in one line, the
    node left as it is (a FIFO here; a device node is not ours to risk in a test). A link to a
    regular file is replaced by the file, its target untouched."""
    import stat

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    message = r"pipe\.onnx: not a regular file \(a device, FIFO or socket\)"
    with pytest.raises(DigitrecError, match=message), atomic_write(fifo) as handle:
        handle.write(b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.onnx"]  # no temp file left
    original = tmp_path / "original.bin"
    original.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(original)
    with atomic_write(link) as handle:
        handle.write(b"new")
    assert link.read_bytes() == b"new" and not link.is_symlink() and original.read_bytes() == b"old"


def test_a_tensor_learning_rate_is_saved_as_a_number_and_restored_in_place(tmp_path):
    """A CUDA-graphed AdamW keeps its learning rate in a tensor that the graph reads: a checkpoint
    stores a number, and loading fills the running optimizer's tensor instead of replacing it."""
    config = recipe_config("fast")
    torch.manual_seed(0)
    model = create_model("mlp")
    # On the CPU a tensor learning rate needs the for-loop implementation (foreach=False).
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.004), foreach=False)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    write_config(tmp_path, config, {})
    save_checkpoint(tmp_path, model, optimizer, config, epoch=1)

    plain = torch.optim.AdamW(create_model("mlp").parameters(), lr=0.5)
    load_checkpoint(tmp_path, create_model("mlp"), plain)
    assert plain.param_groups[0]["lr"] == pytest.approx(0.004) and isinstance(
        plain.param_groups[0]["lr"], float
    )

    held = torch.tensor(0.5)
    fresh = create_model("mlp")
    graphed = torch.optim.AdamW(fresh.parameters(), lr=held, foreach=False)
    load_checkpoint(tmp_path, fresh, graphed)
    assert graphed.param_groups[0]["lr"] is held and held.item() == pytest.approx(0.004)
    # how the optimizer executes stays this process's choice
    assert graphed.param_groups[0]["foreach"] is False


# ---- broken run directories: one line and exit 2 from the CLI, never a traceback ----------------------


def _edit_config(run, edit):
    data = json.loads((run / "config.json").read_text())
    edit(data)
    (run / "config.json").write_text(json.dumps(data))


def _replace_with_folder(path):
    path.unlink()
    path.mkdir()


def _symlink_loop(path):
    path.unlink()
    path.symlink_to(path.name)  # config.json -> config.json


def _weights(run, change):
    from safetensors.torch import load_file, save_file

    path = run / "model.safetensors"
    tensors = load_file(path)
    save_file({name: change(name, tensor) for name, tensor in tensors.items()}, path)


BROKEN_RUNS = {
    "model file is a folder": (
        lambda run: _replace_with_folder(run / "model.safetensors"),
        "not a regular file",
    ),
    "config file is a folder": (lambda run: _replace_with_folder(run / "config.json"), "not a regular file"),
    "config symlink loop": (lambda run: _symlink_loop(run / "config.json"), "cannot read"),
    "model symlink loop": (lambda run: _symlink_loop(run / "model.safetensors"), "cannot read"),
    "config nested 100,000 deep": (
        lambda run: (run / "config.json").write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "nested too deeply",
    ),
    "train is a string": (
        lambda run: (run / "config.json").write_text('{"train": "mlp"}'),
        '"train" must be a JSON object',
    ),
    "model is a list": (
        lambda run: _edit_config(run, lambda d: d["train"].update(model=["mlp"])),
        "model must be a string",
    ),
    "model_args a string": (
        lambda run: _edit_config(run, lambda d: d["train"].update(model_args="big")),
        "model_args must be a JSON object",
    ),
    "negative size": (
        lambda run: _edit_config(run, lambda d: d["train"].update(model_args={"hidden": [-5]})),
        "bad options for model 'mlp'",
    ),
    "huge size": (
        lambda run: _edit_config(run, lambda d: d["train"].update(model_args={"hidden": [10**9, 10**9]})),
        "over the limit",
    ),
    "10 GB model file": (
        lambda run: os.truncate(run / "model.safetensors", 10 * 2**30),  # sparse: no disk used
        "over this file's limit",
    ),
    "float16 weights of the right shapes": (
        lambda run: _weights(run, lambda _, t: t.half()),
        "torch.float16",
    ),
    "NaN weights": (
        lambda run: _weights(run, lambda name, t: t.fill_(float("nan")) if name.endswith("bias") else t),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_RUNS))
def test_a_broken_run_directory_gets_one_line_and_exit_2(tmp_path, capsys, case):
    break_run, message = BROKEN_RUNS[case]
    run = tmp_path / "run"
    run.mkdir()
    _run_dir(run)
    break_run(run)
    for command in (["evaluate", str(run)], ["predict", "--run", str(run), "-"]):
        assert cli_exit_code(command) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"digitrec {command[0]}: error: {run}") and message in err, err


GOOD_ROW = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_accuracy": 0.91, "epoch_seconds": 1.0}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"epoch": 1, "train_loss": "x"}', "train_loss is 'x', not a number"),
        ('{"epoch": 1, "train_loss": 0.5}', "train_accuracy is missing"),
        ("[1, 2]", "expected an object, got list"),
        (json.dumps({**GOOD_ROW, "epoch": 0}), "epoch is 0"),
        (json.dumps({**GOOD_ROW, "epoch": 1.5}), "epoch is 1.5, not a number"),
        (json.dumps({**GOOD_ROW, "val_accuracy": True}), "val_accuracy is True, not a number"),
    ],
)
def test_a_damaged_metrics_file_is_one_line_where_it_is_needed_only(tmp_path, capsys, line, problem):
    """A hand-edited metrics.jsonl row: report and resume, which need the rows, stop in one line
    (before: a KeyError traceback from report); the model itself stays usable (predict, export
    read the last row for display only)."""
    run = tmp_path / "run"
    run.mkdir()
    _run_dir(run)
    (run / "metrics.jsonl").write_text(json.dumps(GOOD_ROW) + "\n" + line + "\n")
    message = f"metrics.jsonl:2: not a row of digitrec's metrics \\({re.escape(problem)}\\)"
    with pytest.raises(DigitrecError, match=message):
        read_metrics(run)
    for command in (["report", str(run)], ["train", "--resume", str(run), "--epochs", "4", "--no-progress"]):
        assert cli_exit_code(command) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "metrics.jsonl:2" in err, err
    from digitrec.recognition import Recognizer

    assert "val_accuracy" not in Recognizer.from_run(run).info()
    assert last_metrics(run) is None


def test_serve_refuses_a_broken_run_with_one_line(tmp_path):
    """The server loads the model before it listens: a nested config.json is one line and exit 2."""
    run = tmp_path / "run"
    run.mkdir()
    _run_dir(run)
    (run / "config.json").write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = subprocess.run(
        [sys.executable, "-m", "digitrec", "serve", "--run", str(run), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"digitrec serve: error: {run}/config.json: corrupt run configuration (JSON nested too deeply)"
    ]
