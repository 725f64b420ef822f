"""Other writers' handwriting: the USPS and optdigits-orig loaders (on the real shared files) and
``digitrec evaluate --images`` (folders, CSV files, named sets, bad input)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec.errors import DigitrecError
from digitrec.handwriting import (
    default_shared_data,
    load_optdigits_orig,
    load_usps,
    parse_optdigits_orig,
    parse_usps,
    render_digit,
)

from .conftest import cli_exit_code
from .recognition_support import ink_on_paper

SHARED = default_shared_data()
USPS = SHARED / "usps"
OPTDIGITS = SHARED / "optdigits-orig"


def needs(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data sets; set DIGITREC_SHARED_DATA to their folder)")


# --------------------------------------------------------------------------- loaders


def test_usps_real_files_parse_with_the_readme_counts():
    needs(USPS)
    test = load_usps(USPS, "test")
    train = load_usps(USPS, "train")
    assert test.images.shape == (2007, 16, 16) and test.images.dtype == np.uint8
    assert np.bincount(test.labels).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    assert np.bincount(train.labels).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    # -1 (paper) is 0 and 1 (ink) is 255: corners are mostly paper, every digit has full ink.
    assert np.median(test.images[:, 0, 0]) == 0 and (test.images.reshape(2007, -1).max(1) == 255).all()


def test_optdigits_orig_real_files_parse_with_the_readme_counts():
    needs(OPTDIGITS)
    digits = load_optdigits_orig(OPTDIGITS)
    assert digits.images.shape == (2880, 32, 32)
    assert set(np.unique(digits.images).tolist()) == {0, 255}
    assert np.bincount(digits.labels).tolist() == [276, 295, 287, 284, 300, 295, 282, 297, 271, 293]
    assert digits.labels[0] == 0  # the first digit of optdigits-orig.tra


def _gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


USPS_LINE = "3 " + " ".join(["-1"] * 200 + ["1"] * 56)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            USPS_LINE + "\n" + USPS_LINE.rsplit(" ", 1)[0] + "\n",
            "line 2: expected a label and 256 values, got 256",
        ),
        ("12 " + USPS_LINE[2:] + "\n", "line 1: label '12' is not a digit 0-9"),
        ("3.5 " + USPS_LINE[2:] + "\n", "line 1: label '3.5' is not a digit 0-9"),
        (USPS_LINE.replace("-1", "x", 1) + "\n", "line 1: a gray value is not a number"),
        (USPS_LINE.replace("-1", "2", 1) + "\n", "line 1: gray values must lie in [-1, 1]"),
        ("\n", "no digits"),
    ],
)
def test_usps_format_errors_name_file_and_line(tmp_path, text, message):
    path = _gz(tmp_path / "bad.gz", text)
    with pytest.raises(DigitrecError) as info:
        parse_usps(path)
    assert str(info.value) == f"{path}: {message}" if message == "no digits" else f"{path} {message}"
    assert "\n" not in str(info.value)


def test_usps_known_name_needs_the_readme_checksum_and_a_whole_gzip(tmp_path):
    needs(USPS)
    copy = tmp_path / "usps"
    copy.mkdir()
    content = gzip.decompress((USPS / "zip.test.gz").read_bytes())
    _gz(copy / "zip.test.gz", content.decode())  # the same text, gzipped again: other bytes
    with pytest.raises(
        DigitrecError, match=r"zip.test.gz: checksum mismatch: SHA-256 is [0-9a-f]{64}, expected 8dac"
    ):
        load_usps(copy, "test")
    (copy / "zip.test.gz").write_bytes((USPS / "zip.test.gz").read_bytes()[:-1000])  # truncated
    with pytest.raises(DigitrecError, match=r"zip\.test\.gz: not a complete gzip file"):
        load_usps(copy, "test")
    (copy / "zip.test.gz").unlink()
    (copy / "zip.test").write_bytes(content)  # decompressed, as distributed: accepted
    assert len(load_usps(copy, "test").labels) == 2007
    with pytest.raises(DigitrecError, match=r"missing zip\.train \(or zip\.train\.gz\)"):
        load_usps(copy, "train")


OPT_DIGIT = "".join("0" * 16 + "1" * 16 + "\n" for _ in range(32)) + " 7\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "2\n" + OPT_DIGIT + OPT_DIGIT[:-3],
            "line 66: the first line says 2 digits (67 lines), the file has 66 lines",
        ),
        ("1\n" + OPT_DIGIT.replace("1\n", "2\n", 1), "line 2: expected 32 characters 0 or 1"),
        ("1\n" + OPT_DIGIT.replace(" 7", "10"), "line 34: label '10' is not a digit 0-9"),
        ("many\n" + OPT_DIGIT, "line 1: expected the number of digits, got 'many'"),
    ],
)
def test_optdigits_orig_format_errors_name_file_and_line(tmp_path, text, message):
    path = _gz(tmp_path / "bad.gz", text)
    with pytest.raises(DigitrecError) as info:
        parse_optdigits_orig(path)
    assert str(info.value) == f"{path} {message}"
    assert "\n" not in str(info.value)


def test_optdigits_orig_parses_a_well_formed_file(tmp_path):
    images, labels = parse_optdigits_orig(_gz(tmp_path / "one.gz", "1\n" + OPT_DIGIT))
    assert labels.tolist() == [7] and images.shape == (1, 32, 32)
    assert images[0, 0, :16].max() == 0 and images[0, 0, 16:].min() == 255


def test_render_digit_is_dark_ink_on_white_with_a_margin():
    ink = np.zeros((16, 16), np.uint8)
    ink[4:12, 7:9] = 255
    page = np.asarray(render_digit(ink, scale=8))
    assert page.shape == (16 * 8 + 64, 16 * 8 + 64)
    assert page[:32].min() == 255 and page[32 + 64, 32 + 64] == 0


# --------------------------------------------------------------------------- evaluate --images


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, mnist) -> Path:
    """24 real MNIST test digits as PNG files in DIR/<digit>/, dark ink on white paper."""
    folder = tmp_path_factory.mktemp("images")
    for index in range(24):
        label = int(mnist.test_labels[index])
        (folder / str(label)).mkdir(exist_ok=True)
        page = ink_on_paper(mnist.test_images[index].numpy(), height=60, canvas=96)
        Image.fromarray(page).save(folder / str(label) / f"{index:03d}.png")
    (folder / "notes.txt").write_text("not in a label folder: ignored")
    (folder / ".hidden").mkdir()
    return folder


def _predict_accuracy(files: list[Path], labels: list[int], capsys) -> float:
    assert cli_exit_code(["predict", "--json", *map(str, files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return sum(row["digit"] == label for row, label in zip(rows, labels, strict=True)) / len(labels)


def test_evaluate_images_folder_agrees_with_predict(labelled_folder, tmp_path, capsys):
    files = sorted(labelled_folder.glob("[0-9]/*.png"))
    labels = [int(f.parent.name) for f in files]
    expected = _predict_accuracy(files, labels, capsys)
    assert (
        cli_exit_code(
            ["evaluate", "--images", str(labelled_folder), "--json", "--report", str(tmp_path / "r")]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["accuracy"] == pytest.approx(expected) and out["num_examples"] == 24
    assert out["no_digit"] == 0 and len(out["per_class"]) == 10
    assert sum(map(sum, out["confusion_matrix"])) == 24
    # Coverage at the default setting and calibration (README "Not a digit").
    assert 0.9 <= out["coverage"] <= 1.0 and 0 <= out["ece"] <= 1
    assert out["answered_accuracy"] >= out["accuracy"] - 1e-9
    assert sum(out["rejected"].values()) == round(24 * (1 - out["coverage"]))
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "confusion_matrix.png",
        "per_class_accuracy.png",
        "mistakes.png",
        "mistakes.json",
        "accuracy_coverage.png",
    }
    mistakes = json.loads((tmp_path / "r" / "mistakes.json").read_text())
    assert len(mistakes) == round(24 * (1 - expected))
    assert "wrote" in captured.err


def test_evaluate_images_csv_and_text_output(labelled_folder, tmp_path, capsys):
    files = sorted(labelled_folder.glob("[0-9]/*.png"))[:10]
    shutil.copytree(labelled_folder, tmp_path / "imgs", ignore=shutil.ignore_patterns(".*"))
    rows = ["file,label"] + [f"imgs/{f.parent.name}/{f.name},{f.parent.name}" for f in files]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    expected = _predict_accuracy(files, [int(f.parent.name) for f in files], capsys)
    assert cli_exit_code(["evaluate", "--images", str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out
    assert f"accuracy: {expected:.4f} (10 images)" in out and "confusion matrix" in out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent", "no such folder or CSV file"),
        (lambda d: (d / "11").mkdir() or d, "label folders must be named 0 to 9"),
        (lambda d: (d / "3").mkdir() or d, "no images in label folders 0 to 9"),
        (lambda d: (d / "x.csv").write_text("a.png\n") and d / "x.csv", "line 1: expected file,label"),
        (lambda d: (d / "x.csv").write_text("a.png,1\n") and d / "x.csv", "a.png: no such file"),
        (lambda d: (d / "x.csv").write_text("x.csv,12\n") and d / "x.csv", "label '12' is not a digit 0-9"),
        (lambda d: (d / "x.csv").write_text("x.csv,1\n") and d / "x.csv", "not an image"),
        (lambda d: Path("usps:" + str(d)), "missing zip.test (or zip.test.gz)"),
    ],
)
def test_evaluate_images_bad_input_is_one_line_exit_2(tmp_path, capsys, make, message):
    source = make(tmp_path)
    assert cli_exit_code(["evaluate", "--images", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digitrec evaluate: error: ") and message in err and err.count("\n") == 1


def test_evaluate_images_rejects_ensembles_and_report_alone(tmp_path, capsys):
    assert cli_exit_code(["evaluate", "a", "b", "--images", str(tmp_path)]) == 2
    assert cli_exit_code(["evaluate", "--report", str(tmp_path)]) == 2
    assert "--report needs --images" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "folder", "size", "floor"),
    [("optdigits-orig", OPTDIGITS, 2880, 0.97), ("usps", USPS, 2007, 0.975)],
)
def test_bundled_model_reads_other_writers_whole_sets(name, folder, size, floor, capsys):
    """Issue #14's measure, kept from rotting: the bundled model reads every digit of the shared
    real sets through ``digitrec evaluate --images`` (the predict path). The four models bundled
    on 2026-12-02 read 0.974-0.985 of optdigits-orig and 0.979-0.983 of USPS test; the floors sit
    below that. The 1s with a long flag are the class that fell furthest (0.70 before the drawn
    digits), so they keep their own floor."""
    needs(folder)
    assert cli_exit_code(["evaluate", "--images", f"{name}:{folder}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_examples"] == size
    assert report["accuracy"] >= floor, report["accuracy"]
    recall = [row["recall"] for row in report["per_class"]]
    assert min(recall) >= 0.85 and recall[1] >= 0.88, recall


@pytest.mark.parametrize(
    ("picks", "why"),
    [
        ([554, 653, 415, 1611], "its 2 is light and fine beside bold digits: it was lost as specks"),
        ([1403, 964, 1732, 150], "its 2 is wide and flat: it was cut into a short piece and a digit"),
    ],
    ids=["light-fine-2", "wide-flat-2"],
)
def test_numbers_of_usps_digits_read_with_every_digit_once(picks, why):
    """Rows of four USPS test digits as the handwriting benchmark draws its numbers (eight draws of
    sizes, gaps and paper) read as exactly those four digits: found, and none of them cut in two."""
    from benchmarks.rendered_handwriting import render_number

    from digitrec.recognition import Recognizer

    needs(USPS)
    digits = load_usps(USPS, "test")
    recognizer = Recognizer.default()
    truth = "".join(str(int(digits.labels[k])) for k in picks)
    rows = [render_number(digits.images[picks], np.random.default_rng(seed)) for seed in range(8)]
    read = [p.number for p in recognizer.predict_batch(rows, multi=True)]
    assert read == [truth] * 8, why


@pytest.mark.slow
def test_the_second_look_reads_other_writers_better(mnist):
    """Reading an unsure digit again in a thinner and a thicker pen (``Recognizer.second_look``)
    took the bundled model's mistakes on optdigits-orig from 42 to 32 and on MNIST test from 33 to
    30, USPS test 36 to 35 (2026-12-03); read narrower too (that evening): 42 -> 27, 33 -> 33 and
    36 -> 33. Each set's inputs are made once and scored both ways:
    fewer mistakes on optdigits-orig, and on the others at most two more."""
    needs(OPTDIGITS)
    needs(USPS)
    from digitrec.recognition import Recognizer, prepare

    recognizer = Recognizer.default(backend="auto")
    sets = {
        name: ([prepare(render_digit(ink)) for ink in digits.images], digits.labels)
        for name, digits in [("optdigits-orig", load_optdigits_orig(OPTDIGITS)), ("usps", load_usps(USPS))]
    }
    sets["mnist"] = (list(mnist.test_images.numpy()), mnist.test_labels.numpy())
    mistakes = {}
    for name, (inputs, labels) in sets.items():
        for second_look in (True, False):
            recognizer.second_look = second_look
            read = [int(np.argmax(p.probabilities)) for p in recognizer.predict_prepared(inputs)]
            mistakes[name, second_look] = int((np.array(read) != labels).sum())
    assert mistakes["optdigits-orig", True] < mistakes["optdigits-orig", False], mistakes
    assert mistakes["usps", True] <= mistakes["usps", False] + 2, mistakes
    assert mistakes["mnist", True] <= mistakes["mnist", False] + 2, mistakes


# --------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_handwriting_benchmark_quick_keeps_a_floor(tmp_path, capsys):
    """``python -m benchmarks.handwriting --quick`` on the shared sets: every set, presentation and
    the 4-digit numbers stay above a floor (the bundled model scores about 0.95-0.98 on single
    digits), so the benchmark never rots."""
    needs(USPS)
    needs(OPTDIGITS)
    from benchmarks.handwriting import NUMBERS, NUMBERS_AS_ANSWERED, NUMBERS_SEMEION, PRESENTATIONS, main

    out = tmp_path / "handwriting.json"
    assert main(["--quick", "--data-dir", str(SHARED), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["sets"]) == {"optdigits-orig", "USPS test"}
    for name, entry in results["sets"].items():
        rows = entry["results"]
        assert set(rows) == {*PRESENTATIONS, NUMBERS, NUMBERS_AS_ANSWERED, NUMBERS_SEMEION}
        singles = [rows[p] for p in PRESENTATIONS]
        assert all(row["total"] == 60 for row in singles)
        rate = sum(row["correct"] for row in singles) / sum(row["total"] for row in singles)
        assert rate >= 0.85, (name, rows)
        assert all(row["correct"] / row["total"] >= 0.75 for row in singles), (name, rows)
        assert rows[NUMBERS]["correct"] / rows[NUMBERS]["total"] >= 0.6, (name, rows)
        assert rows[NUMBERS_SEMEION]["total"] == rows[NUMBERS]["total"]
        assert rows[NUMBERS_SEMEION]["correct"] / rows[NUMBERS_SEMEION]["total"] >= 0.6, (name, rows)
        # A "?" in the number is never right; a withheld digit's best guess may be.
        strict, lenient = rows[NUMBERS_AS_ANSWERED], rows[NUMBERS]
        assert strict["total"] == lenient["total"]
        assert 0.5 * lenient["correct"] <= strict["correct"] <= lenient["correct"]
        assert all(0 <= row["correct_read_once"] <= row["total"] for row in rows.values())
    assert "| **4-digit numbers (exact)** |" in capsys.readouterr().out


def test_benchmark_presents_digits_as_other_collections_scanned_them():
    # Semeion's scanner stretched every digit to fill its 16x16 box; UCI's 8x8 optdigits counted a
    # 32x32 bitmap's ink in 4x4 blocks, keeping the digit's aspect.
    from benchmarks.handwriting import (
        _block_counts,
        optical_8x8,
        optical_8x8_pixels,
        scanner_box,
        semeion_box,
    )

    narrow = np.zeros((32, 32), np.uint8)
    narrow[2:30, 14:18] = 255  # a 1, 28x4 px
    rng = np.random.default_rng(0)

    def ink_box(page: Image.Image) -> tuple[int, int]:
        dark = np.asarray(page) < 128
        rows, cols = np.where(dark.any(axis=1))[0], np.where(dark.any(axis=0))[0]
        return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)

    box = semeion_box(narrow)
    assert box.shape == (16, 16) and (box == 255).all()  # a bar stretched to fill the box
    stretched = scanner_box(narrow, rng)
    assert stretched.size == (16 * 8 + 64, 16 * 8 + 64)  # 16 cells of 8 px, a quarter's margin
    assert ink_box(stretched) == (128, 128)
    counted = optical_8x8(narrow, rng)
    assert counted.size == (8 * 8 + 32, 8 * 8 + 32)
    height, width = ink_box(counted)
    assert height >= 40 and width <= 16  # 6 of 8 cells fully inked, 1 cell wide: the aspect kept
    levels = optical_8x8(np.pad(narrow[:, :16], ((0, 0), (0, 16))), rng)  # blocks half inked
    assert 100 < np.asarray(levels).min() < 160  # half a block's ink is mid-gray, not black
    # Zoomed pixel by pixel: 8x8 cells of one level each, the counts' levels as dark ink.
    zoomed = np.asarray(optical_8x8_pixels(narrow, rng))
    assert zoomed.shape == (8 * 8 + 32, 8 * 8 + 32)
    cells = zoomed[16:80, 16:80].reshape(8, 8, 8, 8)
    assert (cells == cells[:, :1, :, :1]).all()
    assert np.array_equal(cells[:, 0, :, 0], 255 - _block_counts(narrow))


def test_benchmark_refuses_a_quick_run_for_the_readme(tmp_path, capsys):
    from benchmarks.handwriting import main

    with pytest.raises(SystemExit) as info:
        main(["--quick", "--readme", str(tmp_path / "README.md")])
    assert info.value.code == 2 and "smoke test" in capsys.readouterr().err


def test_benchmark_table_format():
    from benchmarks.handwriting import NUMBERS, NUMBERS_AS_ANSWERED, PRESENTATIONS, format_table

    rows = {p: {"correct": 9, "correct_read_once": 8, "total": 10} for p in PRESENTATIONS}
    rows[NUMBERS] = {"correct": 1, "correct_read_once": 0, "total": 2}
    rows[NUMBERS_AS_ANSWERED] = {"correct": 0, "correct_read_once": 0, "total": 2}
    table = format_table({"sets": {"A": {"results": rows}}})
    assert table.splitlines()[0] == "| presentation | A | read once |"
    assert table.splitlines()[1] == "|---|---|---|"
    assert "| **4-digit numbers (exact)** | 50.0% (1/2) | 0.0% |" in table
    assert "| the same, a withheld digit counted wrong | 0.0% (0/2) | 0.0% |" in table
    assert "| scan, 8x with a margin | 90.0% (9/10) | 80.0% |" in table
