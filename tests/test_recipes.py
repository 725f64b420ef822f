"""Every recipe starts, learns and is reproducible; the training tools do what they should.

Full-length runs belong to benchmarks/ and scripts/results_table.py, not CI.
"""

import math

import pytest
import torch

from digitrec.checkpoints import _read_safetensors, load_model
from digitrec.config import RECIPES, TrainConfig, list_recipes, recipe_config
from digitrec.errors import DigitrecError
from digitrec.evaluation import evaluate, predict_proba
from digitrec.runs import CHECKPOINT_FILE
from digitrec.training import learning_rate, train

# The default recipe's mixture, shrunk: each kind of ingredient, a few hundred samples drawn.
SMALL_MIX = {"usps-train": 200, "drawn-digits": 200, "not-digits": 200, "fashion-mnist": 100}


@pytest.mark.parametrize("recipe", list_recipes())
def test_recipe_starts_and_learns(recipe, small_mnist):
    config = recipe_config(recipe, epochs=2, mix=SMALL_MIX if RECIPES[recipe].get("mix") else None)
    result = train(config, dataset=small_mnist, save=False, log=None)
    first, last = result.metrics
    assert math.isfinite(last["train_loss"])
    assert last["train_loss"] < first["train_loss"]
    assert last["val_accuracy"] > 0.3  # chance is 0.1; 2 short epochs on 2,000 images


def test_augmented_ema_recipe_is_reproducible(small_mnist):
    config = recipe_config(
        "default", epochs=1, model_args={"width": 8}, mix={}, calibrate=False, not_digit_head=0
    )
    a = train(config, dataset=small_mnist, save=False, log=None)
    b = train(config, dataset=small_mnist, save=False, log=None)
    assert [r["val_accuracy"] for r in a.metrics] == [r["val_accuracy"] for r in b.metrics]
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


def test_ema_is_what_is_saved_and_differs_from_the_raw_weights(tmp_path, small_mnist):
    config = recipe_config(
        "default", epochs=1, model_args={"width": 8}, mix={}, calibrate=False, not_digit_head=0
    )
    result = train(config, dataset=small_mnist, out_dir=tmp_path / "r", log=None)
    tensors, _ = _read_safetensors(tmp_path / "r" / CHECKPOINT_FILE)
    raw = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
    assert raw.keys() == ema.keys()
    saved, _ = load_model(tmp_path / "r")
    assert all(torch.equal(saved.state_dict()[k], ema[k]) for k in ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    report = evaluate(saved, small_mnist.test_images, small_mnist.test_labels)
    assert report.accuracy == result.metrics[-1]["val_accuracy"]


def test_tta_averages_shifted_views(small_mnist):
    result = train(recipe_config("fast", epochs=1), dataset=small_mnist, save=False, log=None)
    plain = predict_proba(result.model, small_mnist.test_images)
    tta = predict_proba(result.model, small_mnist.test_images, tta=True)
    assert torch.allclose(plain.sum(1), torch.ones(len(plain))) and torch.allclose(
        tta.sum(1), torch.ones(len(tta))
    )
    assert not torch.allclose(plain, tta)
    report = evaluate(result.model, small_mnist.test_images, small_mnist.test_labels, tta=True)
    assert 0.3 < report.accuracy <= 1.0


def test_ensemble_of_two_runs(small_mnist):
    runs = [
        train(recipe_config("fast", seed=s), dataset=small_mnist, save=False, log=None).model for s in (1, 2)
    ]
    single = [evaluate(m, small_mnist.test_images, small_mnist.test_labels).accuracy for m in runs]
    both = evaluate(runs, small_mnist.test_images, small_mnist.test_labels).accuracy
    assert both >= min(single) - 0.02


def test_schedules():
    config = TrainConfig(lr=0.1, schedule="onecycle", warmup=0.25)
    lrs = [learning_rate(config, step, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 25 and lrs[-1] < 0.1 / 100
    cosine = TrainConfig(lr=0.1, schedule="cosine", warmup=0.0)
    assert learning_rate(cosine, 0, 100) == pytest.approx(0.1) and learning_rate(
        cosine, 100, 100
    ) == pytest.approx(0.0)
    assert learning_rate(TrainConfig(lr=0.03), 77, 100) == 0.03


@pytest.mark.parametrize(
    "overrides",
    [{"schedule": "sawtooth"}, {"optimizer": "lion"}, {"ema": 1.0}, {"label_smoothing": -0.1},
     {"augment": {"twirl": 3}}, {"warmup": 1.5}, {"mix": {"usps-train": -1}}, {"not_digit_weight": -1.0},
     {"mix": {}}],
)  # fmt: skip
def test_bad_settings_are_refused(overrides):
    with pytest.raises(DigitrecError):
        recipe_config("default", **overrides)
