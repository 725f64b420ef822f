"""Other writers' handwriting: labelled digit sets read the way ``digitrec predict`` reads images.

Two kinds of source feed ``digitrec evaluate --images SOURCE``:

* a user's own labelled images: a folder ``DIR/<digit>/*.png`` (torchvision's ImageFolder
  convention) or a CSV file of ``file,label`` rows (paths relative to the CSV's folder);
* a named set of real handwriting read from its folder (not bundled): ``usps:DIR`` (USPS's
  test split, ``zip.test.gz``), ``usps-train:DIR`` (``zip.train.gz``) and
  ``optdigits-orig:DIR`` (``optdigits-orig.tra.gz`` and ``optdigits-orig.cv.gz``).

The loaders return uint8 arrays ``(N, H, W)`` with 255 = ink. :func:`render_digit` draws
one as a person's image would look (dark ink on white paper, upscaled, with a margin), so
a named set goes through the same normalization as any user's image.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import DigitrecError
from .fileio import find_data_file, sha256_hex

# SHA-256 of the files as distributed (see each set's README); a file under one of these
# names must match, decompressed or not.
KNOWN_SHA256 = {
    "zip.train.gz": "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16",
    "zip.test.gz": "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f",
    "zip.train": "abc9f5c75b997cabe66b5d01727d5a681c69298e1641a8d37b55433a52129dc0",
    "zip.test": "6bde17b4f1cd68e0630cd2751d6495b5795d9165ab2dc4a0be8b7002b732f4cc",
    "optdigits-orig.tra.gz": "03757a38d5d57e9659d4036f4250cc970993b17e480580a2fce8175dad2b19cd",
    "optdigits-orig.cv.gz": "39fd6e02f94ece35b9cd9a5546d361a0f6b65e91be6281370121b939140c51a4",
}
USPS_SPLITS = ("train", "test")
OPTDIGITS_FILES = ("optdigits-orig.tra", "optdigits-orig.cv")
NAMED_SETS = ("usps", "usps-train", "optdigits-orig")
SHARED_DATA_ENV = "DIGITREC_SHARED_DATA"


@dataclass(frozen=True)
class DigitSet:
    """Labelled digits as ink maps: images (N, H, W) uint8 with 255 = ink, labels (N,) int64."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def _read_lines(path: Path) -> tuple[bytes, list[str]]:
    """The file's bytes as read, and its text lines (gunzipped when it ends in .gz). Parsers check the
    lines first and the SHA-256 of those same bytes last, so a damaged copy is named by its first
    bad line, and the file is read once."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DigitrecError(f"{path}: cannot read ({exc.strerror})") from None
    content = raw
    if path.suffix == ".gz":
        try:
            content = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DigitrecError(f"{path}: not a complete gzip file ({exc})") from None
    try:
        return raw, content.decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise DigitrecError(f"{path}: not a text file (byte {exc.start} is not ASCII)") from None


def _check_sha256(path: Path, raw: bytes) -> None:
    expected = KNOWN_SHA256.get(path.name)
    if expected is None:
        return
    actual = sha256_hex(raw)
    if actual != expected:
        raise DigitrecError(f"{path}: checksum mismatch: SHA-256 is {actual}, expected {expected}")


def _label(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DigitrecError(f"{where}: label {text!r} is not a number") from None
    if not value.is_integer() or not 0 <= value <= 9:
        raise DigitrecError(f"{where}: label {text!r} is not a digit 0-9")
    return int(value)


def parse_usps(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One USPS text file: per line a label then 256 values in [-1, 1] (16x16, -1 = paper)."""
    path = Path(path)
    raw, lines = _read_lines(path)
    images, labels = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 257:
            raise DigitrecError(f"{where}: expected a label and 256 values, got {len(fields)} fields")
        labels.append(_label(fields[0], where))
        try:
            values = np.array(fields[1:], dtype=np.float64)
        except ValueError:
            raise DigitrecError(f"{where}: a gray value is not a number") from None
        if not np.isfinite(values).all() or values.min() < -1.0001 or values.max() > 1.0001:
            raise DigitrecError(f"{where}: gray values must lie in [-1, 1]")
        images.append(np.rint((np.clip(values, -1, 1) + 1) * 127.5).astype(np.uint8).reshape(16, 16))
    if not images:
        raise DigitrecError(f"{path}: no digits")
    _check_sha256(path, raw)
    return np.stack(images), np.array(labels, dtype=np.int64)


def load_usps(folder: str | os.PathLike[str], split: str = "test") -> DigitSet:
    """USPS's ``zip.<split>.gz`` (or ``zip.<split>``) from ``folder``: 16x16 digits."""
    if split not in USPS_SPLITS:
        raise DigitrecError(f"USPS split must be one of {', '.join(USPS_SPLITS)}, got {split!r}")
    images, labels = parse_usps(find_data_file(Path(folder), f"zip.{split}"))
    return DigitSet(f"usps-{split}", images, labels)


def parse_optdigits_orig(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One optdigits-orig file: a count line, then per digit 32 lines of 32 ``0``/``1`` and a label line."""
    path = Path(path)
    raw, lines = _read_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DigitrecError(f"{path}: empty")
    try:
        count = int(lines[0])
    except ValueError:
        raise DigitrecError(f"{path} line 1: expected the number of digits, got {lines[0][:40]!r}") from None
    if count < 1 or len(lines) != 1 + 33 * count:
        raise DigitrecError(
            f"{path} line {len(lines)}: the first line says {count} digits ({1 + 33 * count} lines), "
            f"the file has {len(lines)} lines"
        )
    images = np.zeros((count, 32, 32), np.uint8)
    labels = np.zeros(count, np.int64)
    for index in range(count):
        first = 1 + 33 * index
        for row in range(32):
            line = lines[first + row].strip()
            if len(line) != 32 or set(line) - {"0", "1"}:
                raise DigitrecError(f"{path} line {first + row + 1}: expected 32 characters 0 or 1")
            images[index, row] = np.frombuffer(line.encode(), np.uint8) == ord("1")
        labels[index] = _label(lines[first + 32].strip(), f"{path} line {first + 33}")
    _check_sha256(path, raw)
    return images * np.uint8(255), labels


def load_optdigits_orig(folder: str | os.PathLike[str]) -> DigitSet:
    """optdigits-orig's training-writer files (``.tra`` then ``.cv``) from ``folder``: 32x32 bitmaps."""
    parts = []
    for stem in OPTDIGITS_FILES:
        parts.append(parse_optdigits_orig(find_data_file(Path(folder), stem)))
    return DigitSet(
        "optdigits-orig", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    )


def load_named_set(name: str, folder: str | os.PathLike[str]) -> DigitSet:
    if name == "usps":
        return load_usps(folder, "test")
    if name == "usps-train":
        return load_usps(folder, "train")
    if name == "optdigits-orig":
        return load_optdigits_orig(folder)
    raise DigitrecError(f"unknown set {name!r}: use one of {', '.join(NAMED_SETS)}")


def render_digit(
    ink: np.ndarray,
    scale: int = 8,
    margin: float = 0.25,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """An ink map (H, W) uint8, 255 = ink, as a scan would show it: dark ink on white paper,
    ``scale`` times larger (by ``resample``), with a white margin of ``margin`` of the larger side."""
    height, width = ink.shape
    paper = Image.fromarray(255 - np.asarray(ink, np.uint8), "L")
    drawn = paper.resize((width * scale, height * scale), resample)
    pad = round(max(height, width) * scale * margin)
    page = Image.new("L", (width * scale + 2 * pad, height * scale + 2 * pad), 255)
    page.paste(drawn, (pad, pad))
    return page


# --------------------------------------------------------------------------- a user's images


def _image_suffixes() -> set[str]:
    Image.init()
    return {suffix.lower() for suffix in Image.registered_extensions()}


def image_folder(folder: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """``DIR/<digit>/<image>`` files, sorted by digit then name; other files and hidden entries
    are skipped, a sub-folder that is not a digit 0-9 is an error."""
    base = Path(folder)
    suffixes = _image_suffixes()
    files: list[str] = []
    labels: list[int] = []
    try:
        entries = sorted(base.iterdir())
    except OSError as exc:
        raise DigitrecError(f"{base}: cannot list the folder ({exc.strerror})") from None
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name not in {str(d) for d in range(10)}:
            raise DigitrecError(f"{entry}: label folders must be named 0 to 9")
        for file in sorted(entry.iterdir()):
            if not file.name.startswith(".") and file.is_file() and file.suffix.lower() in suffixes:
                files.append(str(file))
                labels.append(int(entry.name))
    if not files:
        raise DigitrecError(f"{base}: no images in label folders 0 to 9 (expected DIR/<digit>/*.png)")
    return files, labels


def image_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[int]]:
    """``file,label`` rows (an optional ``file,label`` header); files relative to the CSV's folder."""
    source = Path(path)
    try:
        text = source.read_text("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DigitrecError(f"{source}: cannot read the CSV file ({exc})") from None
    files: list[str] = []
    labels: list[int] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        where = f"{source} line {number}"
        if number == 1 and [cell.strip().lower() for cell in row] == ["file", "label"]:
            continue
        if len(row) != 2 or not row[0].strip():
            raise DigitrecError(f"{where}: expected file,label")
        label = row[1].strip()
        if label not in {str(d) for d in range(10)}:
            raise DigitrecError(f"{where}: label {label!r} is not a digit 0-9")
        file = source.parent / row[0].strip()
        if not file.is_file():
            raise DigitrecError(f"{where}: {file}: no such file")
        files.append(str(file))
        labels.append(int(label))
    if not files:
        raise DigitrecError(f"{source}: no rows (expected file,label)")
    return files, labels


@dataclass(frozen=True)
class LabelledImages:
    """What ``--images SOURCE`` names: images (paths or PIL images) with their labels."""

    source: str
    names: list[str]  # a file path, or "<set>#<index>" for a named set
    images: Sequence[Any]
    labels: list[int]


def open_source(source: str) -> LabelledImages:
    """``usps:DIR``, ``usps-train:DIR``, ``optdigits-orig:DIR``, a folder of label folders, or a CSV file."""
    name, sep, folder = source.partition(":")
    if sep and name in NAMED_SETS:
        digits = load_named_set(name, folder)
        return LabelledImages(
            source,
            [f"{digits.name}#{index}" for index in range(len(digits.labels))],
            _Rendered(digits.images),
            digits.labels.tolist(),
        )
    path = Path(source)
    if path.is_dir():
        files, labels = image_folder(path)
    elif path.is_file():
        files, labels = image_csv(path)
    else:
        raise DigitrecError(
            f"{source}: no such folder or CSV file "
            f"(or a named set: {', '.join(s + ':DIR' for s in NAMED_SETS)})"
        )
    return LabelledImages(source, files, files, labels)


class _Rendered(Sequence[Any]):
    """A set's digits rendered by :func:`render_digit` on demand (slices too)."""

    def __init__(self, inks: np.ndarray) -> None:
        self.inks = inks

    def __len__(self) -> int:
        return len(self.inks)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [render_digit(ink) for ink in self.inks[index]]
        return render_digit(self.inks[index])


def default_shared_data() -> Path:
    """The shared data folder: ``$DIGITREC_SHARED_DATA``, else ``<repo>/../shared/data`` (for the
    benchmark and the tests, which run from a source checkout)."""
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


# --------------------------------------------------------------------------- scoring

READ_CHUNK = 256  # images normalized and scored per forward pass


@dataclass
class ImagesEvaluation:
    """``report`` counts an image where no digit was found as wrong (``no_digit`` of them), outside
    the confusion matrix; ``probabilities`` (N, 10) is all zeros for those, ``inputs`` (N, 28, 28)
    holds the images the model saw (black where none)."""

    report: Any  # evaluation.EvalReport
    no_digit: int
    predicted: list[int | None]
    probabilities: np.ndarray
    inputs: np.ndarray
    rejected: list[str | None]  # per image: why no answer was given (None: answered)
    selective: dict[str, Any]  # coverage, answered_accuracy, rejected counts, ece (calibration.py)


def evaluate_images(recognizer: Any, labelled: LabelledImages, chunk: int = READ_CHUNK) -> ImagesEvaluation:
    """Read every image through ``recognizer.predict_batch`` (as ``digitrec predict`` does) and score
    it against its label. A bad image raises ImageError naming it."""
    from .calibration import selective_summary
    from .evaluation import EvalReport

    predicted: list[int | None] = []
    rejected: list[str | None] = []
    probabilities = np.zeros((len(labelled.labels), 10), np.float32)
    inputs = np.zeros((len(labelled.labels), 28, 28), np.uint8)
    for start in range(0, len(labelled.labels), chunk):
        batch = labelled.images[start : start + chunk]
        for offset, prediction in enumerate(recognizer.predict_batch(list(batch))):
            index = start + offset
            rejected.append(prediction.rejected)
            if prediction.input_image is None:
                predicted.append(None)
                continue
            probabilities[index] = prediction.probabilities
            inputs[index] = prediction.input_image
            predicted.append(int(np.argmax(probabilities[index])))
    confusion = np.zeros((10, 10), np.int64)
    for truth, guess in zip(labelled.labels, predicted, strict=True):
        if guess is not None:
            confusion[truth, guess] += 1
    total = len(labelled.labels)
    correct = int(np.trace(confusion))
    report = EvalReport(
        accuracy=correct / total if total else 0.0, num_examples=total, confusion=confusion.tolist()
    )
    found = np.array([guess is not None for guess in predicted], dtype=bool)
    selective = selective_summary(probabilities, np.asarray(labelled.labels), rejected, found)
    return ImagesEvaluation(
        report, predicted.count(None), predicted, probabilities, inputs, rejected, selective
    )
