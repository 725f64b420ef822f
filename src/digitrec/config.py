"""Training configuration and named recipes; no torch, so the CLI can check them quickly.

A recipe is a named bundle of model and hyper-parameters; ``--model mlp`` alone
means the recipe ``tutorial-mlp``. Every field can be overridden afterwards.
The whole :class:`TrainConfig` is saved in every run's ``config.json``; its
``augment`` holds the fields of an :class:`AugmentConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import DigitrecError


@dataclass(frozen=True)
class AugmentConfig:
    """The random distortions :func:`digitrec.augment.augment_batch` applies; all zero = off."""

    rotate: float = 0.0  # max rotation, degrees (uniform in [-rotate, rotate])
    translate: float = 0.0  # max shift, fraction of the image side (0.1 = 2.8 px)
    scale: float = 0.0  # max relative zoom (0.1 = 0.9x .. 1.1x)
    shear: float = 0.0  # max shear, degrees
    elastic: float = 0.0  # elastic displacement strength, pixels (Simard et al. use ~ 34 * sigma / 28)
    elastic_sigma: float = 4.0  # smoothness of the elastic field, pixels
    stroke: float = 0.0  # probability of thickening, and again of thinning, the strokes (at most 0.5)

    def __post_init__(self) -> None:
        for name in ("rotate", "translate", "scale", "shear", "elastic", "stroke"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.stroke > 0.5:
            raise ValueError(f"stroke is a probability of at most 0.5, got {self.stroke}")
        if not (math.isfinite(self.elastic_sigma) and self.elastic_sigma > 0):
            raise ValueError(f"elastic_sigma must be positive, got {self.elastic_sigma}")

    @property
    def geometric(self) -> bool:
        return any((self.rotate, self.translate, self.scale, self.shear, self.elastic))

    @property
    def enabled(self) -> bool:
        return self.geometric or self.stroke > 0


@dataclass
class TrainConfig:
    recipe: str = "tutorial-mlp"
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    # Train this many models, one after another from seeds seed, seed + 1, ... (each in its own run
    # under <run>/members/<k>), and save them as one model that averages their scores (a deep
    # ensemble: fewer mistakes on handwriting from outside the training set). 1: one model.
    ensemble: int = 1
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 100  # the global batch: split across processes under torchrun
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.02  # the peak learning rate when a schedule is used
    momentum: float = 0.0  # SGD momentum
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant, onecycle or cosine (stepped per batch)
    warmup: float = 0.0  # fraction of all steps spent warming up (onecycle, cosine)
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of the weight average per step; 0 = off. The average is what is saved.
    augment: dict[str, float] = field(default_factory=dict)  # AugmentConfig fields; empty = off
    # Samples added to the training set per ingredient (mixture.py): usps-train, rescanned-digits,
    # drawn-digits, not-digits, fashion-mnist. Empty = the dataset alone.
    mix: dict[str, int] = field(default_factory=dict)
    # Weight of the loss that teaches "not a digit": cross-entropy of a non-digit's scores against the
    # uniform distribution (outlier exposure, Hendrycks et al. 2019). Used only when the mix has some.
    not_digit_weight: float = 0.5
    # Hidden units of a small head fitted after training on the frozen features of the training set's
    # digits and non-digits (models.NotDigitHead): it lowers the energy of what it takes for a non-digit,
    # never the probabilities. 0 = none. Needs calibrate and non-digits in the mix.
    not_digit_head: int = 0
    usps_dir: str | None = None  # folder of USPS's zip.train.gz, for the mix's usps-train
    # Fit a temperature on held-out digits after training and fold it into the last layer, so the
    # confidences are calibrated (and pick the not-a-digit threshold there). Needs a mix.
    calibrate: bool = False
    seed: int = 42
    device: str = "auto"
    # fp32, or bf16: the forward pass and loss under torch.autocast (weights, gradients and optimizer
    # stay float32). For GPUs with bf16 tensor cores; off in every recipe, the tutorial's included.
    precision: str = "fp32"
    # On CUDA, replay each full training step as one CUDA graph (one process; SGD with a constant
    # learning rate, or AdamW). No effect on other devices.
    cuda_graphs: bool = True

    def validate(self) -> TrainConfig:
        if self.epochs < 1:
            raise DigitrecError(f"epochs must be at least 1, got {self.epochs}")
        if self.ensemble < 1:
            raise DigitrecError(f"ensemble must be at least 1 member, got {self.ensemble}")
        if self.batch_size < 1:
            raise DigitrecError(f"batch size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise DigitrecError(f"learning rate must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise DigitrecError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise DigitrecError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise DigitrecError(f"unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        if not 0 <= self.warmup < 1:
            raise DigitrecError(f"warmup must lie in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise DigitrecError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            raise DigitrecError(f"ema decay must lie in [0, 1), got {self.ema}")
        try:
            AugmentConfig(**self.augment)
        except (TypeError, ValueError) as exc:
            raise DigitrecError(f"bad augmentation settings: {exc}") from None
        if self.precision not in PRECISIONS:
            raise DigitrecError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if not (math.isfinite(self.not_digit_weight) and self.not_digit_weight >= 0):
            raise DigitrecError(f"not_digit_weight must be >= 0, got {self.not_digit_weight}")
        head = self.not_digit_head
        if not isinstance(head, int) or isinstance(head, bool) or head < 0:
            raise DigitrecError(f"not_digit_head must be a count of hidden units >= 0, got {head!r}")
        if self.not_digit_head and not (
            self.calibrate and (self.mix.get("not-digits", 0) or self.mix.get("fashion-mnist", 0))
        ):
            raise DigitrecError(
                "not_digit_head needs calibrate and non-digits in the mix (not-digits or fashion-mnist)"
            )
        for name, count in self.mix.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise DigitrecError(f"mix: {name} must be a count >= 0, got {count!r}")
        if self.calibrate and not self.mix:
            raise DigitrecError(
                "calibrate needs a mix (its held-out digits come from MNIST train and USPS train)"
            )
        if self.optimizer not in OPTIMIZERS:
            raise DigitrecError(f"unknown optimizer {self.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from JSON, each value of its field's kind (a string where a string belongs, ...)."""
        if not isinstance(data, dict):
            raise DigitrecError(f"a configuration must be a JSON object, got {_json_kind(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise DigitrecError(f"unknown configuration keys: {', '.join(map(str, unknown))}")
        for name, value in data.items():
            field_ = fields[name]
            factory: Any = field_.default_factory  # MISSING where the field has a plain default
            default = factory() if field_.default is dataclasses.MISSING else field_.default
            expected = _KINDS[type(default)]
            if not expected[0](value):
                raise DigitrecError(f"{name} must be {expected[1]}, got {_json_kind(value)}")
        return cls(**data)


# For each kind of default value: what a JSON value must be to take its place, and its name.
_KINDS: dict[type, tuple[Callable[[Any], bool], str]] = {
    type(None): (lambda v: v is None or isinstance(v, str), "a string or null"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "a JSON object"),
}


def _json_kind(value: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "onecycle", "cosine")

# The tutorial's two recipes (SGD, batch 100, 10 epochs, seed 42, lr 0.02 / 0.03), then digitrec's own.
RECIPES: dict[str, dict[str, Any]] = {
    "tutorial-mlp": {"model": "mlp", "lr": 0.02},
    "tutorial-lenet": {"model": "lenet", "lr": 0.03},
    # The bundled default model: a compact CNN trained with distortions so that it reads handwriting
    # from outside MNIST (other pens, sizes, slants) as well as MNIST itself.
    "default": {
        "model": "cnn",
        "epochs": 7,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup": 0.2,
        "label_smoothing": 0.05,
        "ema": 0.999,
        "augment": {
            "rotate": 12,
            "translate": 0.1,
            "scale": 0.15,
            "shear": 10,
            "elastic": 2.0,
            "stroke": 0.15,
        },
        # Other writers (USPS), drawn digits in other traditions, and things that are not digits.
        "mix": {
            "usps-train": 6291,
            "rescanned-digits": 40000,
            "drawn-digits": 30000,
            "not-digits": 24000,
            "fashion-mnist": 6000,
        },
        "not_digit_head": 128,
        "calibrate": True,
    },
    # Seconds to 99%: a small CNN with batch norm, one epoch, AdamW with a one-cycle schedule.
    "fast": {
        "model": "fastcnn",
        "epochs": 1,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1.5e-2,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "warmup": 0.25,
        "label_smoothing": 0.1,
    },
    # As close to the record as 2 cores allow in about 30 minutes: residual CNN, distortions, EMA.
    "best": {
        "model": "resnet",
        "model_args": {"width": 32},
        "epochs": 12,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "warmup": 0.15,
        "label_smoothing": 0.05,
        "ema": 0.999,
        "augment": {"rotate": 10, "translate": 0.1, "scale": 0.1, "shear": 8, "elastic": 1.5},
    },
    # No convolutions: a wide MLP with dropout and distortions (LeCun's table: 98.4-99.3% for such nets).
    "best-mlp": {
        "model": "mlp",
        "model_args": {"hidden": [1024, 1024], "dropout": 0.2},
        "epochs": 20,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "warmup": 0.1,
        "ema": 0.999,
        "augment": {"rotate": 8, "translate": 0.08, "scale": 0.1, "shear": 5, "elastic": 1.5},
    },
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
