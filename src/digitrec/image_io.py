"""Untrusted image bytes in, a PIL image out: the one place digitrec decodes user input.

:func:`load_image` takes a path, bytes, a PIL image or a NumPy array, and refuses with
:class:`ImageError` anything that is not a usable image: decompression bombs, absurd
sizes (the ``MAX_*`` limits below), empty, truncated and non-image files, formats
outside :data:`FORMATS`. Animated images (GIF, WebP, APNG, multi-page TIFF) are read
from their **first frame**; JPEG EXIF orientation is applied. The CLI, the server and
the Python API all load through here; :mod:`digitrec.images` then normalizes, from
:func:`load_picture`: the same checks, but a plain 8-bit PNG comes out as a NumPy array
decoded by libspng (faster than Pillow, the same pixels), and a large JPEG decoded reduced.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DigitrecError

try:
    import pyspng
except ImportError:  # no wheel for the platform (Intel macOS, Windows on Arm): Pillow decodes every PNG
    pyspng = None

# Limits on what load_image accepts. 40 megapixels is a 7300x5500 photo; a digit
# needs far fewer. Pillow's own DecompressionBombWarning (at ~89 Mpx) is an error too.
MAX_PIXELS = 40_000_000
MAX_SIDE = 20_000
# Longer side / shorter side. A row of ten digits is about 10:1; 1x10000 is absurd.
MAX_ASPECT = 50.0
MAX_FILE_BYTES = 100 * 1024 * 1024

# Formats Pillow may try; anything else is "not an image" (a smaller attack surface).
# (Phone JPEGs that Pillow reads as MPO come through the JPEG plugin.)
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")


# A decoded image: Pillow's, or 8-bit pixels as an array, (H, W) gray, (H, W, 3) RGB or
# (H, W, 4) RGBA uint8 (what load_picture gives for a plain PNG and an 8-bit array).
Picture: TypeAlias = Image.Image | np.ndarray

# A plain PNG: 8-bit gray, RGB or RGBA, with no chunk but these (the pixels, text, density,
# time, and colour-space notes that neither Pillow nor libspng applies when decoding). libspng
# (pyspng) decodes one straight into an array, to the same pixels as Pillow and NumPy, faster
# (a 280x280 RGBA drawing, CPU time, median of 5 x 400: 0.66 ms; Pillow then NumPy 1.55 ms,
# OpenCV's libpng 1.02 ms). A palette, 16 bits, tRNS transparency, EXIF orientation, an ICC
# profile or APNG frames leave the file to Pillow.
_PLAIN_PNG_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"pHYs", b"tIME", b"sRGB", b"gAMA", b"cHRM"}
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 6: 4}  # IHDR colour type -> channels (gray, RGB, RGBA)


class ImageError(DigitrecError):
    """The input is not a usable image: undecodable, empty, truncated, a bomb, absurd size."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _check_size(width: int, height: int, where: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(f"{where}: image has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(
            f"{where}: image too large ({width}x{height}; at most {MAX_PIXELS // 1_000_000} megapixels "
            f"and {MAX_SIDE} px a side)"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageError(f"{where}: absurd dimensions {width}x{height} (aspect ratio above {MAX_ASPECT:g}:1)")


def _check_finite(image: Image.Image, where: str) -> None:
    """A float image (a 32-bit TIFF, mode F) whose pixels are not all numbers has no ink to read:
    refused, as a float array with them is (NaN would reach the normalization as garbage)."""
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise ImageError(f"{where}: float image has NaN or infinite pixel values")


# warnings.catch_warnings changes process-wide state: two threads inside it at once can
# leave the "error" filter installed for good. Opening (parsing the header, where Pillow
# checks for bombs) is quick, so openers take turns; decoding runs in parallel.
_OPEN_LOCK = threading.Lock()


def _plain_png_header(data: bytes) -> tuple[int, int, int] | None:
    """Width, height and channels (1, 3 or 4) of a plain PNG (see _PLAIN_PNG_CHUNKS) whose
    chunks are all whole with their CRCs right, up to IEND; else None (Pillow then decodes the
    file or reports what is wrong with it, as for any other format). pyspng does not check
    CRCs itself."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    position, channels, width, height = len(_PNG_SIGNATURE), None, 0, 0
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length  # length, type, body, CRC
        if kind not in _PLAIN_PNG_CHUNKS or end > len(data) or (kind == b"IHDR") != (channels is None):
            return None
        if zlib.crc32(view[position + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        if kind == b"IHDR":
            width, height, bit_depth, colour_type = struct.unpack_from(">IIBB", data, position + 8)
            channels = _PNG_CHANNELS.get(colour_type) if length == 13 and bit_depth == 8 else None
            if channels is None:
                return None
        elif kind == b"IEND" and channels is not None:
            return width, height, channels
        position = end
    return None


def _plain_png_pixels(data: bytes, width: int, height: int, channels: int) -> np.ndarray | None:
    """A plain PNG's pixels decoded by libspng: (H, W), (H, W, 3) RGB or (H, W, 4) RGBA uint8;
    None if it does not decode as its header says. pyspng holds the GIL while it decodes, and
    has libspng skip the zlib stream's own checksum: a file whose only fault is that checksum
    (its pixels whole) is read here, where Pillow refuses it."""
    try:
        pixels = pyspng.load(data)
    except RuntimeError:
        return None
    expected = (height, width) if channels == 1 else (height, width, channels)
    if pixels.shape != expected or pixels.dtype != np.uint8:
        return None
    return pixels


def _decode(
    data: bytes, where: str, min_pixels: int | None = None, arrays: bool = False
) -> tuple[Picture, float]:
    """The decoded image and its scale against the file's own size (< 1 after draft decoding).
    ``arrays``: a plain PNG comes back as its pixels (an array), decoded by libspng."""
    if not data:
        raise ImageError(f"{where}: empty file")
    header = _plain_png_header(data) if arrays and pyspng is not None else None
    if header is not None:
        # Pillow's parse of the header (0.15 ms) is not needed: the chunks were just walked.
        width, height, channels = header
        _check_size(width, height, where)  # before decoding, as below
        pixels = _plain_png_pixels(data, width, height, channels)
        if pixels is not None:
            return pixels, 1.0
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Locally, not globally: Pillow's bomb warning is an error here only.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # registers every plugin (WebP and TIFF are not preloaded)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        # Our own cap (40 Mpx) is below Pillow's warning (89 Mpx): checked before decoding.
        _check_size(image.width, image.height, where)
        full_width = image.width
        if min_pixels is not None and image.format == "JPEG" and image.width * image.height > 2 * min_pixels:
            # libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size for a fraction of the full
            # decode's time (a 12-megapixel photo: 1/2 the time at 1/2 scale); draft() picks the
            # smallest scale that still has at least the requested size.
            factor = (min_pixels / (image.width * image.height)) ** 0.5
            image.draft(image.mode, (int(image.width * factor) + 1, int(image.height * factor) + 1))
        # Animated images: the first frame (Pillow opens on frame 0). load() forces the
        # full decode here, so a truncated file fails now and not later.
        image.load()
        scale = image.width / full_width
        # In place: with no EXIF orientation nothing happens (exif_transpose would copy the image).
        ImageOps.exif_transpose(image, in_place=True)
        _check_finite(image, where)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"{where}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image, or not a supported format ({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        raise ImageError(f"{where}: corrupt or truncated image ({exc})") from None
    return image, scale


def _from_array(array: np.ndarray, where: str) -> Image.Image:
    """A NumPy image: (H, W) gray or (H, W, C) with C in 1, 3, 4. uint8/uint16/bool as is;
    floats are taken as [0, 1], or as 0..255 when any value is above 2 (``255.0 - digit`` is a
    digit too), values a little outside (an interpolation's overshoot) clipped."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{where}: expected an array (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    _check_size(array.shape[1], array.shape[0], where)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{where}: array has NaN or infinite values")
        top = float(array.max()) if array.size else 0.0
        if top > 255.0:
            raise ImageError(f"{where}: float pixel values must be in [0, 1] or 0..255, got up to {top:g}")
        scale = 255.0 if top > 2.0 else 1.0
        array = (np.clip(array / scale, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(array.astype(np.int32), mode="I")
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"{where}: integer pixel values must be in 0..255 (or a 2-D uint16 array)")
        array = array.astype(np.uint8)
    else:
        raise ImageError(f"{where}: unsupported array dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(source: Any) -> Image.Image:
    """Decode ``source`` (a path, bytes, a PIL image or a NumPy array) into a PIL image.

    Raises :class:`ImageError` for anything that is not a usable image. Animated
    images give their first frame. The image keeps its mode; :func:`normalize_digit`
    handles every mode.
    """
    image = _load(source, None, arrays=False)[0]
    assert isinstance(image, Image.Image)
    return image


def load_picture(source: Any, min_pixels: int | None) -> tuple[Picture, float]:
    """Like :func:`load_image`, for digit normalization, which reads pixels: 8-bit pixels as an
    array where that is quicker (a plain PNG, decoded by libspng; an 8-bit array as given), else
    a PIL image; and a large JPEG (path or bytes, over ``2 * min_pixels``) may be decoded at 1/2,
    1/4 or 1/8 of its size, never below ``min_pixels``. With it, the scale (decoded px per
    original px, <= 1: the same on both axes up to rounding).

    For callers that area-average a large image down anyway: the decode of a phone photo costs
    less, and the checks are those of the full size.
    """
    return _load(source, min_pixels, arrays=True)


def _eight_bit_pixels(array: np.ndarray) -> np.ndarray | None:
    """An array that is 8-bit pixels already ((H, W), (H, W, 3) or (H, W, 4) uint8), contiguous; else None."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        return None
    return np.ascontiguousarray(array)


def _load(source: Any, min_pixels: int | None, arrays: bool) -> tuple[Picture, float]:
    where = _describe(source)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, where)
        _check_finite(source, where)
        return source, 1.0
    if isinstance(source, np.ndarray):
        pixels = _eight_bit_pixels(source) if arrays else None
        if pixels is not None:
            _check_size(pixels.shape[1], pixels.shape[0], where)
            return pixels, 1.0
        return _from_array(source, where), 1.0
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_FILE_BYTES:
            raise ImageError(f"{where}: file too large (over {MAX_FILE_BYTES // 2**20} MiB)")
        return _decode(bytes(source), where, min_pixels, arrays)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if path.is_dir():
                raise ImageError(f"{where}: is a folder, not an image file")
            if size > MAX_FILE_BYTES:
                raise ImageError(
                    f"{where}: file too large ({size} bytes; at most {MAX_FILE_BYTES // 2**20} MiB)"
                )
            # At most one byte past the limit: a pipe or a device (/dev/zero, a FIFO) has no size
            # to check beforehand, and reading it whole could fill the memory.
            with path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise ImageError(f"{where}: file too large (over {MAX_FILE_BYTES // 2**20} MiB)")
        except FileNotFoundError:
            raise ImageError(f"{where}: file not found") from None
        except ImageError:
            raise
        except OSError as exc:
            raise ImageError(f"{where}: cannot read ({exc.strerror or exc})") from None
        return _decode(data, where, min_pixels, arrays)
    raise ImageError(f"{where}: expected a path, bytes, a PIL image or a NumPy array")
