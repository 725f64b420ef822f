"""The bundled default model: small, accurate, trained by digitrec's own recipe, and used by default."""

import json

from digitrec.checkpoints import load_model, read_metrics
from digitrec.cli import main
from digitrec.evaluation import evaluate
from digitrec.runs import default_model_dir


def test_bundled_model_is_small_and_documents_how_it_was_made():
    folder = default_model_dir()
    assert (folder / "model.safetensors").stat().st_size <= 2 * 1024 * 1024
    info = json.loads((folder / "config.json").read_text())
    assert info["train"]["recipe"] == "default" and info["train"]["augment"]  # trained with distortions
    assert "digitrec train --recipe default" in info["command"]
    assert info["digitrec_version"] and info["torch_version"] and isinstance(info["train"]["seed"], int)


def test_bundled_model_was_trained_by_the_recipe_as_shipped():
    # `digitrec train --recipe default` must make the bundled model again (up to the seed's
    # luck): each setting the recipe fixes is the one the bundled model was trained with.
    from digitrec.config import RECIPES

    trained = json.loads((default_model_dir() / "config.json").read_text())["train"]
    for key, value in RECIPES["default"].items():
        assert trained[key] == value, key


def test_bundled_model_accuracy_on_mnist_test(mnist):
    model, _ = load_model(default_model_dir())
    report = evaluate(model, mnist.test_images, mnist.test_labels)
    assert report.accuracy >= 0.993
    assert report.accuracy == read_metrics(default_model_dir())[-1]["val_accuracy"]


def test_evaluate_without_a_run_uses_the_bundled_model(capsys):
    assert main(["evaluate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == ["cnn"] and out["accuracy"] >= 0.993
