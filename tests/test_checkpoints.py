import json

import pytest
import torch

from digitrec.checkpoints import (
    load_checkpoint,
    load_model,
    read_config,
    save_checkpoint,
    save_model,
    write_config,
)
from digitrec.config import recipe_config
from digitrec.errors import DigitrecError
from digitrec.fileio import atomic_write
from digitrec.models import create_model


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
