"""Models by name: a small registry in the manner of timm.

>>> model = create_model("lenet")          # the tutorial's CNN
>>> sorted(list_models())[:2]
['lenet', 'mlp']

Every model takes (B, 1, 28, 28) float32 in [0, 1] and returns (B, 10) scores.
Initialization follows MXNet's ``Xavier(rnd_type="uniform", factor_type="avg",
magnitude=2.24)``, the tutorial's choice: weights ~ U(-s, s) with
s = sqrt(2.24 / ((fan_in + fan_out) / 2)), biases zero.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DigitrecError

ModelFn = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFn] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Decorator: make ``fn`` available as ``create_model(fn.__name__)``."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


# 50x digitrec's largest model (best-mlp, 1.9 M): room for experiments, none for a typo's 10^12.
MAX_PARAMETERS = 100_000_000


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a registered model; unknown names and unknown options raise DigitrecError."""
    try:
        fn = _REGISTRY[name]
    except KeyError:
        raise DigitrecError(f"unknown model {name!r} (known: {', '.join(list_models())})") from None
    try:
        if cfg:
            # Options (from a recipe or a run's config.json) are sized on the meta device first, with
            # no memory and no arithmetic: negative or absurd sizes are refused here, instead of failing
            # deep in torch or exhausting the memory. Not for the defaults, which are known: a meta
            # normal_ imports torch._dynamo, about 2 s once per process.
            with torch.device("meta"):
                parameters = sum(p.numel() for p in fn(**cfg).parameters())
            if parameters > MAX_PARAMETERS:
                raise DigitrecError(
                    f"bad options for model {name!r}: {parameters:,} parameters, "
                    f"over the limit of {MAX_PARAMETERS:,}"
                )
        return fn(**cfg)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DigitrecError(f"bad options for model {name!r}: {first_line}") from None


def xavier_init_(module: nn.Module, magnitude: float = 2.24) -> nn.Module:
    """MXNet's Xavier(magnitude) with uniform draws and the "avg" factor; biases zero."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            weight = layer.weight
            receptive = math.prod(weight.shape[2:])  # kernel area; 1 for dense layers
            fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
            bound = math.sqrt(magnitude / ((fan_in + fan_out) / 2.0))
            with torch.no_grad():
                weight.uniform_(-bound, bound)
                if layer.bias is not None:
                    layer.bias.zero_()
    return module


@register_model
def mlp(
    hidden: tuple[int, ...] | list[int] = (128, 64), dropout: float = 0.0, init_magnitude: float = 2.24
) -> nn.Module:
    """The tutorial's multilayer perceptron: Dense 128 ReLU, Dense 64 ReLU, Dense 10."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, 10))
    return xavier_init_(nn.Sequential(*layers), init_magnitude)


class LeNet(nn.Module):
    """The tutorial's LeNet variant, with tanh everywhere (including the output)."""

    def __init__(self, output_tanh: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)  # -> (B, 20, 24, 24)
        self.pool1 = nn.MaxPool2d(2, 2)  # -> (B, 20, 12, 12)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)  # -> (B, 50, 8, 8)
        self.pool2 = nn.MaxPool2d(2, 2)  # -> (B, 50, 4, 4)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)
        self.output_tanh = output_tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The tutorial computes pool(tanh(conv(x))). tanh is monotone, so max-pooling first gives exactly
        # the same values (and gradients) while computing tanh on 4x fewer elements: ~25% of a CPU step.
        x = torch.tanh(self.pool1(self.conv1(x)))
        x = torch.tanh(self.pool2(self.conv2(x)))
        x = torch.tanh(self.fc1(x.flatten(1)))
        x = self.fc2(x)
        # The tutorial squashes its scores with tanh before the softmax loss; kept for fidelity.
        return torch.tanh(x) if self.output_tanh else x


@register_model
def lenet(output_tanh: bool = True, init_magnitude: float = 2.24) -> nn.Module:
    """The tutorial's CNN: conv 20@5x5, tanh, pool, conv 50@5x5, tanh, pool, dense 500 tanh, dense 10 tanh."""
    return xavier_init_(LeNet(output_tanh=output_tanh), init_magnitude)


def prefer_channels_last(model: nn.Module) -> nn.Module:
    """Store a convolutional model's weights NHWC: oneDNN (CPU) and cuDNN run its convolutions
    fastest that way (LeNet: 1.7x faster training steps, 2x faster inference on 2 cores). Values
    agree with NCHW to float rounding. Training, evaluation and recognition all use this one
    layout, so a run's logged accuracy and a later evaluation see the same numbers."""
    if any(isinstance(layer, nn.Conv2d) for layer in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Multiply-adds of one forward pass per image, counted over conv and dense layers."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kernel = layer.weight.shape[1] * math.prod(layer.weight.shape[2:])
            total += output[0].numel() * kernel
        elif isinstance(layer, nn.Linear):
            total += output[0].numel() * layer.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total


def _conv_bn(c_in: int, c_out: int, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@register_model
def cnn(width: int = 32, dropout: float = 0.1) -> nn.Module:
    """Compact VGG-style CNN with batch norm (the bundled default model's architecture)."""
    w = width
    model = nn.Sequential(
        *_conv_bn(1, w), *_conv_bn(w, w), nn.MaxPool2d(2),  # (B, w, 14, 14)
        *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, 7, 7)
        *_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # (B, 4w, 3, 3)
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 9, 10),
    )  # fmt: skip
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model


@register_model
def fastcnn(channels: tuple[int, int] | list[int] = (16, 32)) -> nn.Module:
    """Small CNN for the seconds-long ``fast`` recipe: two 5x5 conv-pool-BN-ReLU blocks, one dense layer."""
    c1, c2 = channels
    # Shaped for a 2-core CPU: unpadded 5x5 convolutions (LeNet's geometry, 28 -> 24 -> 12 -> 8 -> 4) cost
    # 2.7x fewer multiply-adds than padded ones, and pooling before batch norm and ReLU does their work on
    # a quarter of the pixels. Measured: 99.2% after one epoch in under 5 s.
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, bias=False), nn.MaxPool2d(2),  # (B, c1, 12, 12)
        nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 5, bias=False), nn.MaxPool2d(2),  # (B, c2, 4, 4)
        nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
        nn.Flatten(), nn.Linear(c2 * 16, 10),
    )  # fmt: skip


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


@register_model
def resnet(width: int = 48, dropout: float = 0.2) -> nn.Module:
    """Strong residual CNN with batch norm for the ``best`` recipe (three stages, 28 -> 14 -> 7)."""
    w = width
    model = nn.Sequential(
        *_conv_bn(1, w), _Residual(w), nn.MaxPool2d(2),  # (B, w, 14, 14)
        *_conv_bn(w, 2 * w), _Residual(2 * w), nn.MaxPool2d(2),  # (B, 2w, 7, 7)
        *_conv_bn(2 * w, 4 * w), _Residual(4 * w), nn.AdaptiveMaxPool2d(1),  # (B, 4w, 1, 1)
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, 10),
    )  # fmt: skip
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return model


class Ensemble(nn.Module):
    """Members of one architecture, trained apart from different seeds, whose scores are averaged
    (a deep ensemble, Lakshminarayanan et al. 2017): (B, 1, 28, 28) -> (B, 10), the mean of the
    members' (B, 10) scores. Its state dict names each member's tensors ``members.<k>.<name>``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise DigitrecError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)  # (B, 10)


class NotDigitHead(nn.Module):
    """A classifier whose ten scores are all lowered by the same amount: ``softplus(head(f))``, a small
    head's evidence that the image is not a digit, read from the features ``f`` the classifier's last
    linear layer sees. (B, 1, 28, 28) -> (B, 10).

    The softmax ignores a shift common to all ten scores, so the probabilities, the answer and its
    calibration are exactly the classifier's; only the energy ``log(sum(exp(scores)))``, which the
    not-a-digit rule reads (calibration.py), drops by the shift. Outlier exposure teaches the
    classifier to spread its belief over the digits for a non-digit, which a digit it hesitates over
    does too; the head, fitted on the frozen features of the training set's digits and non-digits
    (training.fit_not_digit_head), tells the two apart. Its state dict names the classifier's
    tensors ``body.<k>.*`` and ``scores.*``, the head's ``head.*``.
    """

    def __init__(self, classifier: nn.Sequential, hidden: int, dropout: float = 0.2) -> None:
        super().__init__()
        if not self.fits(classifier):
            raise DigitrecError(
                "a not-a-digit head needs a model that is a sequence of layers ending in a linear "
                "one (cnn, fastcnn, resnet, mlp)"
            )
        if hidden < 1:
            raise DigitrecError(f"a not-a-digit head needs at least 1 hidden unit, got {hidden}")
        self.body = classifier[:-1]  # (B, 1, 28, 28) -> (B, F) features
        self.scores = cast(nn.Linear, classifier[-1])  # (B, F) -> (B, 10)
        features = self.scores.in_features
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        ).to(self.scores.weight.device)

    @staticmethod
    def fits(model: nn.Module) -> bool:
        """Whether ``model`` can take a head: a sequence of layers ending in a linear one."""
        return isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)  # (B, F)
        if self.training:
            evidence = self.head(features)  # (B, 1)
        else:
            # The head's layers called directly, past its dropout (identity in eval mode) and the
            # modules' call overhead: one image 0.06 ms faster, about half of what the head costs.
            first, last = cast(nn.Linear, self.head[1]), cast(nn.Linear, self.head[3])
            hidden = F.relu(F.linear(features, first.weight, first.bias))
            evidence = F.linear(hidden, last.weight, last.bias)
        scores = F.linear(features, self.scores.weight, self.scores.bias)
        return scores - F.softplus(evidence)  # (B, 10) - (B, 1)


def with_not_digit_head(model: nn.Module, hidden: int) -> nn.Module:
    """``model`` (or each member of an :class:`Ensemble`) inside a :class:`NotDigitHead` of ``hidden``
    units, sharing the model's layers; the head is untrained."""
    if isinstance(model, Ensemble):
        return Ensemble([with_not_digit_head(member, hidden) for member in model.members])
    if isinstance(model, NotDigitHead):
        raise DigitrecError("the model already has a not-a-digit head")
    return NotDigitHead(model, hidden)  # type: ignore[arg-type]


def without_not_digit_head(model: nn.Module) -> nn.Module:
    """The classifier inside ``model``'s :class:`NotDigitHead` (each member's, for an
    :class:`Ensemble`), sharing its layers: ``model`` as it was before a head was added."""
    if isinstance(model, Ensemble):
        return Ensemble([without_not_digit_head(member) for member in model.members])
    if not isinstance(model, NotDigitHead):
        raise DigitrecError("the model has no not-a-digit head")
    return nn.Sequential(*cast(nn.Sequential, model.body), model.scores)


def create_ensemble(name: str, count: int, **cfg: Any) -> nn.Module:
    """``count`` models ``name`` (see :func:`create_model`) as one :class:`Ensemble`; ``count`` 1 is
    the plain model."""
    if count < 1:
        raise DigitrecError(f"an ensemble needs at least one member, got {count}")
    if count == 1:
        return create_model(name, **cfg)
    return Ensemble([create_model(name, **cfg) for _ in range(count)])


# Layers without weights, which act on every channel alike: an ensemble's fused network keeps them.
_SHARED_LAYERS = (nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def fuse_ensemble(model: nn.Module) -> nn.Module:
    """An inference copy of an :class:`Ensemble` of ``nn.Sequential`` members (convolutions, batch
    norms, pooling, activations, one flatten, one final linear layer, as ``cnn``) as one
    ``nn.Sequential`` that computes all members side by side and their mean in the last layer.

    Member k's channels are the k-th block of each layer's channels: the first convolution's
    filters are stacked, the later ones become grouped convolutions (``groups`` times the member
    count), batch norms stack their statistics, and the final linear layer takes all members'
    features with its weights divided by the member count and the mean of their biases, so it
    outputs the mean of their scores. The same scores to float rounding in one pass instead of
    one per member. Anything else (not an Ensemble, other layers) is returned as it is.
    """
    if not isinstance(model, Ensemble):
        return model
    members = [m for m in model.members if isinstance(m, nn.Sequential)]
    if len(members) != len(model.members):
        return model
    count = len(members)
    layers: list[nn.Module] = []
    first_conv = True
    for parts in zip(*members, strict=True):
        head = parts[0]
        if not all(type(part) is type(head) for part in parts):
            return model
        if isinstance(head, nn.Conv2d):
            convs: list[nn.Conv2d] = list(parts)
            groups = head.groups if first_conv else head.groups * count
            fused = nn.Conv2d(
                head.in_channels if first_conv else head.in_channels * count,
                head.out_channels * count,
                head.kernel_size,  # type: ignore[arg-type]
                stride=head.stride,  # type: ignore[arg-type]
                padding=head.padding,  # type: ignore[arg-type]
                dilation=head.dilation,  # type: ignore[arg-type]
                groups=groups,
                bias=head.bias is not None,
            )
            with torch.no_grad():
                fused.weight.copy_(torch.cat([c.weight for c in convs]))
                if fused.bias is not None:
                    fused.bias.copy_(torch.cat([c.bias for c in convs if c.bias is not None]))
            layers.append(fused)
            first_conv = False
        elif isinstance(head, nn.BatchNorm2d):
            norms: list[nn.BatchNorm2d] = list(parts)
            if not all(n.track_running_stats and n.affine for n in norms):
                return model
            stacked = nn.BatchNorm2d(head.num_features * count, eps=head.eps)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(stacked, name).copy_(torch.cat([getattr(n, name) for n in norms]))
            layers.append(stacked)
        elif isinstance(head, nn.Linear):
            if head is not members[0][-1]:
                return model  # a linear layer inside the members: not this simple shape
            linears: list[nn.Linear] = list(parts)
            mean = nn.Linear(head.in_features * count, head.out_features, bias=head.bias is not None)
            with torch.no_grad():
                mean.weight.copy_(torch.cat([lin.weight for lin in linears], dim=1) / count)
                if mean.bias is not None:
                    mean.bias.copy_(torch.stack([lin.bias for lin in linears]).mean(dim=0))
            layers.append(mean)
        elif isinstance(head, _SHARED_LAYERS):
            layers.append(copy.deepcopy(head))
        else:
            return model
    return nn.Sequential(*layers).to(next(model.parameters()).device).eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each batch norm that directly follows a convolution (inside
    an ``nn.Sequential``) folded into that convolution.

    In eval mode a batch norm is a fixed per-channel affine map, so it folds into the convolution's
    weights and bias: one operation fewer per block, the same scores to float rounding (the bundled
    cnn: one image through the Recognizer 0.64 -> 0.56 ms on 2 cores, measured interleaved).
    ``model`` itself is left as it is.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for block in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        emptied = []
        for index in range(len(block) - 1):
            conv, norm = block[index], block[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                block[index] = fuse_conv_bn_eval(conv, norm)
                emptied.append(index + 1)
        # Removed rather than left as identities: each layer called costs about 5-10 us for one image.
        for index in reversed(emptied):
            del block[index]
    return prefer_channels_last(folded)


def traced_for_inference(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A TorchScript copy of ``model`` for inference (eval mode, traced on ``example``, frozen), whose
    forward pass runs in C++ from start to end without Python's GIL; or ``model`` itself where
    tracing fails or the copy's scores differ from the model's on ``example`` and on one image.

    Why: an eager forward pass hands the GIL back and takes it again around each of its layers
    (about 20 for the bundled cnn). Called from a thread while another thread runs Python (a
    server's event loop), each take can wait the interpreter's switch interval (5 ms): with a
    busy Python thread beside it, a batch of 8 ran 7 times a second eager and 54 times traced
    (docs/speed.md, "Serving"). The traced copy computes the same scores (frozen, with batch norms
    already folded: bit for bit on the bundled model). ``example``: (B, 1, 28, 28) float32 on the
    model's device; B >= 2, as a batch of one could be traced into a fixed batch size.

    TorchScript is deprecated in favour of torch.compile and torch.export (which need a compiler,
    or an export per batch size); if a later torch removes it, this returns ``model``: slower
    beside a busy thread, never wrong.
    """
    model = model.eval()
    one = example[:1]
    try:
        with warnings.catch_warnings():
            # DeprecationWarning (TorchScript), TracerWarning (a model with Python-side logic):
            # either way the result is checked below.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        # Twice each, in inference mode as the Recognizer calls it: TorchScript's profiling
        # executor optimizes on the second call; a server's first requests should not pay for it.
        with torch.inference_mode():
            for batch in (example, example, one, one):
                same = torch.allclose(traced(batch), model(batch), rtol=1e-5, atol=1e-5)
                if not same:
                    return model
    except Exception:  # any failure to trace (an unsupported layer, no torch.jit): eager it is
        return model
    return cast(nn.Module, traced)
