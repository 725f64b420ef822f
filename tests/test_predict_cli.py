"""Bad image input (one test each) and ``digitrec predict`` on real files."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitrec.cli import main
from digitrec.data import Dataset
from digitrec.images import MAX_PIXELS, ImageError, load_image, normalize_digit
from digitrec.runs import default_model_dir

from .recognition_support import encode, ink_on_paper


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """The bundled default model, read as a run directory."""
    return default_model_dir()


@pytest.fixture(scope="module")
def seven(mnist: Dataset) -> np.ndarray:
    """MNIST test digit 0 (a 7) as black ink on white, 200 px tall on 320x320."""
    return ink_on_paper(mnist.test_images[0].numpy())


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, built row by row: a few KB for 100 megapixels."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- bad input, one each


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 10)
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(seven, fmt):
    data = encode(Image.fromarray(seven), fmt)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused():
    """100 megapixels in 13 KB: Pillow warns (above ~89 Mpx); the warning is an error here."""
    data = bilevel_png(10_000, 10_000)
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data)
    # Only inside load_image: elsewhere Pillow's warning stays a warning.
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(data))


def test_bomb_check_leaves_no_global_warning_filter(seven):
    """Many threads loading at once (as a server does): the filters are the same afterwards."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    data = [encode(Image.fromarray(seven), "PNG"), bilevel_png(10_000, 10_000)] * 16

    def attempt(blob: bytes) -> str:
        try:
            return load_image(blob).mode
        except ImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, data))
    assert results[0] == "L" and "decompression bomb" in results[1]
    assert len(set(results)) == 2
    assert warnings.filters == before


def test_pixel_cap_below_pillows_limit():
    """48 megapixels: under Pillow's bomb threshold, over ours (40 Mpx), refused before decoding."""
    assert MAX_PIXELS < 8000 * 6000
    with pytest.raises(ImageError, match="too large"):
        load_image(bilevel_png(8000, 6000))


def test_absurd_dimensions():
    with pytest.raises(ImageError, match="absurd dimensions 1x10000"):
        load_image(bilevel_png(1, 10_000))
    with pytest.raises(ImageError, match="absurd dimensions"):
        load_image(np.zeros((2, 5000), np.uint8))


def test_animated_image_reads_its_first_frame(seven):
    """An animated GIF (and APNG): the first frame is read, the others ignored (documented)."""
    first = Image.fromarray(seven)
    other = Image.fromarray(np.full_like(seven, 255))  # a blank second frame
    for fmt in ("GIF", "PNG"):
        data = encode(first, fmt, save_all=True, append_images=[other, first.rotate(90)], duration=100)
        opened = Image.open(io.BytesIO(data))
        assert getattr(opened, "n_frames", 1) == 3  # really animated
        out = normalize_digit(data)
        assert out is not None
        np.testing.assert_array_equal(out, normalize_digit(encode(first, fmt)))


def test_other_bad_sources(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="expected an array"):
        load_image(np.zeros((4, 4, 2)))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((8, 8), np.nan))
    with pytest.raises(ImageError, match="expected a path"):
        load_image(12345)


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
