"""CUDA graphs against eager execution, on a GPU: the same recipe, data and seed, side by side.

    python -m benchmarks.cuda_graphs_check          # needs CUDA; about a minute on an H200

For each case it trains once with ``cuda_graphs=True`` and once without, and prints the final
validation accuracy, training loss, epoch seconds and the largest difference between the two sets
of weights. SGD with a constant rate replays exactly the eager kernels (differences come from
cuDNN's non-deterministic weight gradients); AdamW's capturable form computes its bias correction
on the device, so its runs drift apart by rounding and land on equally good models.
"""

from __future__ import annotations

import sys
import time

import torch

from digitrec.config import recipe_config
from digitrec.data import Dataset, load_dataset
from digitrec.training import train

# (recipe, training images, precision)
CASES = [
    ("tutorial-lenet", 60_000, "fp32"),
    ("tutorial-mlp", 60_000, "fp32"),
    ("fast", 60_000, "fp32"),
    ("best", 12_800, "fp32"),
    ("tutorial-lenet", 20_000, "bf16"),
    # A last batch of 50 runs eagerly beside the graph and must average over its own 50 images.
    ("tutorial-lenet", 10_050, "fp32"),
]


def main() -> int:
    if not torch.cuda.is_available():
        print("python -m benchmarks.cuda_graphs_check: CUDA is not available", file=sys.stderr)
        return 2
    ds = load_dataset("mnist")
    for recipe, count, precision in CASES:
        subset = Dataset(ds.name, ds.train_images[:count], ds.train_labels[:count], ds.test_images,
                         ds.test_labels, ds.source)  # fmt: skip
        runs = {}
        for graphs in (True, False):
            config = recipe_config(recipe, epochs=1, device="cuda", cuda_graphs=graphs, precision=precision)
            started = time.perf_counter()
            result = train(config, dataset=subset, save=False, log=print if graphs else None, progress=False)
            runs[graphs] = (result, time.perf_counter() - started)
        (graphed, graphed_wall), (eager, eager_wall) = runs[True], runs[False]
        weights, eager_weights = graphed.model.state_dict(), eager.model.state_dict()
        diff = max((weights[k].float() - eager_weights[k].float()).abs().max().item() for k in weights)
        a, b = graphed.metrics[-1], eager.metrics[-1]
        print(
            f"{recipe} n={count} {precision}: graphs val {a['val_accuracy']:.4f} loss {a['train_loss']:.5f} "
            f"epoch {a['epoch_seconds']:.3f}s wall {graphed_wall:.2f}s | eager val {b['val_accuracy']:.4f} "
            f"loss {b['train_loss']:.5f} epoch {b['epoch_seconds']:.3f}s wall {eager_wall:.2f}s | "
            f"max weight diff {diff:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
