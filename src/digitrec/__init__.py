"""digitrec: handwritten digit recognition on PyTorch.

The MXNet Gluon "Handwritten Digit Recognition" tutorial, reproduced faithfully,
then taken further. The public API is imported lazily so that ``digitrec
--help`` answers without loading torch::

    from digitrec import load_dataset, recipe_config, train, evaluate
    ds = load_dataset("mnist")
    result = train(recipe_config("tutorial-mlp", epochs=1), dataset=ds, save=False)
    print(evaluate(result.model, ds.test_images, ds.test_labels).accuracy)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DigitrecError": "errors",
    "load_dataset": "data",
    "download_dataset": "data",
    "Dataset": "data",
    "BatchIterator": "data",
    "read_idx": "idx",
    "write_idx": "idx",
    "create_model": "models",
    "list_models": "models",
    "register_model": "models",
    "TrainConfig": "config",
    "recipe_config": "config",
    "list_recipes": "config",
    "train": "training",
    "TrainResult": "training",
    "evaluate": "evaluation",
    "score": "evaluation",
    "EvalReport": "evaluation",
    "load_model": "checkpoints",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'digitrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
