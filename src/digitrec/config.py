"""Training configuration and named recipes.

A recipe is a named bundle of model and hyper-parameters; ``--model mlp`` alone
means the recipe ``tutorial-mlp``. Every field can be overridden afterwards.
The whole :class:`TrainConfig` is saved in every run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import DigitrecError


@dataclass
class TrainConfig:
    recipe: str = "tutorial-mlp"
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 100  # the global batch: split across processes under torchrun
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 42
    device: str = "auto"

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise DigitrecError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise DigitrecError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise DigitrecError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise DigitrecError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise DigitrecError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise DigitrecError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DigitrecError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**data)


OPTIMIZERS = ("sgd",)

# The tutorial's two recipes: SGD, batch 100, 10 epochs, seed 42, lr 0.02 / 0.03.
RECIPES: dict[str, dict[str, Any]] = {
    "tutorial-mlp": {"model": "mlp", "lr": 0.02},
    "tutorial-lenet": {"model": "lenet", "lr": 0.03},
}

# ``--model NAME`` without ``--recipe`` picks this recipe.
MODEL_DEFAULT_RECIPE = {"mlp": "tutorial-mlp", "lenet": "tutorial-lenet"}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of recipe ``name``, with ``overrides`` (None values ignored) applied."""
    if name not in RECIPES:
        raise DigitrecError(f"unknown recipe {name!r} (known: {', '.join(list_recipes())})")
    values: dict[str, Any] = {"recipe": name, **RECIPES[name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("data_dir") and overrides.get("dataset") is None:
        # A folder of the user's is validated as IDX; checksums apply only when a known name is given.
        values["dataset"] = "custom"
    return TrainConfig.from_dict(values).validate()
