"""``digitrec predict`` on real files (bad input to the decoder itself: test_image_io.py)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec.cli import main
from digitrec.images import normalize_digit
from digitrec.runs import default_model_dir

from .recognition_support import encode, first_unsure_digit, ink_on_paper


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """The bundled default model, read as a run directory."""
    return default_model_dir()


# --------------------------------------------------------------------------- the command


def _files(folder: Path, seven: np.ndarray) -> dict[str, Path]:
    """A good PNG, a good JPEG (inverted: chalk on a blackboard), and bad files."""
    files = {
        "good.png": encode(Image.fromarray(seven), "PNG"),
        "empty.png": b"",
        "text.jpg": b"hello, world\n",
        "inverted.jpg": encode(Image.fromarray(255 - seven), "JPEG", quality=90),
        "truncated.png": encode(Image.fromarray(seven), "PNG")[:500],
        "blank.png": encode(Image.new("L", (120, 120), 255), "PNG"),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def test_predict_reads_good_files_and_reports_each_bad_one(tmp_path, seven, run_dir, capsys):
    paths = _files(tmp_path, seven)
    code = main(["predict", *map(str, paths.values()), "--run", str(run_dir), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # some files failed
    assert [line["file"] for line in lines] == [str(p) for p in paths.values()]  # one line each, in order
    by_name = {Path(line["file"]).name: line for line in lines}
    assert by_name["empty.png"]["error"].endswith("empty file")
    assert "not an image" in by_name["text.jpg"]["error"]
    assert "truncated" in by_name["truncated.png"]["error"]
    assert by_name["good.png"]["digit"] == by_name["inverted.jpg"]["digit"] == 7
    assert len(by_name["good.png"]["probabilities"]) == 10 and "error" not in by_name["good.png"]
    assert by_name["blank.png"]["digit"] is None and by_name["blank.png"]["confidence"] == 0.0


def test_predict_text_output_and_exit_codes(tmp_path, seven, run_dir, capsys):
    paths = _files(tmp_path, seven)
    assert main(["predict", str(paths["good.png"]), "--run", str(run_dir), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{paths['good.png']}: 7 (confidence ") and "top-3: 7 " in out
    assert main(["predict", str(paths["blank.png"]), str(paths["empty.png"]), "--run", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert "no digit found" in captured.out
    assert captured.err.strip() == f"digitrec predict: error: {paths['empty.png']}: empty file"


def test_predict_json_top_k_and_min_confidence(tmp_path, seven, run_dir, capsys):
    path = _files(tmp_path, seven)["good.png"]
    assert main(["predict", str(path), "--run", str(run_dir), "--json", "--top-k", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["top_k"][0]["digit"] == 7 and len(row["top_k"]) == 2
    assert row["top_k"][0]["probability"] >= row["top_k"][1]["probability"]
    assert main(["predict", str(path), "--run", str(run_dir), "--json", "--min-confidence", "1"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["digit"] is None and strict["probabilities"] == row["probabilities"]


def test_predict_and_evaluate_read_an_unsure_digit_once_with_no_second_look(tmp_path, mnist, capsys):
    from digitrec.recognition import Recognizer

    rec = Recognizer.default(backend="auto")
    images = mnist.test_images[:3000].numpy()  # (3000, 28, 28) uint8
    index = first_unsure_digit(rec, images)
    label = int(mnist.test_labels[index])
    (tmp_path / str(label)).mkdir()
    path = tmp_path / str(label) / "unsure.png"  # already MNIST's form: read as it is
    Image.fromarray(images[index]).save(path)
    looked = rec.predict_pixels(images[index]).probabilities
    rec.second_look = False
    once = rec.predict_pixels(images[index]).probabilities
    assert not np.allclose(looked, once, atol=1e-4)
    for flags, want in (([], looked), (["--no-second-look"], once), (["--second-look"], looked)):
        assert main(["predict", str(path), "--json", *flags]) == 0
        got = json.loads(capsys.readouterr().out)["probabilities"]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert main(["evaluate", "--images", str(tmp_path), "--json", *flags]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["num_examples"] == 1
        assert report["accuracy"] == float(int(np.argmax(want)) == label)


def test_predict_multi(tmp_path, mnist, run_dir, capsys):
    images = mnist.test_images[:3].numpy()  # 7 2 1
    row = np.hstack([np.pad(d, 6) for d in images])  # white on black, 6 px apart
    path = tmp_path / "row.png"
    Image.fromarray(255 - row).resize((row.shape[1] * 4, row.shape[0] * 4)).save(path)
    assert main(["predict", str(path), "--run", str(run_dir), "--json", "--multi"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["number"] == "721" and [d["digit"] for d in out["digits"]] == [7, 2, 1]
    assert all(len(d["bbox"]) == 4 for d in out["digits"])
    assert main(["predict", str(path), "--run", str(run_dir), "--multi"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: 721 [7 (")


def test_show_input_saves_what_the_model_saw(tmp_path, seven, run_dir, capsys):
    paths = _files(tmp_path, seven)
    out = tmp_path / "seen.png"
    assert main(["predict", str(paths["good.png"]), "--run", str(run_dir), "--show-input", str(out)]) == 0
    saved = np.asarray(Image.open(out))
    assert saved.shape == (28, 28)
    np.testing.assert_array_equal(saved, normalize_digit(paths["good.png"]))
    # Several files: OUT-1.png, OUT-2.png, ... in the order given; a failed file writes nothing.
    files = [paths["good.png"], paths["empty.png"], paths["inverted.jpg"]]
    assert main(["predict", *map(str, files), "--run", str(run_dir), "--show-input", str(out)]) == 1
    assert (tmp_path / "seen-1.png").is_file() and not (tmp_path / "seen-2.png").exists()
    assert np.asarray(Image.open(tmp_path / "seen-3.png")).shape == (28, 28)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_predict_reads_stdin(seven, run_dir, capsys, monkeypatch):
    data = encode(Image.fromarray(seven), "PNG")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["predict", "-", "--run", str(run_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["file"] == "-" and row["digit"] == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "--top-k: must be >= 1"),
        (["--top-k", "11"], "--top-k must be between 1 and 10"),
        (["--min-confidence", "-0.1"], "--min-confidence: must be >= 0"),
        (["--min-confidence", "1.5"], "--min-confidence must be between 0 and 1"),
        (["--show-input", "{tmp}/seen.nope"], "unknown image extension"),
        (["--run", "{tmp}/missing"], "run directory not found"),
    ],
)
def test_predict_usage_errors(args, message, tmp_path, seven, capsys):
    path = tmp_path / "good.png"
    Image.fromarray(seven).save(path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = main(["predict", str(path), *args])
    except SystemExit as exc:  # argparse's own checks exit; ours return
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_predict_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- folders, workers, CSV


def _tree(root: Path, digits: tuple[np.ndarray, np.ndarray]) -> list[Path]:
    """12 MNIST digits as PNG (9 at the top, 3 in sub/), a JPEG, a corrupt PNG, and files that
    are not images to read (notes.txt, a hidden .png, a hidden folder): the image files, sorted."""
    images, _ = digits
    (root / "sub").mkdir()
    (root / ".cache").mkdir()
    paths = [root / f"d{k:02d}.png" for k in range(9)] + [root / "sub" / f"e{k}.png" for k in range(3)]
    for path, digit in zip(paths, images, strict=False):
        Image.fromarray(ink_on_paper(digit, height=60, canvas=96)).save(path)
    Image.fromarray(ink_on_paper(images[20], height=60, canvas=96)).convert("RGB").save(root / "photo.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(ink_on_paper(images[21], height=60, canvas=96)).save(root / ".hidden.png")
    Image.fromarray(ink_on_paper(images[22], height=60, canvas=96)).save(root / ".cache" / "x.png")
    return sorted([*paths, root / "photo.jpg", root / "broken.png"], key=lambda p: p.relative_to(root).parts)


def test_predict_folder_with_workers_same_rows_same_order(tmp_path, digits, run_dir, capsys):
    """A folder is read recursively and sorted; --jobs 2 gives exactly --jobs 1's output; an
    unreadable file is an error row and the others are still read (exit 1)."""
    expected = _tree(tmp_path, digits)
    outputs = {}
    for jobs in ("1", "2"):
        code = main(["predict", str(tmp_path), "--run", str(run_dir), "--json", "--jobs", jobs])
        assert code == 1
        outputs[jobs] = capsys.readouterr().out
    assert outputs["1"] == outputs["2"]
    rows = [json.loads(line) for line in outputs["1"].splitlines()]
    assert [row["file"] for row in rows] == [str(p) for p in expected]
    by_name = {Path(row["file"]).name: row for row in rows}
    assert (
        "corrupt or truncated" in by_name["broken.png"]["error"]
        or "not an image" in by_name["broken.png"]["error"]
    )
    labels = digits[1]
    assert sum(by_name[f"d{k:02d}.png"]["digit"] == labels[k] for k in range(9)) >= 8


def test_the_bundled_model_predicts_without_torch(tmp_path, digits, run_dir, capsys):
    """With no --run, predict scores the bundled model's shipped ONNX copy on onnxruntime and never
    imports torch (half a second to start instead of two and a half): the same rows as the
    bundled weights on PyTorch (--run), probabilities to float rounding."""
    import subprocess

    pytest.importorskip("onnxruntime")
    _tree(tmp_path, digits)
    code = (
        "import sys\n"
        "from digitrec.cli import main\n"
        f"rc = main(['predict', {str(tmp_path)!r}, '--json', '--jobs', '2'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # broken.png is an error row
    assert main(["predict", str(tmp_path), "--run", str(run_dir), "--json", "--jobs", "1"]) == 1
    via_onnx = [json.loads(line) for line in proc.stdout.splitlines()]
    via_torch = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(via_onnx) == len(via_torch) == 14
    for fast, slow in zip(via_onnx, via_torch, strict=True):
        assert (fast["file"], fast.get("digit"), fast.get("error")) == (
            slow["file"],
            slow.get("digit"),
            slow.get("error"),
        )
        np.testing.assert_allclose(fast.get("probabilities", []), slow.get("probabilities", []), atol=1e-5)


def test_one_clean_drawing_is_read_without_scipy_or_torch(tmp_path, seven):
    """Reading one image is mostly start-up: predict imports neither torch nor SciPy for a clean
    drawing of one digit (SciPy's ndimage took 0.3 s of the 0.5 s; the normalization imports it
    only where a picture needs it)."""
    import subprocess

    pytest.importorskip("onnxruntime")
    image = tmp_path / "seven.png"
    Image.fromarray(seven).save(image)
    code = (
        "import sys\n"
        "from digitrec.cli import main\n"
        f"rc = main(['predict', {str(image)!r}])\n"
        "print(sorted(name for name in ('scipy', 'torch') if name in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    answer, imported = proc.stdout.splitlines()
    assert answer.startswith(f"{image}: 7 (confidence ") and imported == "[]"


def test_onnxruntime_telemetry_stays_off_unless_the_user_chose(tmp_path, seven):
    """onnxruntime's official Linux builds keep a device id under ~/.cache/Microsoft, leave a .ses
    file in $TMPDIR and send usage events unless ORT_DISABLE_TELEMETRY is set before it loads:
    digitrec sets it, and keeps a value the user gave."""
    import subprocess

    pytest.importorskip("onnxruntime")
    image = tmp_path / "seven.png"
    Image.fromarray(seven).save(image)
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ORT_DISABLE_TELEMETRY", "GITHUB_ACTIONS", "TF_BUILD")
    }
    env.update(HOME=str(home), TMPDIR=str(scratch), XDG_CACHE_HOME=str(home / ".cache"))
    code = (
        "import os, sys\n"
        "from digitrec.cli import main\n"
        f"rc = main(['predict', {str(image)!r}])\n"
        "print(os.environ.get('ORT_DISABLE_TELEMETRY'), 'onnxruntime' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "1 True"  # onnxruntime scored, its telemetry off
    assert list(scratch.iterdir()) == [] and list(home.rglob("*")) == []
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "ORT_DISABLE_TELEMETRY": "0"},
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "0 True"


def test_predict_glob_and_folder_errors(tmp_path, digits, run_dir, capsys):
    _tree(tmp_path, digits)
    assert main(["predict", str(tmp_path), "--run", str(run_dir), "--glob", "e*.png", "--jobs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / "sub" / f"e{k}.png") for k in range(3)]
    # A folder where nothing matches: a usage error, one line, nothing read.
    assert main(["predict", str(tmp_path), "--run", str(run_dir), "--glob", "*.webp"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = f"{tmp_path}: no file matches --glob '*.webp' in the folder or its sub-folders"
    assert captured.err.strip() == f"digitrec predict: error: {message}"


def test_predict_skips_a_fifo_in_a_folder(tmp_path, seven, run_dir, capsys):
    """A FIFO named like an image inside a folder is skipped, as grep -r skips it (before: the
    run blocked on it forever, waiting for a writer)."""
    Image.fromarray(seven).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")  # no writer: opening it for reading would block
    assert main(["predict", str(tmp_path), "--run", str(run_dir), "--jobs", "1"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{tmp_path / 'a.png'}: 7 ")


@pytest.mark.parametrize("flag", ["--output", "--show-input"])
def test_predict_refuses_to_write_over_an_image_it_reads(tmp_path, seven, run_dir, capsys, flag):
    """--output a.png or --show-input a.png among the inputs replaced the user's image with the
    results (CSV, or the 28x28 input) after reading it; now one line before anything is read."""
    image = tmp_path / "a.png"
    Image.fromarray(seven).save(image)
    before = image.read_bytes()
    other = tmp_path / "sub" / ".." / "a.png"  # the same file by another name
    assert main(["predict", str(image), "--run", str(run_dir), flag, str(other)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    message = f"{other}: is one of the images to read; writing there would replace it"
    assert captured.err.strip() == f"digitrec predict: error: {message}"
    assert image.read_bytes() == before


def test_predict_csv_quoting_error_rows_and_output_file(tmp_path, seven, run_dir, capsys):
    import csv

    good = tmp_path / 'a "quoted", name.png'
    Image.fromarray(seven).save(good)
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    missing = tmp_path / "missing.png"
    out = tmp_path / "results" / "out.csv"
    args = ["predict", str(good), str(blank), str(missing), "--run", str(run_dir), "--format", "csv"]
    assert main([*args, "--output", str(out)]) == 1
    assert capsys.readouterr().out == ""  # the rows went to the file
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["file", "digit", "confidence", "rejected", "error", *[f"p{k}" for k in range(10)]]
    assert rows[1][:2] == [str(good), "7"] and rows[1][3:5] == ["", ""]
    assert abs(sum(map(float, rows[1][5:])) - 1) < 1e-6
    assert rows[2] == [str(blank), "", "0.0", "blank", "", *[""] * 10]  # no digit found: no guess
    assert rows[3][:4] == [str(missing), "", "", ""] and rows[3][4].endswith("file not found")
    assert not list(out.parent.glob(".*.tmp"))
    # The same on stdout; --multi adds the number column.
    assert main([*args[:-2], "--json", "--format", "csv"]) == 2
    assert "--json is --format jsonl" in capsys.readouterr().err
    assert main(["predict", str(good), "--run", str(run_dir), "--format", "csv", "--multi"]) == 0
    header, row = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert header[:6] == ["file", "digit", "confidence", "number", "rejected", "error"] and row[3] == "7"


def test_progress_bar_only_on_a_terminal(tmp_path, digits, run_dir, capsys, monkeypatch):
    paths = [str(p) for p in _tree(tmp_path, digits) if p.name.startswith("d")][:3]
    assert main(["predict", *paths, "--run", str(run_dir), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.splitlines()) == 3  # a pipe: rows only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["predict", *paths, "--run", str(run_dir), "--json"]) == 0
    captured = capsys.readouterr()
    # The bar on stderr only (tqdm redraws at most every 0.1 s: how far it got depends on the machine).
    assert "/3 [" in captured.err and "img/s" in captured.err and len(captured.out.splitlines()) == 3
    assert main(["predict", *paths, "--run", str(run_dir), "--json", "--progress", "off"]) == 0
    assert capsys.readouterr().err == ""


def test_a_file_name_that_is_not_utf8_is_written_back_as_its_bytes(tmp_path, seven, run_dir, capsys):
    import os
    import subprocess

    # A name from another system's encoding (Latin-1 "ÿ7.png"): Python sees it as a surrogate escape.
    path = tmp_path / os.fsdecode(b"\xff7.png")
    Image.fromarray(seven).save(path, format="PNG")
    out = tmp_path / "out.csv"
    args = ["predict", str(path), "--run", str(run_dir)]
    assert main([*args, "--format", "csv", "--output", str(out)]) == 0
    assert os.fsencode(str(path)) + b",7," in out.read_bytes()
    # Printed on a stdout whose errors are strict (as in an en_US.UTF-8 locale).
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    command = [sys.executable, "-m", "digitrec", *args]
    result = subprocess.run(command, capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.startswith(os.fsencode(str(path)) + b": 7 "), result.stdout


def test_a_reader_that_stops_early_ends_it_quietly(tmp_path, seven):
    import subprocess

    # `digitrec predict DIR | head -1`: once head exits, the writes fail with EPIPE.
    folder = tmp_path / "many"
    folder.mkdir()
    png = encode(Image.fromarray(seven), "PNG")
    for k in range(300):  # 300 rows of JSON, about 100 KB: more than a pipe holds
        (folder / f"{k:03d}.png").write_bytes(png)
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitrec", "predict", "--json", "--jobs", "1", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # the first row, then the reader is gone
    proc.stdout.close()
    errors = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
