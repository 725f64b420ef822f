"""The tutorial's own asserts, on the full real MNIST with the default recipes and seed.

These train for real (about 10 s for the MLP and 2-3 min for LeNet on 2 cores),
so they are marked slow; CI runs them.
"""

import pytest

from digitrec.checkpoints import load_model, read_metrics
from digitrec.cli import main
from digitrec.evaluation import evaluate


@pytest.mark.slow
@pytest.mark.parametrize(("model", "gate"), [("mlp", 0.94), ("lenet", 0.98)])
def test_tutorial_recipe_reaches_the_tutorials_accuracy(tmp_path, mnist, capsys, model, gate):
    run = tmp_path / model
    assert main(["train", "--model", model, "--out", str(run), "--no-progress"]) == 0
    rows = read_metrics(run)
    assert len(rows) == 10  # the tutorial's 10 epochs
    assert rows[-1]["val_accuracy"] > gate
    assert rows[-1]["train_accuracy"] > rows[0]["train_accuracy"]
    loaded, config = load_model(run)
    assert (config.batch_size, config.seed, config.lr) == (100, 42, 0.02 if model == "mlp" else 0.03)
    assert evaluate(loaded, mnist.test_images, mnist.test_labels).accuracy == rows[-1]["val_accuracy"]
    print(capsys.readouterr().out)
