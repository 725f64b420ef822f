"""Drawn training data (synthetic.py) and the training mixture (mixture.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from digitrec import synthetic
from digitrec.data import Dataset, load_dataset
from digitrec.errors import DigitrecError
from digitrec.handwriting import default_shared_data
from digitrec.images import normalize_digit
from digitrec.mixture import NOT_A_DIGIT, build_mixture, drawn


def test_fonts_and_stroke_fonts_are_installed() -> None:
    # .ci/run installs them (README, "Testing"); training's default recipe needs them.
    synthetic.check_sources()
    assert len(synthetic.font_files()) >= 20
    glyphs = synthetic.hershey_glyphs()
    assert all(len(glyphs[str(d)]) >= 6 for d in range(10))


def test_ci_installs_every_font_package() -> None:
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    for package in [*synthetic.FONT_PACKAGES.split(), synthetic.HERSHEY_PACKAGE]:
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", ci), package


def test_missing_fonts_are_one_line_naming_the_packages(tmp_path) -> None:
    with pytest.raises(DigitrecError, match=r"found none: apt-get install fonts-dejavu-core") as error:
        synthetic.check_sources(roots=(tmp_path,))
    assert "\n" not in str(error.value)
    with pytest.raises(DigitrecError, match="apt-get install hershey-fonts-data"):
        synthetic.check_sources(hershey_dir=tmp_path)


def test_hershey_glyphs_parse_to_strokes_in_ascii_order() -> None:
    one = synthetic.hershey_glyphs()["1"][0]  # futural's 1: one stroke up and one down
    points = np.concatenate([np.asarray(s) for s in one])
    assert points[:, 1].max() - points[:, 1].min() > 15  # a tall glyph, y in Hershey units
    dot = synthetic.hershey_glyphs()["."][0]
    assert np.ptp(np.concatenate([np.asarray(s) for s in dot])[:, 1]) < 4  # a full stop is small


@pytest.mark.parametrize("label", range(10))
def test_every_digit_is_drawn_and_normalizes(label: int) -> None:
    for index in range(6):
        image = synthetic.draw_digit(label, synthetic.sample_rng(7, "drawn-digits", index))
        assert image.mode == "L" and image.size == (synthetic.OUT, synthetic.OUT)
        pixels = normalize_digit(image)
        assert pixels is not None and pixels.max() == 255


@pytest.mark.parametrize(
    ("label", "shape"),
    [(label, shape) for label, shapes in synthetic.STROKE_DIGITS.items() for shape in range(len(shapes))],
)
def test_every_hand_made_shape_is_drawn_and_normalizes(label: int, shape: int) -> None:
    for seed in range(4):
        ink = synthetic._draw_strokes(synthetic.STROKE_DIGITS[label][shape], np.random.default_rng(seed))
        assert ink.shape == (synthetic.CANVAS, synthetic.CANVAS) and ink.max() == 1.0
        assert not (ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any())  # nothing cut off
        pixels = normalize_digit(synthetic.to_paper(ink, np.random.default_rng(seed)))
        assert pixels is not None and pixels.max() == 255


def test_pens_range_from_fine_to_felt_tip() -> None:
    # optdigits-orig's writers used felt-tip pens: strokes a quarter of the digit's height (its
    # flagged 1s read as 4 when training only saw thinner pens).
    widths = []
    for seed in range(40):
        ink = synthetic._draw_strokes([[(0.5, 0.0), (0.5, 1.0)]], np.random.default_rng(seed)) > 0.5
        rows = np.where(ink.any(axis=1))[0]
        widths.append(ink.sum() / (rows[-1] - rows[0] + 1) / (rows[-1] - rows[0] + 1))  # width / height
    assert min(widths) < 0.08 and max(widths) > 0.2


def test_drawing_is_deterministic_per_sample() -> None:
    first = np.asarray(synthetic.draw_digit(4, synthetic.sample_rng(1, "drawn-digits", 3)))
    again = np.asarray(synthetic.draw_digit(4, synthetic.sample_rng(1, "drawn-digits", 3)))
    other = np.asarray(synthetic.draw_digit(4, synthetic.sample_rng(1, "drawn-digits", 4)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_letters_never_include_digit_shapes_and_held_out_fonts_stay_out() -> None:
    assert not set(synthetic.LETTERS) & set("OoIlij")
    assert len(synthetic.LETTERS) == 46
    seen = {p.name for p in synthetic.letter_fonts(held_out=False)}
    unseen = {p.name for p in synthetic.letter_fonts(held_out=True)}
    assert seen and unseen and not seen & unseen
    assert all(any(name.startswith(f) for f in synthetic.HELD_OUT_FONTS) for name in unseen)


@pytest.mark.parametrize("kind", synthetic.NOT_DIGIT_KINDS)
def test_every_kind_of_non_digit_is_drawn(kind: str) -> None:
    image = synthetic.draw_not_digit(kind, synthetic.sample_rng(5, kind, 0))
    assert np.asarray(image).std() > 1  # some ink on the paper


def test_the_mixture_draws_every_kind_of_non_digit() -> None:
    # Version 4 drew NOT_DIGIT_KINDS[i % 6] and made every even i a letter: shapes and hatching,
    # at even positions, were never drawn, and the benchmark's shapes went unflagged.
    from collections import Counter

    from digitrec.mixture import not_digit_kind

    counts = Counter(not_digit_kind(index) for index in range(600))
    assert set(counts) == set(synthetic.NOT_DIGIT_KINDS)
    assert counts["letter"] == 300
    assert all(counts[kind] == 60 for kind in synthetic.NOT_DIGIT_KINDS if kind != "letter")


def test_the_mixture_adds_each_ingredient_and_holds_digits_out(tmp_path) -> None:
    mnist = load_dataset("mnist")
    base = Dataset("mnist", mnist.train_images[:1200], mnist.train_labels[:1200],
                   mnist.test_images[:10], mnist.test_labels[:10], mnist.source)  # fmt: skip
    mix = {"drawn-digits": 30, "not-digits": 20, "fashion-mnist": 10}
    mixture = build_mixture(base, mix, seed=3, calibrate=True, cache_dir=tmp_path)
    held = 1200 // 12
    digits, digit_labels = drawn("drawn-digits", 30, 3, tmp_path)  # from the cache the build wrote
    not_digits, not_digit_labels = drawn("not-digits", 20, 3, tmp_path)
    assert len(list((tmp_path / "mixture").iterdir())) == 2  # read back, not drawn again
    assert len(digits) >= 27 and set(digit_labels.tolist()) <= set(range(10))  # blanks left out
    assert (not_digit_labels == NOT_A_DIGIT).all()
    labels = mixture.dataset.train_labels
    assert len(labels) == 1200 - held + len(digits) + len(not_digits) + 10
    assert int((labels == NOT_A_DIGIT).sum()) == len(not_digits) + 10  # not-digits and fashion-mnist
    assert mixture.dataset.train_images.dtype == torch.uint8
    assert mixture.holdout_labels is not None and len(mixture.holdout_labels) == held
    assert torch.equal(mixture.dataset.test_images, base.test_images)
    start = 1200 - held
    assert np.array_equal(digits, mixture.dataset.train_images[start : start + len(digits)].numpy())


def test_the_cache_key_follows_the_drawing_and_normalizing_code(tmp_path, monkeypatch) -> None:
    # A reverted experiment once left cache entries under the version number the next change
    # used; the key now also covers the source of synthetic.py and images.py.
    from digitrec import images
    from digitrec.mixture import _cache_key

    before = _cache_key("drawn-digits", 42, 30_000)
    assert _cache_key("drawn-digits", 42, 30_000) == before  # stable while the code is
    edited = tmp_path / "images.py"
    edited.write_bytes(Path(str(images.__file__)).read_bytes() + b"\nMNIST_STROKE = 0.15\n")
    monkeypatch.setattr(images, "__file__", str(edited))
    assert _cache_key("drawn-digits", 42, 30_000) != before


def test_usps_train_joins_the_mixture_normalized_and_cached(tmp_path) -> None:
    mnist = load_dataset("mnist")
    base = Dataset("mnist", mnist.train_images[:100], mnist.train_labels[:100],
                   mnist.test_images[:10], mnist.test_labels[:10], mnist.source)  # fmt: skip
    usps = str(default_shared_data() / "usps")
    mixture = build_mixture(base, {"usps-train": 50}, seed=0, usps_dir=usps, cache_dir=tmp_path)
    added = mixture.dataset.train_images[100:]
    assert added.shape == (50, 28, 28)
    assert (added.flatten(1).max(1).values == 255).all()  # every digit found and scaled to full ink
    assert mixture.holdout_images is None
    # Only a build that normalized all of USPS train writes it to the cache.
    assert not (tmp_path / "mixture").exists() or not list((tmp_path / "mixture").iterdir())


def test_mixture_errors_are_one_line(tmp_path) -> None:
    mnist = load_dataset("mnist")
    with pytest.raises(DigitrecError, match="unknown mixture ingredients: usps-test"):
        build_mixture(mnist, {"usps-test": 5}, seed=0)
    with pytest.raises(DigitrecError, match=r"USPS folder not found.*--usps-dir"):
        build_mixture(mnist, {"usps-train": 5}, seed=0, usps_dir=str(tmp_path / "nowhere"))


def _ink_box(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the dark ink's bounding box on a light page."""
    rows, cols = np.where((image < 128).any(axis=1))[0], np.where((image < 128).any(axis=0))[0]
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_rescan_presents_a_digit_on_other_scanners_grids() -> None:
    # A narrow 1 (20x4 px of ink): stretched to fill the box half the time, its aspect kept otherwise;
    # on grids of 8 to 32 cells, each cell 2-8 px; reproducible per sample.
    one = np.zeros((28, 28), np.uint8)
    one[4:24, 12:16] = 255
    rngs = [synthetic.sample_rng(2, "rescanned-digits", i) for i in range(60)]
    pages = [np.asarray(synthetic.rescan(one, rng)) for rng in rngs]
    again = np.asarray(synthetic.rescan(one, synthetic.sample_rng(2, "rescanned-digits", 0)))
    assert np.array_equal(pages[0], again)
    aspects = [width / height for height, width in map(_ink_box, pages)]
    assert sum(a > 0.8 for a in aspects) >= 15 and sum(a < 0.4 for a in aspects) >= 15
    for page in pages:
        assert page.shape[0] == page.shape[1] and page[0, 0] == 255  # a square scan, white margin
        assert 8 * 2 * 1.5 <= page.shape[0] <= 32 * 8 * 1.5 + 1
    assert all(normalize_digit(page) is not None for page in pages)


def test_rescanned_digits_come_from_the_given_digits_and_are_cached(tmp_path) -> None:
    from digitrec.mixture import rescanned

    mnist = load_dataset("mnist")
    inks = list(mnist.train_images[:300].numpy())
    labels = mnist.train_labels[:300].numpy()
    images, picked = rescanned(inks, labels, 40, seed=5, cache_dir=tmp_path)
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8
    assert (images.reshape(40, -1).max(axis=1) == 255).all()
    # Each sample keeps its source's label: a 16x16 USPS digit and a 28x28 MNIST one alike.
    sevens = [ink for ink, label in zip(inks, labels, strict=True) if label == 7]
    usps_like = [np.asarray(ink[::2, ::2]) for ink in sevens]  # 14x14 ink maps
    _, only_sevens = rescanned(usps_like, np.full(len(usps_like), 7), 10, seed=5, cache_dir=tmp_path)
    assert (only_sevens == 7).all()
    assert len(list((tmp_path / "mixture").iterdir())) == 2
    again, again_labels = rescanned(inks, labels, 40, seed=5, cache_dir=tmp_path)  # read back
    assert np.array_equal(images, again) and np.array_equal(picked, again_labels)
    other, _ = rescanned(inks, labels, 40, seed=6, cache_dir=tmp_path)
    assert not np.array_equal(images, other)


def test_the_mixture_rescans_only_digits_it_trains_on(tmp_path) -> None:
    # With calibrate, the digits held out for calibration are never rescanned into training.
    mnist = load_dataset("mnist")
    base = Dataset("mnist", mnist.train_images[:240], mnist.train_labels[:240],
                   mnist.test_images[:10], mnist.test_labels[:10], mnist.source)  # fmt: skip
    from digitrec.mixture import rescanned

    mixture = build_mixture(base, {"rescanned-digits": 500}, seed=1, calibrate=True, cache_dir=tmp_path)
    kept = 240 - 240 // 12
    assert mixture.holdout_labels is not None and len(mixture.holdout_labels) == 240 // 12
    trained_inks = list(mixture.dataset.train_images[:kept].numpy())
    trained_labels = mixture.dataset.train_labels[:kept].numpy()
    # Every digit trained on, each rescanned once: exactly what rescanning those digits alone gives
    # (drawn afresh in another cache folder, not read back).
    expected, expected_labels = rescanned(trained_inks, trained_labels, 500, 1, tmp_path / "other")
    assert len(expected) == kept
    assert np.array_equal(mixture.dataset.train_images[kept:].numpy(), expected)
    assert np.array_equal(mixture.dataset.train_labels[kept:].numpy(), expected_labels)
