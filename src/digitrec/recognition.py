"""Recognize handwritten digits in images: the :class:`Recognizer`.

>>> rec = Recognizer.default()                       # the bundled model
>>> rec.predict("seven.png").digit                   # doctest: +SKIP
7
>>> rec.predict("postcode.jpg", multi=True).number   # doctest: +SKIP
'75013'

A Recognizer wraps a *scorer*: a function from (N, 1, 28, 28) float32 in [0, 1] to
(N, 10) scores. :meth:`Recognizer.from_run` and :meth:`Recognizer.default` build a
PyTorch scorer; torch is imported only there, so another backend (ONNX Runtime) can
plug in through :meth:`Recognizer.from_scorer` without torch installed, as the bundled
model's shipped ONNX copy does (``Recognizer.default(backend="auto")``).

Images are brought into MNIST's form by :func:`digitrec.images.normalize_digit`
(one digit) or :func:`digitrec.images.segment_digits` (a row of digits).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import SEVERAL_DIGITS_BELOW, energy
from .errors import DigitrecError
from .fileio import sha256_hex
from .image_io import ImageError, load_image
from .images import SegmentGroup, normalize_digit, paste_centred, segment_digits, segment_groups
from .runs import CONFIG_FILE, MODEL_FILE, ONNX_FILE, default_model_dir

__all__ = [
    "ImageError",
    "Prediction",
    "Recognizer",
    "load_image",
    "normalize_digit",
    "segment_digits",
]

# (N, 1, 28, 28) float32 in [0, 1] -> (N, 10) scores (logits, or any monotone scores).
Scorer = Callable[[np.ndarray], np.ndarray]

NO_PROBABILITIES = (0.0,) * 10


@dataclass
class Prediction:
    """What the model read in one image.

    digit: 0-9, or None when no digit was found (blank image) or the confidence was
        below ``min_confidence``. In multi mode, the digit when exactly one was read.
    confidence: the probability of ``digit`` (before rejection); 0.0 when no digit was
        found. In multi mode, the product of the digits' confidences (the chance that
        the whole number is right, if errors are independent).
    probabilities: 10 floats, softmax of the model's scores. All zeros when there is no
        single digit to score (blank image; multi mode with other than one digit).
    input_image: the (28, 28) uint8 the model saw (None if no digit; in multi mode
        with several digits, see ``input_images``).
    number: multi mode only: the digits left to right, "?" for one below
        ``min_confidence``; None when no digit was found.
    digits: multi mode only: per digit {"digit", "confidence", "bbox": [x, y, w, h],
        "probabilities"}, left to right.
    input_images: multi mode only: each digit's (28, 28) uint8 input, left to right.
    rejected: why ``digit`` is None although an image was read: "blank" (no ink found),
        "not_a_digit" (the model spreads its belief over many digits: a letter, a scribble,
        a picture), "low_confidence" (below ``min_confidence``); None for an answer. In
        multi mode, "not_a_digit" or "low_confidence" when any piece was, and per piece in
        ``digits``.
    several_digits: single mode only: how many digits the image seems to hold when that is
        two or more (read it with multi mode); else None.
    """

    digit: int | None
    confidence: float
    probabilities: list[float]
    input_image: np.ndarray | None
    number: str | None = None
    digits: list[dict[str, Any]] | None = None
    input_images: list[np.ndarray] | None = field(default=None, repr=False)
    rejected: str | None = None
    several_digits: int | None = None

    @property
    def found(self) -> bool:
        """Whether any digit was found (even one rejected for low confidence)."""
        return self.input_image is not None or bool(self.input_images)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: digit, confidence, probabilities; number and digits in multi mode."""
        out: dict[str, Any] = {
            "digit": self.digit,
            "confidence": self.confidence,
            "probabilities": list(self.probabilities),
            "rejected": self.rejected,
        }
        if self.several_digits is not None:
            out["several_digits"] = self.several_digits
        if self.digits is not None:
            out["number"] = self.number
            out["digits"] = [dict(d) for d in self.digits]
        return out


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, 10) scores, in float64 for stable sums."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _check_confidence(min_confidence: float | None) -> None:
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise DigitrecError(f"min_confidence must be in [0, 1], got {min_confidence}")


def prepare(image: Any, *, multi: bool = False) -> np.ndarray | list[SegmentGroup] | None:
    """The normalization half of :meth:`Recognizer.predict_batch`, torch-free and picklable:
    one digit's (28, 28) uint8 input (None if no digit), or with ``multi`` every candidate
    reading of each group of ink. Raises ImageError for a bad image."""
    return segment_groups(image) if multi else normalize_digit(image)


def hint_several_digits(image: Any, prediction: Prediction) -> None:
    """Set ``prediction.several_digits`` when a single-mode answer is unsure (rejected, or below
    SEVERAL_DIGITS_BELOW) and its image seems to hold two or more digits: a row of digits squeezed
    into one 28x28 reads as nothing in particular. Only then, as segmenting costs about as much as
    normalizing. ``image`` is what was read (path, bytes, PIL image or array)."""
    unsure = prediction.rejected is not None or prediction.confidence < SEVERAL_DIGITS_BELOW
    if prediction.digits is None and prediction.found and unsure:
        count = len(segment_digits(image))
        if count >= 2:
            prediction.several_digits = count


# Images per forward pass at most. On a CPU the bundled cnn costs more per image in larger batches
# (one thread, ms per image: 0.56 at 16, 0.51 at 32, 0.59 at 64; traced 0.53, 0.52, 0.62): its
# activations outgrow the caches. predict scores chunks of 64 files, the server up to 32.
SCORE_BATCH = 32

# An input the model reads less surely than this is read three more times, drawn with a thinner
# and a thicker pen (:func:`pen_variants`) and narrower (:func:`narrower`), and its probabilities
# are the mean of the four readings. Chosen on optdigits-orig and USPS test (the shared sets of
# writers MNIST never saw; docs/handwriting.md, "The second look"): 5% of optdigits-orig's
# digits, 3.6% of USPS test's, 1.3% of MNIST test's.
SECOND_LOOK_BELOW = 0.9

# The narrower reading's width, a share of the ink's: scanners stretched a narrow digit to fill
# their box (USPS's, Semeion's), and some writers' 1s carry a long flag and their 4s an open
# top that make the digit wide; read narrower, such a digit looks like the one meant. Measured
# as a fourth reading of the unsure inputs (docs/handwriting.md, "The second look"), 0.5 / 0.6 /
# 0.7: mistakes on optdigits-orig 32 -> 24 / 27 / 29, USPS test 35 -> 34 / 33 / 34, MNIST test
# 30 -> 36 / 33 / 34; on a second model of the same recipe (seed 43) at 0.6: 36 -> 30, 39 -> 35,
# 38 -> 39.
NARROWER = 0.6

# In a row read with ``multi=True``, a digit-sized piece of ink among digits is a digit far more
# often than a picture given alone is, so it is called "not a digit" only below the model's
# threshold lowered by ln(ROW_DIGIT_ODDS) (read as a log-odds scale: a prior of 10 to 1 for digits).
# Measured (README, "Other writers' handwriting"): 4-digit numbers as answered, USPS test 89.3% ->
# 90.8% and optdigits-orig 93.7% -> 94.7%; the rejection benchmark's handwriting-like letters, as
# single pictures at that threshold, flagged 88.5% -> 82.0% (every non-digit: 96.8% -> 93.9%).
# A piece read alone (multi on one digit) keeps the model's own threshold.
ROW_DIGIT_ODDS = 10.0


def pen_variants(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 inputs drawn with a thinner and a thicker pen: each pixel the min
    (the max) of itself and its neighbours above, to the left and above-left (a 2x2 erosion,
    a 2x2 dilation; OpenCV's, with its default anchor and borders), for all N at once."""

    def corners(fill: int) -> list[np.ndarray]:
        padded = np.pad(inputs, ((0, 0), (1, 0), (1, 0)), constant_values=fill)  # (N, 29, 29)
        return [padded[:, 1:, 1:], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, :-1, :-1]]

    low = corners(255)  # outside the image: no effect on a minimum
    high = corners(0)  # ... nor on a maximum
    thinner = np.minimum(np.minimum(low[0], low[1]), np.minimum(low[2], low[3]))
    thicker = np.maximum(np.maximum(high[0], high[1]), np.maximum(high[2], high[3]))
    return thinner, thicker


def narrower(inputs: np.ndarray, share: float = NARROWER) -> np.ndarray:
    """(N, 28, 28) uint8 inputs with their ink squeezed to ``share`` of its width (the height
    kept; OpenCV's area resampling) and put back with its centre of mass at the centre, as
    normalization places a digit (:func:`~digitrec.images.paste_centred`). An input with no ink
    stays blank. A loop over N: it is run for the few unsure inputs of a batch only."""
    import cv2

    out = np.zeros_like(inputs)
    for index, pixels in enumerate(inputs):
        rows = np.flatnonzero(pixels.any(axis=1))
        cols = np.flatnonzero(pixels.any(axis=0))
        if rows.size == 0:
            continue
        ink = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
        width = max(1, round(ink.shape[1] * share))
        squeezed = cv2.resize(ink, (width, ink.shape[0]), interpolation=cv2.INTER_AREA)
        if squeezed.sum() > 0:
            out[index] = np.clip(paste_centred(squeezed) + 0.5, 0, 255).astype(np.uint8)
    return out


# An ensemble's members side by side (grouped convolutions) beat them one by one up to about
# this many images per call, and lose beyond (benchmarks/ensemble_cost.py; the crossover
# measured between 4 and 8 images, on one thread and on two).
SIDE_BY_SIDE_UP_TO = 4


def _torch_scorer(model: Any, device: Any, side_by_side: Any = None) -> Scorer:
    """Scores of ``model``; ``side_by_side``, if given, the same scores computed one way faster
    for small batches (an ensemble's fused network), used up to SIDE_BY_SIDE_UP_TO images."""
    import torch

    def score(batch: np.ndarray) -> np.ndarray:
        # inference_mode: no autograd state; forward in eval mode mutates nothing, so
        # concurrent calls from several threads are safe.
        chosen = model if side_by_side is None or len(batch) > SIDE_BY_SIDE_UP_TO else side_by_side
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            return chosen(x).float().cpu().numpy()

    return score


def _shipped_onnx(folder: Path, threads: int | None) -> Recognizer | None:
    """:meth:`Recognizer.bundled_onnx` for the bundled model's ``folder`` (None also for a copy
    onnxruntime cannot load)."""
    path = folder / ONNX_FILE
    if not path.is_file():
        return None
    from .onnx_runtime import OnnxScorer

    try:
        scorer = OnnxScorer(path, threads)
    except DigitrecError:  # onnxruntime (an optional extra) missing, or a damaged copy
        return None
    stored = scorer.info
    if stored.get("weights_sha256") != sha256_hex((folder / MODEL_FILE).read_bytes()):
        return None
    info = _model_info(
        stored.get("config", {}),
        parameters=stored.get("parameters"),
        source="bundled",
        backend="onnx",
        device="cpu",
        val_accuracy=stored.get("val_accuracy"),
        temperature=stored.get("temperature", 1.0),
        not_digit_energy_below=stored.get("not_digit_energy_below"),
    )
    return Recognizer.from_scorer(scorer, info)


def _model_info(
    config: dict[str, Any],
    *,
    parameters: int | None,
    source: str,
    backend: str,
    device: str,
    val_accuracy: float | None,
    temperature: float,
    not_digit_energy_below: float | None,
) -> dict[str, Any]:
    """What :meth:`Recognizer.info` says of a model, from its training configuration (a
    TrainConfig's dict) and the figures read beside it; the same for every backend."""
    info: dict[str, Any] = {
        "name": config.get("model"),
        "parameters": parameters,  # an ensemble's members all counted
        "source": source,
        "backend": backend,
        "device": device,
        "recipe": config.get("recipe"),
        "dataset": config.get("dataset"),
        "model_args": dict(config.get("model_args", {})),
        "temperature": temperature,
    }
    if config.get("ensemble", 1) > 1:
        info["ensemble"] = config["ensemble"]  # members averaged
    if val_accuracy is not None:
        info["val_accuracy"] = val_accuracy
    if not_digit_energy_below is not None:
        info["not_digit_energy_below"] = not_digit_energy_below
    return info


class Recognizer:
    """A model plus MNIST-style normalization: images in, :class:`Prediction` out.

    Thread-safe: predictions share no mutable state.
    """

    def __init__(
        self,
        scorer: Scorer,
        info: dict[str, Any],
        not_digit_energy_below: float | None = None,
        *,
        second_look: bool = True,
    ) -> None:
        # The model's own threshold for "not a digit" (calibration.py); None = never say so.
        self._not_digit_energy_below = not_digit_energy_below
        self._scorer = scorer
        self._info = dict(info)
        # Read an unsure input again in a thinner and a thicker pen and narrower (SECOND_LOOK_BELOW).
        # Set it before predicting (``rec.second_look = False``); predictions never change it.
        self.second_look = second_look

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_scorer(cls, scorer: Scorer, info: dict[str, Any]) -> Recognizer:
        """Any backend: ``scorer`` maps (N, 1, 28, 28) float32 in [0, 1] to (N, 10) scores.

        ``info["not_digit_energy_below"]``, if given, is the model's not-a-digit threshold
        (calibration.py)."""
        below = info.get("not_digit_energy_below")
        return cls(scorer, info, None if below is None else float(below))

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike[str],
        device: str = "cpu",
        *,
        source: str | None = None,
        concurrent: bool = False,
    ) -> Recognizer:
        """The model of a run directory (config.json + model.safetensors), on ``device``.

        ``concurrent``: the model will be called while other Python threads run (a server's
        event loop beside its inference threads). On the CPU it is then traced with TorchScript
        (:func:`~digitrec.models.traced_for_inference`), whose forward pass never waits for the
        GIL: the same scores, about 0.1 s more to load."""
        from .checkpoints import last_metrics, load_model, read_calibration
        from .distributed import resolve_device
        from .models import count_parameters, fold_batch_norms, fuse_ensemble, traced_for_inference

        resolved = resolve_device(device)
        model, config = load_model(run_dir, resolved)
        # Scores the same, faster; info counts the trained model. An ensemble's members are scored
        # side by side in one network for a few images, one by one for more.
        scoring_model = fold_batch_norms(model)
        fused = fuse_ensemble(model)
        side_by_side = fold_batch_norms(fused) if fused is not model else None
        if concurrent and resolved.type == "cpu":
            import torch

            # (4, 1, 28, 28) float32 in [0, 1]
            example = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            scoring_model = traced_for_inference(scoring_model, example)
            if side_by_side is not None:
                side_by_side = traced_for_inference(side_by_side, example)
        last = last_metrics(run_dir)
        calibration = read_calibration(run_dir)
        info = _model_info(
            config.to_dict(),
            parameters=count_parameters(model),
            source=source or str(run_dir),
            backend="torch",
            device=str(resolved),
            val_accuracy=None if last is None else last["val_accuracy"],
            temperature=calibration.get("temperature", 1.0),
            not_digit_energy_below=calibration.get("not_digit_energy_below"),
        )
        return cls.from_scorer(_torch_scorer(scoring_model, resolved, side_by_side), info)

    @classmethod
    def default(
        cls,
        device: str = "cpu",
        *,
        concurrent: bool = False,
        backend: str = "torch",
        threads: int | None = None,
    ) -> Recognizer:
        """The model bundled with digitrec (``digitrec/_data/default_model``); ``concurrent`` as
        for :meth:`from_run`.

        ``backend="auto"``: on the CPU, score with the ONNX copy shipped beside the weights
        (``model.onnx``) on onnxruntime when it is installed and the copy was exported from
        these very weights: the same scores to float rounding, without importing torch
        (``digitrec predict`` reads one image in 0.26-0.39 s instead of 2.7-3.1, and each image
        costs less); otherwise PyTorch, as ``"torch"``. ``threads``: onnxruntime's intra-op
        threads (default: one per core)."""
        if backend not in ("torch", "auto"):
            raise DigitrecError(f"unknown backend {backend!r}; expected 'torch' or 'auto'")
        folder = default_model_dir()
        if not (folder / CONFIG_FILE).is_file() or not (folder / MODEL_FILE).is_file():
            raise DigitrecError(
                f"the bundled default model is missing ({folder} has no {CONFIG_FILE} and "
                f"{MODEL_FILE}); reinstall digitrec, or pass a run directory (--run DIR)"
            )
        if backend == "auto" and device == "cpu":
            shipped = cls.bundled_onnx(threads)
            if shipped is not None:
                return shipped
        return cls.from_run(folder, device, source="bundled", concurrent=concurrent)

    @classmethod
    def bundled_onnx(cls, threads: int | None = None) -> Recognizer | None:
        """The bundled model on onnxruntime from its shipped ONNX copy, or None where there is
        no copy, onnxruntime is not installed, or the copy was exported from other weights than
        the bundled ones (a model re-bundled without exporting it again)."""
        return _shipped_onnx(default_model_dir(), threads)

    def info(self) -> dict[str, Any]:
        """Model name, parameters, source (run dir or "bundled"), backend, second_look, ..."""
        return {**self._info, "second_look": self.second_look}

    # ----------------------------------------------------------------- scoring

    def _probabilities(self, inputs: list[np.ndarray]) -> np.ndarray:
        """(N, 11) for (28, 28) uint8 inputs, in forward passes of SCORE_BATCH: each row the
        probabilities of the digits 0-9, then the energy of the scores (calibration.py), which
        says "not a digit". With ``second_look``, an input whose best probability is below
        SECOND_LOOK_BELOW gets the mean probabilities of itself, its :func:`pen_variants` and
        its :func:`narrower` reading (one more forward pass for all such inputs); its energy
        stays its own."""
        if not inputs:
            return np.zeros((0, 11))
        stacked = np.stack(inputs)  # (N, 28, 28) uint8
        scores = self._scores(stacked)
        probs = softmax(scores)
        if self.second_look:
            unsure = np.flatnonzero(probs.max(axis=1) < SECOND_LOOK_BELOW)
            if unsure.size:
                thinner, thicker = pen_variants(stacked[unsure])
                again = softmax(self._scores(np.concatenate([thinner, thicker, narrower(stacked[unsure])])))
                looks = again.reshape(3, unsure.size, 10)  # thinner, thicker, narrower
                probs[unsure] = (probs[unsure] + looks.sum(axis=0)) / 4.0
        return np.concatenate([probs, energy(scores)[:, None]], axis=1)

    def _scores(self, stacked: np.ndarray) -> np.ndarray:
        """(N, 10) scores of (N, 28, 28) uint8 inputs, in forward passes of SCORE_BATCH."""
        batch = stacked.astype(np.float32)[:, None] / 255.0  # (N, 1, 28, 28) in [0, 1]
        parts = [
            self._scorer(batch[start : start + SCORE_BATCH]) for start in range(0, len(batch), SCORE_BATCH)
        ]
        scores = np.concatenate([np.asarray(part) for part in parts])
        if scores.shape != (len(stacked), 10):
            raise DigitrecError(
                f"the model returned scores of shape {scores.shape}, expected ({len(stacked)}, 10)"
            )
        return scores

    def _not_digit_below(self, in_a_row: bool) -> float | None:
        """The energy under which an input is "not a digit" (None: never), lowered by
        ln(ROW_DIGIT_ODDS) for a piece in a row of several."""
        below = self._not_digit_energy_below
        if below is not None and in_a_row:
            below -= math.log(ROW_DIGIT_ODDS)
        return below

    def _single(
        self,
        pixels: np.ndarray | None,
        row: np.ndarray | None,
        min_confidence: float | None,
        in_a_row: bool = False,
    ) -> Prediction:
        if pixels is None or row is None:
            return Prediction(None, 0.0, list(NO_PROBABILITIES), None, rejected="blank")
        probs, evidence = row[:10], float(row[10])  # a row of _probabilities
        best = int(probs.argmax())
        confidence = float(probs[best])
        rejected = None
        below = self._not_digit_below(in_a_row)
        if below is not None and evidence < below:
            rejected = "not_a_digit"
        elif min_confidence is not None and confidence < min_confidence:
            rejected = "low_confidence"
        return Prediction(
            None if rejected else best, confidence, [float(p) for p in probs], pixels, rejected=rejected
        )

    def _multi(
        self,
        segments: list[tuple[np.ndarray, tuple[int, int, int, int]]],
        probs: np.ndarray,
        min_confidence: float | None,
    ) -> Prediction:
        if not segments:
            return Prediction(
                None,
                0.0,
                list(NO_PROBABILITIES),
                None,
                number=None,
                digits=[],
                input_images=[],
                rejected="blank",
            )
        in_a_row = len(segments) > 1
        reads = [
            self._single(pixels, row, min_confidence, in_a_row)
            for (pixels, _), row in zip(segments, probs, strict=True)
        ]
        digits: list[dict[str, Any]] = [
            {
                "digit": read.digit,
                "confidence": read.confidence,
                "bbox": list(box),
                "probabilities": read.probabilities,
                "rejected": read.rejected,
            }
            for read, (_, box) in zip(reads, segments, strict=True)
        ]
        # A piece that is not a digit, or one read below min_confidence, is a "?" in the number.
        text = "".join("?" if read.digit is None else str(read.digit) for read in reads)
        inputs = [pixels for pixels, _ in segments]
        total = float(np.prod([read.confidence for read in reads]))
        reasons = {read.rejected for read in reads}
        rejected = next((r for r in ("not_a_digit", "low_confidence") if r in reasons), None)
        if len(reads) == 1:
            return Prediction(
                reads[0].digit, total, reads[0].probabilities, inputs[0], text, digits, inputs, rejected
            )
        return Prediction(None, total, list(NO_PROBABILITIES), None, text, digits, inputs, rejected)

    # ----------------------------------------------------------------- public

    def predict(self, image: Any, *, multi: bool = False, min_confidence: float | None = None) -> Prediction:
        """Read one image (path, bytes, PIL image or array). Raises ImageError for a bad image."""
        return self.predict_batch([image], multi=multi, min_confidence=min_confidence)[0]

    def predict_batch(
        self, images: Sequence[Any], *, multi: bool = False, min_confidence: float | None = None
    ) -> list[Prediction]:
        """Read several images with one forward pass; raises ImageError at the first bad image."""
        _check_confidence(min_confidence)
        # prepare decodes (a large JPEG at reduced scale: it is averaged down anyway).
        predictions = self.predict_prepared(
            [prepare(image, multi=multi) for image in images], min_confidence=min_confidence
        )
        if not multi:
            for image, prediction in zip(images, predictions, strict=True):
                hint_several_digits(image, prediction)
        return predictions

    def predict_prepared(
        self, prepared: Sequence[Any], *, min_confidence: float | None = None
    ) -> list[Prediction]:
        """Read images already brought into MNIST's form by :func:`prepare` (all with the
        same ``multi``), with one forward pass: the model's half of :meth:`predict_batch`, for
        callers that normalize elsewhere (``digitrec predict --jobs``: in worker processes)."""
        _check_confidence(min_confidence)
        if any(isinstance(item, list) for item in prepared):
            return self._predict_rows(prepared, min_confidence)
        inputs: list[np.ndarray | None] = list(prepared)
        found = [pixels for pixels in inputs if pixels is not None]
        rows = iter(self._probabilities(found))
        predictions = [
            self._single(pixels, next(rows) if pixels is not None else None, min_confidence)
            for pixels in inputs
        ]
        return predictions

    def _predict_rows(
        self, rows: Sequence[list[SegmentGroup]], min_confidence: float | None
    ) -> list[Prediction]:
        """Multi mode: every candidate reading of every group, scored in one forward pass.

        A group of ink wider than a digit may be one wide digit or several touching ones,
        and two overlapping digit-sized pieces one digit or two: the reading with the fewest
        pieces the model calls not a digit (at the threshold of a row) wins, then the one
        whose digits it reads most confidently (highest mean log probability), ties going
        to the geometric guess.
        """
        flat = [pixels for groups in rows for g in groups for option in g.options for pixels, _ in option]
        confidence = iter(self._probabilities(flat))
        row_below = self._not_digit_below(in_a_row=True)
        results = []
        for groups in rows:
            segments: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
            chosen_probs: list[np.ndarray] = []
            for group in groups:
                scored = []
                for index, option in enumerate(group.options):
                    option_probs = [next(confidence) for _ in option]
                    # Two touching digits read as one are often a confident guess at a shape the
                    # not-a-digit energy refuses (then "?" in the number), while cut apart each is
                    # a digit. Touching Semeion-style scans, 4-digit numbers as answered (400):
                    # optdigits-orig 91.5% -> 92.5%, USPS test 80.2% -> 81.5%; no row lost one.
                    refused = 0 if row_below is None else sum(p[10] < row_below for p in option_probs)
                    score = float(np.mean([np.log(max(p[:10].max(), 1e-12)) for p in option_probs]))
                    # Ties go to the geometric guess.
                    scored.append((-refused, score, index == group.preferred, index, option_probs))
                *_, best, best_probs = max(scored, key=lambda item: (item[0], item[1], item[2]))
                segments += group.options[best]
                chosen_probs += best_probs
            results.append(self._multi(segments, np.array(chosen_probs).reshape(-1, 11), min_confidence))
        return results

    def predict_normalized(
        self, inputs: Sequence[np.ndarray | None], min_confidences: Sequence[float | None]
    ) -> list[Prediction]:
        """Score inputs already in MNIST's form ((28, 28) uint8, as :func:`normalize_digit`
        returns; None: no digit found) in one forward pass, each with its own min_confidence.
        ``digitrec serve`` batches the inputs of concurrent requests through this."""
        if len(min_confidences) != len(inputs):
            raise DigitrecError(f"{len(inputs)} inputs but {len(min_confidences)} min_confidences")
        for threshold in min_confidences:
            _check_confidence(threshold)
        found = [pixels for pixels in inputs if pixels is not None]
        rows = iter(self._probabilities(found))
        return [
            self._single(pixels, next(rows) if pixels is not None else None, threshold)
            for pixels, threshold in zip(inputs, min_confidences, strict=True)
        ]

    def predict_pixels(self, pixels: Any, *, min_confidence: float | None = None) -> Prediction:
        """Read a (28, 28) image already in MNIST's form (white ink on black, 0-255): no
        normalization. An all-black image is "no digit found"."""
        _check_confidence(min_confidence)
        array = np.asarray(pixels)
        if array.shape != (28, 28):
            raise ImageError(f"pixels: expected a (28, 28) array, got shape {array.shape}")
        if array.dtype == np.uint8:  # already MNIST's type: nothing to check or round
            grid = array.copy()
        else:
            if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                raise ImageError(f"pixels: expected numbers, got {array.dtype}")
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
                raise ImageError("pixels: values must be in 0..255")
            if np.issubdtype(array.dtype, np.floating) and 0 < array.max() <= 1:
                # A model's input ((B, 1, 28, 28) float in [0, 1]) passed as it is: read as 0..255
                # it would be near black, a confident answer about nothing.
                raise ImageError("pixels: floats in [0, 1]; MNIST's form is 0..255 (multiply by 255)")
            grid = np.rint(array).astype(np.uint8)
        if grid.max() == 0:
            return self._single(None, None, min_confidence)
        return self._single(grid, self._probabilities([grid])[0], min_confidence)
