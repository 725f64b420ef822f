"""The untrusted-input boundary: bad image input to ``load_image``, one test each."""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from digitrec.image_io import MAX_PIXELS, ImageError, load_image, load_picture
from digitrec.images import normalize_digit

from .recognition_support import encode


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid all-black 1-bit (or 8-bit) gray PNG of any size, built row by row: a few KB for
    100 megapixels."""
    row = b"\x00" + bytes((width * bit_depth + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_float_image_with_pixels_that_are_not_numbers(tmp_path, bad):
    """32-bit float TIFFs (mode F) are read; one whose pixels are not all finite is refused, as
    such a float array is (before: NaN reached the normalization as RuntimeWarnings and "no
    digit", inf was read as ink)."""
    pixels = np.zeros((40, 40), np.float32)
    pixels[10:30, 18:22] = bad
    path = tmp_path / "float.tiff"
    Image.fromarray(pixels, mode="F").save(path)
    with pytest.raises(ImageError, match=r"float\.tiff: float image has NaN or infinite pixel values"):
        load_image(path)
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_image(path.read_bytes())
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_image(Image.fromarray(pixels, mode="F"))
    pixels[10:30, 18:22] = 1.0  # the same stroke, finite: read
    Image.fromarray(pixels, mode="F").save(path)
    assert load_image(path).mode == "F"


def test_a_file_without_end_is_read_no_further_than_the_limit():
    """A device or a pipe has no size to check first: /dev/zero is refused at the byte limit,
    not read until the memory runs out."""
    with pytest.raises(ImageError, match="/dev/zero: file too large"):
        load_image("/dev/zero")


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
    with pytest.raises(
        ImageError, match=r"<ndarray>: float pixel values must be in \[0, 1\] or 0\.\.255, got up to 300"
    ):
        load_image(np.full((8, 8), 300.0))


def test_a_float_array_is_read_in_0_1_or_in_0_255(seven):
    """Floats in [0, 1] and the same image in 0..255 (``255.0 - digit``, as a mode F image is read)
    are one picture; before, 0..255 floats were clipped to [0, 1] and read as almost all white."""
    as_bytes = normalize_digit(seven)
    assert np.array_equal(normalize_digit(seven.astype(np.float32) / 255.0), as_bytes)
    assert np.array_equal(normalize_digit(seven.astype(np.float32)), as_bytes)
    assert np.array_equal(normalize_digit(seven.astype(np.float64)), as_bytes)
    # A little outside [0, 1] (a bicubic resize's overshoot) is clipped, not a 0..255 image.
    overshoot = seven.astype(np.float32) / 255.0 * 1.1 - 0.05  # in [-0.05, 1.05]
    assert np.array_equal(np.asarray(load_image(overshoot)), np.asarray(load_image(np.clip(overshoot, 0, 1))))
    assert np.asarray(load_image(overshoot)).max() == 255


# --------------------------------------------------------------------------- plain PNGs by libspng


def _random_pixels(mode: str, seed: int = 0) -> np.ndarray:
    """Noise in a smooth ramp: Pillow's encoder picks several PNG row filters for it, so the
    decoder's unfiltering is exercised."""
    rng = np.random.default_rng(seed)
    shape = (37, 53) if mode == "L" else (37, 53, len(mode))
    ramp = np.linspace(0, 200, 53)[None, :] if mode == "L" else np.linspace(0, 200, 53)[None, :, None]
    return np.clip(ramp + rng.integers(0, 56, shape), 0, 255).astype(np.uint8)


def interlaced_png(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit PNG of (H, W) gray or (H, W, 3|4) pixels (Pillow writes none)."""
    height, width = pixels.shape[:2]
    colour_type = {2: 0, 3: 2, 4: 6}[pixels.ndim if pixels.ndim == 2 else pixels.shape[2]]
    passes = [
        (0, 0, 8, 8),
        (0, 4, 8, 8),
        (4, 0, 8, 4),
        (0, 2, 4, 4),
        (2, 0, 4, 2),
        (0, 1, 2, 2),
        (1, 0, 2, 1),
    ]
    raw = b""
    for top, left, down, across in passes:
        reduced = pixels[top::down, left::across]
        if reduced.size:  # each row: filter type 0, then the pass's pixels of that row
            raw += b"".join(b"\x00" + row.tobytes() for row in reduced)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_a_plain_png_is_decoded_to_the_same_pixels_as_pillow(mode):
    """An 8-bit gray, RGB or RGBA PNG (text chunks and all, interlaced or not) reaches the
    normalization as an array decoded by libspng, pixel for pixel what Pillow decodes."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a drawing program")
    text.add_text("Comment", "compressed " * 20, zip=True)
    pixels = _random_pixels(mode)
    data = encode(Image.fromarray(pixels, mode), "PNG", pnginfo=text, dpi=(300, 300))
    for png in (data, interlaced_png(pixels)):
        picture, scale = load_picture(png, None)
        assert isinstance(picture, np.ndarray) and scale == 1.0
        np.testing.assert_array_equal(picture, np.asarray(load_image(png)))
        np.testing.assert_array_equal(picture, pixels)
    assert Image.open(io.BytesIO(interlaced_png(pixels))).info.get("interlace") == 1


def test_without_pyspng_pillow_decodes_every_png(monkeypatch, seven):
    """Where pyspng is not installed (no wheel for Intel macOS or Windows on Arm, so pip leaves it
    out), plain PNGs are Pillow's like every other file, and normalize to the same digit."""
    import digitrec.image_io

    data = encode(Image.fromarray(np.repeat(seven[:, :, None], 3, axis=2)), "PNG")  # RGB
    expected = normalize_digit(data)
    assert isinstance(load_picture(data, None)[0], np.ndarray)
    monkeypatch.setattr(digitrec.image_io, "pyspng", None)
    assert isinstance(load_picture(data, None)[0], Image.Image)
    np.testing.assert_array_equal(normalize_digit(data), expected)


def _turned_by_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    return encode(Image.fromarray(_random_pixels("RGB")), "PNG", exif=exif.tobytes())


PILLOWS_PNGS = {
    "palette": lambda: encode(Image.fromarray(_random_pixels("RGB")).quantize(16), "PNG"),
    "16-bit gray": lambda: encode(Image.fromarray(_random_pixels("L").astype(np.uint16) * 257), "PNG"),
    "transparent colour": lambda: encode(
        Image.fromarray(_random_pixels("RGB")), "PNG", transparency=(0, 0, 0)
    ),
    "exif orientation": _turned_by_exif,
    "icc profile": lambda: encode(Image.fromarray(_random_pixels("RGB")), "PNG", icc_profile=b"\0" * 128),
    "1-bit": lambda: bilevel_png(40, 30),
    "animated": lambda: encode(
        Image.fromarray(_random_pixels("L")), "PNG", save_all=True, append_images=[Image.new("L", (53, 37))]
    ),
}


@pytest.mark.parametrize("kind", sorted(PILLOWS_PNGS))
def test_other_pngs_are_decoded_by_pillow(kind):
    """A PNG with anything libspng would read differently (a palette, 16 bits, a
    transparent colour, an EXIF orientation, an ICC profile, 1 bit, frames) is Pillow's, as
    before: the same image as load_image gives."""
    data = PILLOWS_PNGS[kind]()
    picture, _ = load_picture(data, None)
    assert isinstance(picture, Image.Image)
    reference = load_image(data)
    assert picture.mode == reference.mode
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(reference))
    if kind == "exif orientation":
        assert picture.size == (37, 53)  # turned upright, as the EXIF says


def test_a_plain_png_over_the_size_cap_is_refused_before_decoding():
    """The libspng path reads the size from the header it checked and refuses 49 megapixels
    (49 MB of pixels in 48 KB) before any decoding, as the Pillow path does."""
    data = bilevel_png(7_000, 7_000, bit_depth=8)
    with pytest.raises(ImageError, match=r"image too large \(7000x7000"):
        load_picture(data, None)


def test_a_broken_png_is_reported_as_before_with_nothing_on_stderr(capfd, seven):
    """A PNG with a wrong CRC (libspng does not check them: a damaged text chunk would pass),
    a damaged body, a missing end or a cut-off body never reaches libspng. Pillow decodes or
    refuses it exactly as load_image does."""
    from PIL import PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "a drawing")
    data = encode(Image.fromarray(seven), "PNG", pnginfo=text)
    bad_text = bytearray(data)
    bad_text[data.index(b"a drawing")] ^= 0x20  # "A drawing", the CRC left as it was
    bad_body = bytearray(data)
    bad_body[data.index(b"IDAT") + 40] ^= 0xFF
    cut = [data[: len(data) // 2], data[: -len(_png_chunk(b"IEND", b""))]]
    for broken in [bytes(bad_text), bytes(bad_body), *cut]:
        try:
            expected = np.asarray(load_image(broken))
        except ImageError as exc:
            with pytest.raises(ImageError, match=re.escape(str(exc).split(" (")[0])):
                load_picture(broken, None)
        else:
            picture, _ = load_picture(broken, None)
            assert isinstance(picture, Image.Image)
            np.testing.assert_array_equal(np.asarray(picture), expected)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("channels", [0, 3, 4])
def test_the_normalization_of_8_bit_arrays_and_plain_pngs_is_that_of_pillows_image(seven, channels):
    """The array path (a plain PNG, an 8-bit array handed in) gives the very digit that Pillow's
    image of the same pixels gives."""
    pixels = seven if channels == 0 else np.repeat(seven[:, :, None], channels, axis=2)
    if channels:
        pixels = pixels.copy()
        pixels[..., 2] = np.maximum(pixels[..., 2], 60)  # bluish ink: the colour path
        pixels[..., 3:] = 255  # RGBA: opaque, as the drawing page sends it
    image = Image.fromarray(pixels)
    expected = normalize_digit(image)
    assert expected is not None
    np.testing.assert_array_equal(normalize_digit(pixels), expected)
    np.testing.assert_array_equal(normalize_digit(encode(image, "PNG")), expected)
    assert isinstance(load_picture(encode(image, "PNG"), None)[0], np.ndarray)
