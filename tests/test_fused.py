"""The fused MLP step is autograd + SGD, to float rounding, and train() uses it only where it applies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from digitrec.config import recipe_config
from digitrec.fused import FusedMLPStep
from digitrec.models import create_model
from digitrec.training import train


def _autograd_step(model, x, y, lr, mean_over):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scores = model(x)
    loss = F.cross_entropy(scores, y, reduction="sum")
    optimizer.zero_grad()
    (loss / mean_over).backward()
    optimizer.step()
    return loss.detach(), (scores.argmax(1) == y).sum()


@pytest.mark.parametrize("hidden", [[128, 64], [32], []])
def test_fused_step_matches_autograd(small_mnist, hidden):
    torch.manual_seed(0)
    fused_model = create_model("mlp", hidden=hidden)
    reference = copy.deepcopy(fused_model)
    step = FusedMLPStep.for_model(fused_model)
    assert step is not None
    generator = torch.Generator().manual_seed(1)
    for batch in range(30):
        index = torch.randint(0, len(small_mnist.train_images), (100,), generator=generator)
        x = small_mnist.train_images[index].unsqueeze(1).float().div(255)  # (B, 1, 28, 28) in [0, 1]
        y = small_mnist.train_labels[index]
        lr = 0.5 if batch < 10 else 0.05  # large steps first, so a wrong gradient would show
        fused_loss, fused_correct = step(x, y, lr, 100)
        loss, correct = _autograd_step(reference, x, y, lr, 100)
        assert torch.allclose(fused_loss, loss, rtol=1e-5)
        assert int(fused_correct) == int(correct)
    for (name, a), b in zip(fused_model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    # and the model really moved: the comparison is not between two untouched copies
    assert not torch.equal(fused_model[1].weight, create_model("mlp", hidden=hidden)[1].weight)


@pytest.mark.parametrize(
    ("model", "args"),
    [("mlp", {"dropout": 0.2}), ("lenet", {}), ("cnn", {}), ("fastcnn", {}), ("resnet", {"width": 8})],
)
def test_other_models_are_not_fused(model, args):
    assert FusedMLPStep.for_model(create_model(model, **args)) is None


def test_training_with_and_without_the_fused_step_agrees(small_mnist, monkeypatch):
    config = recipe_config("tutorial-mlp", epochs=2)
    fused = train(config, dataset=small_mnist, save=False, log=None)
    monkeypatch.setattr(FusedMLPStep, "for_model", classmethod(lambda cls, model: None))
    plain = train(config, dataset=small_mnist, save=False, log=None)
    for a, b in zip(fused.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for row_fused, row_plain in zip(fused.metrics, plain.metrics, strict=True):
        assert row_fused["train_loss"] == pytest.approx(row_plain["train_loss"], rel=1e-5)
        assert row_fused["train_accuracy"] == row_plain["train_accuracy"]
        assert row_fused["val_accuracy"] == row_plain["val_accuracy"]
