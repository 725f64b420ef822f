"""The Recognizer, on real MNIST digits rendered as images (the normalization alone: test_images.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from digitrec.errors import DigitrecError
from digitrec.images import normalize_digit, segment_digits
from digitrec.recognition import Prediction, Recognizer, softmax
from digitrec.runs import default_model_dir

from .recognition_support import encode, ink_on_paper, similarity


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """The bundled default model, read as a run directory."""
    return default_model_dir()


@pytest.fixture(scope="module")
def recognizer(run_dir: Path) -> Recognizer:
    return Recognizer.from_run(run_dir)


# --------------------------------------------------------------------------- the Recognizer


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.full((100, 100), 255, np.uint8),  # white paper
        lambda: np.zeros((100, 100), np.uint8),  # black
        lambda: np.full((64, 200), 128, np.uint8),  # flat gray
        lambda: np.clip(np.random.default_rng(0).normal(200, 12, (300, 300)), 0, 255).astype(np.uint8),
        lambda: np.pad(np.zeros((3, 3), np.uint8), 300, constant_values=255),  # one speck
    ],
    ids=["white", "black", "gray", "paper-texture", "one-speck"],
)
def test_blank_and_near_blank_images_have_no_digit(make, recognizer):
    image = make()
    assert normalize_digit(image) is None
    prediction = recognizer.predict(image)
    assert prediction.digit is None and prediction.confidence == 0.0 and not prediction.found
    assert prediction.input_image is None and prediction.rejected == "blank"
    assert segment_digits(image) == []


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "JPEG"),
        ("RGB", "BMP"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
        ("L", "TIFF"),
        ("CMYK", "TIFF"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "WEBP"),
        ("P-transparent", "PNG"),
    ],
)
def test_every_format_and_mode_reads_the_same(mode, fmt, digits, recognizer):
    digit = digits[0][1]
    page = ink_on_paper(digit, height=120, canvas=160)
    reference = normalize_digit(page)
    base = Image.fromarray(page)
    if mode == "I;16":
        image = Image.fromarray(page.astype(np.uint16) * 257)
    elif mode in ("LA", "RGBA"):
        # Ink as opacity on a transparent canvas (what a drawing app exports).
        image = Image.new("RGBA", base.size, (20, 20, 20, 0))
        image.putalpha(Image.fromarray(255 - page))
        image = image.convert("LA") if mode == "LA" else image
    elif mode == "P-transparent":
        image = base.convert("P")  # a gray palette: index = gray level; white paper transparent
        data = encode(image, fmt, transparency=255)
        assert Image.open(io.BytesIO(data)).info.get("transparency") == 255
        image = Image.open(io.BytesIO(data))
    else:
        image = base.convert(mode)
    data = encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = normalize_digit(data)
    assert out is not None and similarity(reference, out) > 0.9, (mode, fmt)
    assert recognizer.predict(data).digit == recognizer.predict(page).digit


def test_predict_reads_rendered_digits(digits, recognizer):
    images, labels = digits
    pages = [ink_on_paper(d, height=100 + 4 * k, canvas=300) for k, d in enumerate(images)]
    predictions = recognizer.predict_batch(pages)
    agree = np.mean([p.digit == label for p, label in zip(predictions, labels, strict=True)])
    raw = np.mean(
        [recognizer.predict_pixels(d).digit == label for d, label in zip(images, labels, strict=True)]
    )
    assert agree >= raw - 0.05  # normalization loses (almost) nothing against the model's own accuracy
    for prediction in predictions:
        assert len(prediction.probabilities) == 10
        assert abs(sum(prediction.probabilities) - 1.0) < 1e-6
        assert prediction.confidence == max(prediction.probabilities)
        assert prediction.input_image.shape == (28, 28) and prediction.input_image.dtype == np.uint8


def test_predict_batch_matches_predict_one_by_one(digits, recognizer, tmp_path):
    images, _ = digits
    page = ink_on_paper(images[4])
    path = tmp_path / "digit.png"
    Image.fromarray(page).save(path)
    sources = [page, Image.fromarray(page), path, str(path), path.read_bytes(), images[9]]
    batch = recognizer.predict_batch(sources)
    for source, together in zip(sources, batch, strict=True):
        alone = recognizer.predict(source)
        assert alone.digit == together.digit
        np.testing.assert_allclose(alone.probabilities, together.probabilities, atol=1e-5)
    assert len({json.dumps(p.to_dict()["digit"]) for p in batch[:5]}) == 1


def test_predict_pixels_skips_normalization(digits, recognizer, run_dir):
    import torch

    from digitrec.checkpoints import load_model

    images, _ = digits
    model, _ = load_model(run_dir)
    with torch.no_grad():
        scores = model(torch.from_numpy(images[:5]).float().unsqueeze(1) / 255).numpy()
    for k in range(5):
        prediction = recognizer.predict_pixels(images[k])
        np.testing.assert_allclose(prediction.probabilities, softmax(scores[k : k + 1])[0], atol=1e-6)
        np.testing.assert_array_equal(prediction.input_image, images[k])
    assert recognizer.predict_pixels(np.zeros((28, 28))).digit is None
    with pytest.raises(DigitrecError, match="28, 28"):
        recognizer.predict_pixels(np.zeros((20, 20)))
    with pytest.raises(DigitrecError, match=r"0\.\.255"):
        recognizer.predict_pixels(np.full((28, 28), 300))
    # A model's input in [0, 1] is refused in one line, not read as a near-black grid; the same
    # floats in 0..255 are the digit.
    with pytest.raises(DigitrecError, match=r"pixels: floats in \[0, 1\]; MNIST's form is 0\.\.255"):
        recognizer.predict_pixels(images[0] / 255.0)
    assert (
        recognizer.predict_pixels(images[0].astype(np.float32)).digit
        == recognizer.predict_pixels(images[0]).digit
    )


def test_predict_normalized_scores_a_batch_with_a_threshold_each(digits, recognizer):
    # What digitrec serve's batches go through: inputs of several requests, one forward pass.
    images, _ = digits
    inputs = [images[0], None, images[1], images[2]]
    thresholds = [None, None, 1.0, 0.0]
    batch = recognizer.predict_normalized(inputs, thresholds)
    assert batch[1].digit is None and batch[1].confidence == 0.0 and not batch[1].found
    for got, pixels, threshold in zip(batch, inputs, thresholds, strict=True):
        if pixels is not None:
            alone = recognizer.predict_pixels(pixels, min_confidence=threshold)
            assert got.digit == alone.digit
            np.testing.assert_allclose(got.probabilities, alone.probabilities, atol=1e-6)
    assert batch[2].found and (batch[2].digit is None or batch[2].confidence == 1.0)  # min_confidence 1.0
    with pytest.raises(DigitrecError, match="min_confidences"):
        recognizer.predict_normalized(inputs, thresholds[:2])


def test_min_confidence_reports_unknown_but_keeps_probabilities(digits, recognizer):
    page = ink_on_paper(digits[0][0])
    plain = recognizer.predict(page)
    strict = recognizer.predict(page, min_confidence=min(1.0, plain.confidence + 1e-9))
    assert plain.digit is not None and strict.digit is None
    assert strict.probabilities == plain.probabilities and strict.found
    assert strict.rejected == "low_confidence" and plain.rejected is None
    assert recognizer.predict(page, min_confidence=0.0).digit == plain.digit
    with pytest.raises(DigitrecError, match="min_confidence"):
        recognizer.predict(page, min_confidence=1.5)


def test_prediction_to_dict_is_json(digits, recognizer):
    out = recognizer.predict(ink_on_paper(digits[0][0])).to_dict()
    assert set(out) == {"digit", "confidence", "probabilities", "rejected"} and out["rejected"] is None
    assert json.loads(json.dumps(out)) == out
    multi = recognizer.predict(ink_on_paper(digits[0][0]), multi=True).to_dict()
    assert set(multi) == {"digit", "confidence", "probabilities", "rejected", "number", "digits"}
    assert set(multi["digits"][0]) == {"digit", "confidence", "bbox", "probabilities", "rejected"}
    assert json.loads(json.dumps(multi)) == multi
    assert Prediction(None, 0.0, [0.0] * 10, None).to_dict()["digit"] is None


def test_info_describes_the_model(recognizer, run_dir):
    info = recognizer.info()
    assert info["parameters"] > 1000 and isinstance(info["name"], str)
    assert info["source"] == str(run_dir) and info["backend"] == "torch"
    info["name"] = "changed"
    assert recognizer.info()["name"] != "changed"  # a copy


def test_concurrent_predictions_agree_with_sequential(digits, recognizer):
    images, _ = digits
    pages = [ink_on_paper(d, height=90, canvas=120) for d in images[:16]]
    sequential = [recognizer.predict(p).probabilities for p in pages]
    barrier = threading.Barrier(4)

    def work(k: int) -> list[float]:
        if k < 4:
            barrier.wait()  # start the first four together
        return recognizer.predict(pages[k]).probabilities

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(work, range(len(pages))))
    np.testing.assert_allclose(np.array(concurrent), np.array(sequential), atol=1e-6)


def test_a_recognizer_for_concurrent_calls_reads_as_the_plain_one(mnist, recognizer, run_dir):
    """concurrent=True (the server's) scores a traced copy of the model: the same probabilities,
    from a thread pool too."""
    import torch

    traced = Recognizer.from_run(run_dir, concurrent=True)
    assert any(isinstance(cell.cell_contents, torch.jit.ScriptModule) for cell in traced._scorer.__closure__)
    inputs = list(mnist.test_images[:300].numpy())  # (28, 28) uint8 each
    expected = recognizer.predict_normalized(inputs, [None] * len(inputs))
    with ThreadPoolExecutor(max_workers=3) as pool:
        chunks = pool.map(
            lambda k: traced.predict_normalized(inputs[k : k + 7], [None] * 7), range(0, 294, 7)
        )
    got = [p for chunk in chunks for p in chunk]
    assert [p.digit for p in got] == [p.digit for p in expected[:294]]
    np.testing.assert_allclose(
        [p.probabilities for p in got], [p.probabilities for p in expected[:294]], atol=1e-6
    )
    assert traced.info() == recognizer.info()


def test_default_is_the_bundled_model():
    info = Recognizer.default().info()
    assert info["source"] == "bundled" and info["val_accuracy"] >= 0.99


def test_the_shipped_onnx_copy_is_the_bundled_model(run_dir, recognizer, mnist):
    """backend="auto" scores the bundled model with its shipped ONNX copy: exported from these very
    weights (a re-bundled model fails here until `digitrec export` is run on it again), the same
    info but the backend, the same digits and probabilities to float rounding."""
    pytest.importorskip("onnxruntime")
    from digitrec.fileio import sha256_hex
    from digitrec.onnx_runtime import OnnxScorer

    stored = OnnxScorer(run_dir / "model.onnx").info
    assert stored["weights_sha256"] == sha256_hex((run_dir / "model.safetensors").read_bytes())
    fast = Recognizer.default(backend="auto")
    assert fast.info()["backend"] == "onnx"
    assert {**fast.info(), "backend": "torch"} == Recognizer.default().info()
    inputs = list(mnist.test_images[:500].numpy())  # (28, 28) uint8 each
    via_onnx = fast.predict_normalized(inputs, [None] * 500)
    via_torch = recognizer.predict_normalized(inputs, [None] * 500)
    assert [p.digit for p in via_onnx] == [p.digit for p in via_torch]
    assert [p.rejected for p in via_onnx] == [p.rejected for p in via_torch]
    np.testing.assert_allclose(
        [p.probabilities for p in via_onnx], [p.probabilities for p in via_torch], atol=1e-5
    )
    # One session shared by the server's inference threads (--batch-window 0): the same answers.
    with ThreadPoolExecutor(max_workers=3) as pool:
        chunks = pool.map(lambda k: fast.predict_normalized(inputs[k : k + 5], [None] * 5), range(0, 500, 5))
    np.testing.assert_allclose(
        [p.probabilities for chunk in chunks for p in chunk], [p.probabilities for p in via_onnx], atol=1e-6
    )


def _bundled_copy(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import shutil

    import digitrec.recognition as recognition

    shutil.copytree(default_model_dir(), folder)
    monkeypatch.setattr(recognition, "default_model_dir", lambda: folder)
    return folder


def test_a_stale_or_absent_onnx_copy_is_not_used(tmp_path, monkeypatch):
    """An ONNX copy exported from other weights, a damaged or missing copy: PyTorch scores."""
    onnx = pytest.importorskip("onnx")
    folder = _bundled_copy(tmp_path / "bundled", monkeypatch)
    assert Recognizer.default(backend="auto").info()["backend"] == "onnx"  # the copy as shipped
    model = onnx.load(str(folder / "model.onnx"))
    for entry in model.metadata_props:
        if entry.key == "weights_sha256":
            entry.value = "0" * 64  # exported from other weights
    onnx.save(model, str(folder / "model.onnx"))
    assert Recognizer.default(backend="auto").info()["backend"] == "torch"
    (folder / "model.onnx").write_bytes(b"\x08\x07 damaged")  # a copy onnxruntime cannot load
    assert Recognizer.default(backend="auto").info()["backend"] == "torch"
    (folder / "model.onnx").unlink()
    assert Recognizer.default(backend="auto").info()["backend"] == "torch"
    assert Recognizer.default().info()["backend"] == "torch"  # "torch" is the default backend


def test_without_onnxruntime_auto_is_torch(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    assert Recognizer.default(backend="auto").info()["backend"] == "torch"
    with pytest.raises(DigitrecError, match="unknown backend 'onnx'"):
        Recognizer.default(backend="onnx")


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    import digitrec.recognition as recognition

    monkeypatch.setattr(recognition, "default_model_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(DigitrecError, match="bundled default model is missing"):
        Recognizer.default()


def test_many_inputs_are_scored_in_batches_of_at_most_score_batch(mnist, recognizer):
    """70 inputs: three forward passes (32, 32, 6), the rows in input order, the same as scored
    one by one (a batch of 64 costs more per image than two of 32 on a CPU)."""
    from digitrec.recognition import SCORE_BATCH

    inputs = list(mnist.test_images[:70].numpy())  # (28, 28) uint8 each
    sizes = []

    def recording(batch):
        sizes.append(len(batch))
        return recognizer._scorer(batch)

    counting = Recognizer.from_scorer(recording, recognizer.info())
    together = counting.predict_normalized(inputs, [None] * len(inputs))
    assert sizes == [SCORE_BATCH, SCORE_BATCH, 70 - 2 * SCORE_BATCH] and SCORE_BATCH == 32
    alone = [recognizer.predict_normalized([one], [None])[0] for one in inputs]
    np.testing.assert_allclose(
        [p.probabilities for p in together], [p.probabilities for p in alone], atol=1e-6
    )


def test_pen_variants_are_opencvs_2x2_erosion_and_dilation():
    import cv2

    from digitrec.recognition import pen_variants

    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    inputs[:5] = 0
    inputs[:5, 10:18, 12:15] = 255  # a bar: a stroke grows and shrinks by one pixel
    thinner, thicker = pen_variants(inputs)
    kernel = np.ones((2, 2), np.uint8)
    np.testing.assert_array_equal(thinner, [cv2.erode(one, kernel) for one in inputs])
    np.testing.assert_array_equal(thicker, [cv2.dilate(one, kernel) for one in inputs])
    assert (thicker[0] > 0).sum() == 9 * 4 and (thinner[0] > 0).sum() == 7 * 2


def _ink_scorer(calls: list[int]):
    """A stand-in model whose scores follow the amount of ink: digit 1 the more sure the more
    ink, so a faint input is unsure and its pen variants read differently."""

    def score(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        ink = batch.reshape(len(batch), -1).mean(axis=1)  # (N,) in [0, 1]
        scores = np.zeros((len(batch), 10))
        scores[:, 1] = 40.0 * ink
        scores[:, 7] = 1.5
        return scores

    return score


def test_narrower_squeezes_the_ink_and_centres_it_again():
    from digitrec.recognition import NARROWER, narrower

    inputs = np.zeros((3, 28, 28), np.uint8)
    inputs[0, 4:24, 2:22] = 255  # a 20x20 block, off centre to the left
    inputs[1, 6:22, 20:25] = 200  # a narrow bar at the right
    got = narrower(inputs)
    rows, cols = np.nonzero(got[0])
    assert (rows.min(), rows.max()) == (4, 23)  # the height kept
    assert cols.max() - cols.min() + 1 == round(20 * NARROWER)  # the width squeezed
    assert (cols.min() + cols.max()) / 2 == pytest.approx(13.5, abs=0.5)  # centred again
    assert got[0].max() == 255 and got[0].sum() == pytest.approx(inputs[0].sum() * NARROWER, rel=0.01)
    rows, cols = np.nonzero(got[1])
    assert cols.max() - cols.min() + 1 == 3 and 12 <= cols.mean() <= 15
    assert not got[2].any()  # no ink: blank
    assert inputs[0, 4:24, 2:22].min() == 255  # the inputs are left as they were


def test_an_unsure_input_gets_a_second_look_in_a_thinner_and_a_thicker_pen_and_narrower():
    from digitrec.recognition import SECOND_LOOK_BELOW, energy, narrower, pen_variants

    sure = np.zeros((28, 28), np.uint8)
    sure[4:24, 8:20] = 255  # much ink: digit 1 at > 0.99
    faint = np.zeros((28, 28), np.uint8)
    faint[8:20, 12:15] = 255  # little ink: unsure
    calls: list[int] = []
    rec = Recognizer.from_scorer(_ink_scorer(calls), {"name": "ink", "source": "test"})
    assert rec.second_look and rec.info()["second_look"] is True
    got = rec.predict_normalized([sure, None, faint], [None, None, None])
    assert calls == [2, 3]  # one pass for both inputs, one for the unsure one's three variants

    def plain(pixels: np.ndarray) -> np.ndarray:
        return softmax(_ink_scorer([])(pixels[None, None].astype(np.float32) / 255.0))[0]

    assert plain(sure).max() >= SECOND_LOOK_BELOW > plain(faint).max()
    np.testing.assert_allclose(got[0].probabilities, plain(sure), atol=1e-12)
    thinner, thicker = pen_variants(faint[None])
    squeezed = narrower(faint[None])[0]
    expected = (plain(faint) + plain(thinner[0]) + plain(thicker[0]) + plain(squeezed)) / 4.0
    np.testing.assert_allclose(got[2].probabilities, expected, atol=1e-12)
    assert got[2].confidence == pytest.approx(expected.max())
    assert not np.allclose(expected, plain(faint), atol=1e-3)  # the look changed something
    # "Not a digit" still judges the input itself: its energy is the first reading's.
    row = rec._probabilities([faint])[0]
    assert row[10] == pytest.approx(energy(_ink_scorer([])(faint[None, None] / 255.0))[0])

    calls.clear()
    rec.second_look = False
    once = rec.predict_normalized([sure, faint], [None, None])
    assert calls == [2] and rec.info()["second_look"] is False
    np.testing.assert_allclose(once[1].probabilities, plain(faint), atol=1e-12)


def test_recognition_runs_without_torch(tmp_path, mnist):
    """A non-torch backend plugs in through from_scorer; nothing imports torch."""
    means = np.stack(
        [mnist.train_images[mnist.train_labels == k][:500].float().mean(0).numpy() / 255 for k in range(10)]
    )
    np.save(tmp_path / "means.npy", means)
    Image.fromarray(ink_on_paper(mnist.test_images[0].numpy())).save(tmp_path / "seven.png")
    code = f"""
import sys, numpy as np
from digitrec.recognition import Recognizer
means = np.load({str(tmp_path / "means.npy")!r})  # (10, 28, 28): a nearest-mean classifier
def scorer(batch):
    return -((batch[:, 0, None] - means[None]) ** 2).sum(axis=(2, 3))
rec = Recognizer.from_scorer(scorer, {{"name": "nearest-mean", "source": "test"}})
p = rec.predict({str(tmp_path / "seven.png")!r})
assert "torch" not in sys.modules, "torch was imported"
print(p.digit, rec.info()["name"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["7", "nearest-mean"]


# --------------------------------------------------------------------------- several digits


def _row(images: np.ndarray, gaps: list[int], height: int = 80) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """MNIST digits side by side as black ink on white, ``gaps`` px apart (negative: overlap).

    Returns the page and each digit's (x, width)."""
    inks = [255 - ink_on_paper(d, height=height, canvas=height + 4) for d in images]
    inks = [
        ink[:, np.where(ink.max(axis=0) > 0)[0][0] : np.where(ink.max(axis=0) > 0)[0][-1] + 1] for ink in inks
    ]
    width = sum(i.shape[1] for i in inks) + sum(gaps) + 80
    row = np.zeros((height + 44, width), np.uint8)
    x = 40
    boxes = []
    for ink, gap in zip(inks, [*gaps, 0], strict=True):
        region = row[20 : 20 + ink.shape[0], x : x + ink.shape[1]]
        np.maximum(region, ink, out=region)
        boxes.append((x, ink.shape[1]))
        x += ink.shape[1] + gap
    return 255 - row, boxes


def test_multi_reads_a_row_left_to_right(mnist, recognizer):
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    picks = [0, 1, 2, 3, 4]  # 7 2 1 0 4
    page, drawn = _row(images[picks], [30, 20, 40, 25])
    prediction = recognizer.predict(page, multi=True)
    # What the model reads in each MNIST digit on its own (the true labels are 72104).
    per_digit = "".join(str(recognizer.predict_pixels(images[k]).digit) for k in picks)
    assert "".join(str(labels[k]) for k in picks) == "72104"
    assert prediction.number == per_digit
    assert len(prediction.digits) == 5 and prediction.digit is None
    xs = [d["bbox"][0] for d in prediction.digits]
    assert xs == sorted(xs)
    for d, (left, width) in zip(prediction.digits, drawn, strict=True):
        x, y, w, h = d["bbox"]
        assert abs(x - left) <= 2 and abs(w - width) <= 3
        assert 18 <= y <= 24 and 74 <= h <= 82  # the digits were drawn 80 px tall at y=20


def test_multi_splits_touching_digits(mnist, recognizer):
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    zeros = np.where(labels == 0)[0][:2]
    page, _ = _row(images[zeros], [-4])
    _, count = ndi.label(page < 128)
    assert count == 1  # really touching
    prediction = recognizer.predict(page, multi=True)
    assert prediction.number == "00"


def test_multi_prefers_a_reading_whose_pieces_are_digits_to_a_confident_refused_one(mnist):
    """Two touching digits read as one wide piece can get a confident guess whose energy says
    "not a digit" (then "?" in the number), while cut apart each piece is a digit read less
    surely: the reading with fewer refused pieces wins, confidence deciding only between equals."""
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    zeros = np.where(labels == 0)[0][:2]
    page, _ = _row(images[zeros], [-4])

    def scorer(batch: np.ndarray) -> np.ndarray:
        # (N, 1, 28, 28) in [0, 1] -> (N, 10): a piece wider than tall (both zeros as one) is an
        # "8" at almost 1.0 with an energy far under the threshold; a digit-shaped piece a "0"
        # at 0.69 with an energy over it.
        scores = np.zeros((len(batch), 10), np.float32)
        for k, pixels in enumerate(batch[:, 0]):
            rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
            if cols.size > rows.size:
                scores[k] = -50.0
                scores[k, 8] = -20.0
            else:
                scores[k, 0] = 3.0
        return scores

    rec = Recognizer.from_scorer(scorer, {"name": "shape", "not_digit_energy_below": 1.0})
    rec.second_look = False
    prediction = rec.predict(page, multi=True)
    assert prediction.number == "00" and prediction.rejected is None
    assert [round(d["confidence"], 2) for d in prediction.digits] == [0.69, 0.69]
    # Without a not-a-digit threshold, the most confident reading wins: one piece, an 8.
    plain = Recognizer.from_scorer(scorer, {"name": "shape"})
    plain.second_look = False
    assert plain.predict(page, multi=True).number == "8"


def test_multi_on_one_digit_and_on_blank(digits, recognizer):
    one = recognizer.predict(ink_on_paper(digits[0][0]), multi=True)
    assert one.number == str(one.digit) and len(one.digits) == 1
    blank = recognizer.predict(np.full((50, 200), 255, np.uint8), multi=True)
    assert blank.number is None and blank.digits == [] and blank.digit is None


def test_recognition_module_does_not_import_torch():
    code = "import sys, digitrec.recognition, digitrec.images; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
