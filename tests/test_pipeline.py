"""The server's decode step (digitrec.pipeline.decode, run in its decode processes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digitrec.pipeline import decode
from digitrec.recognition import prepare

from .recognition_support import encode, ink_on_paper


def photo_sized(digit: np.ndarray) -> Image.Image:
    """A 3-megapixel RGB picture of a digit on slightly tinted paper: a JPEG of it is decoded at
    reduced size wherever a file or bytes are normalized."""
    paper = ink_on_paper(digit, height=900, canvas=1500).astype(np.float32)
    rgb = np.stack([paper * 0.97, paper * 0.95, paper * 0.9], axis=2)
    return Image.fromarray(rgb.astype(np.uint8)).resize((2000, 1500))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_request_body_is_read_as_predict_reads_the_same_bytes(mnist, fmt):
    """A body decodes to the very input `digitrec predict` and Recognizer.predict make of the
    same bytes: a plain PNG through libspng, a large JPEG at reduced size (before, the server
    decoded every body whole with Pillow first, and a large JPEG's input came out a level or
    two apart in some pixels)."""
    digit = mnist.test_images[0].numpy()  # (28, 28) uint8, a 7
    image = Image.fromarray(ink_on_paper(digit)) if fmt == "PNG" else photo_sized(digit)
    body = encode(image, fmt)
    status, pixels = decode("image", body)
    assert status == "ok" and pixels is not None
    np.testing.assert_array_equal(pixels, prepare(body))


def test_a_bad_body_gets_its_400_and_a_count_its_number(seven):
    status, code, message, kind = decode("image", b"not an image")
    assert (status, code, kind) == ("error", 400, "bad_image") and message.startswith("image: ")
    assert decode("count", encode(Image.fromarray(seven), "PNG")) == ("ok", 1)
