"""The drawing page in a real browser: Debian's chromium driven by Playwright, a real server.

The browser is the system's ``/usr/bin/chromium`` (``.ci/run`` installs it);
Playwright never downloads one. Every request the page makes is recorded; one
to anywhere but the server fails the test (the page must work offline).

Set ``DIGITREC_SCREENSHOT_DIR`` to also save the screenshots there (the
README's docs/serve-screenshot.png comes from this test).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, encode, on_paper

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.slow  # a browser and a server: seconds per test (CI runs slow tests too)

CHROMIUM = os.environ.get("DIGITREC_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# Digits as pen strokes, in fractions of a square pad: what a person draws with a mouse.
Strokes = list[list[tuple[float, float]]]
ZERO = [
    [
        (0.5 + 0.2 * math.sin(t / 24 * 2 * math.pi), 0.5 - 0.3 * math.cos(t / 24 * 2 * math.pi))
        for t in range(25)
    ]
]
DIGITS: dict[int, Strokes] = {
    0: ZERO,
    1: [[(0.52, 0.2), (0.5, 0.8)]],
    2: [[(0.32, 0.32), (0.4, 0.22), (0.55, 0.2), (0.66, 0.28), (0.66, 0.4), (0.55, 0.52), (0.32, 0.78),
         (0.7, 0.78)]],
    3: [[(0.33, 0.25), (0.5, 0.2), (0.64, 0.27), (0.62, 0.4), (0.48, 0.48), (0.64, 0.56), (0.66, 0.7),
         (0.52, 0.8), (0.32, 0.75)]],
    4: [[(0.58, 0.2), (0.3, 0.6), (0.72, 0.6)], [(0.6, 0.35), (0.6, 0.82)]],
    7: [[(0.3, 0.22), (0.7, 0.22), (0.45, 0.8)]],
}  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


class Page:
    """A browser tab on the server's page, recording every request and error it makes."""

    def __init__(self, browser: Any, server: Server, **context: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1100, "height": 820}, **context)
        self.page = self.context.new_page()
        self.server = server
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        self.page.route("**/*", self._only_the_server)
        self.page.goto(server.url + "/")
        self.page.wait_for_selector("#model-status[data-state=ready]", timeout=30_000)

    def _only_the_server(self, route: Any) -> None:
        url = urllib.parse.urlsplit(route.request.url)
        if url.scheme in ("data", "blob") or (url.hostname == "127.0.0.1" and url.port == self.server.port):
            route.continue_()
        else:
            self.foreign.append(route.request.url)
            route.abort()

    def draw(self, strokes: Strokes, cell: int = 0, cells: int = 1) -> None:
        """Draw with the mouse; the pad is ``cells`` squares side by side, draw in square ``cell``."""
        box = self.page.locator("#canvas").bounding_box()
        for stroke in strokes:
            points = [
                (box["x"] + (cell + x) / cells * box["width"], box["y"] + y * box["height"])
                for x, y in stroke
            ]
            self.page.mouse.move(*points[0])
            self.page.mouse.down()
            for (x0, y0), (x1, y1) in itertools.pairwise(points):
                for step in range(1, 7):
                    self.page.mouse.move(x0 + (x1 - x0) * step / 6, y0 + (y1 - y0) * step / 6)
            self.page.mouse.up()
            self.settle()

    def settle(self) -> None:
        """Wait until the answer to the latest stroke or upload is on screen."""
        self.page.wait_for_selector("#result-card[aria-busy=false]", timeout=30_000)

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector)).strip()

    def winner(self) -> list[str]:
        return [
            str(li.get_attribute("data-digit")) for li in self.page.locator(".bar[data-winner=true]").all()
        ]

    def close(self) -> None:
        assert not self.foreign, f"the page tried to reach other hosts: {self.foreign}"
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def tab(browser: Any, server: Server) -> Iterator[Page]:
    page = Page(browser, server)
    yield page
    page.close()


def save_screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True, animations="disabled")  # bars at their final width
    assert path.stat().st_size > 10_000  # a real rendering, not a blank page
    if os.environ.get("DIGITREC_SCREENSHOT_DIR"):
        shutil.copy(path, Path(os.environ["DIGITREC_SCREENSHOT_DIR"]) / name)
    return path


def test_draw_digits_and_read_them(tab: Page, tmp_path: Path) -> None:
    assert tab.text("#digit") == "–" and tab.winner() == []
    for digit, strokes in DIGITS.items():
        tab.page.click("#clear-button")
        tab.draw(strokes)
        assert tab.text("#digit") == str(digit), f"drew {digit}, page reads {tab.text('#digit')}"
        assert tab.winner() == [str(digit)]
        # The winning bar is drawn as wide as its probability, and the bars add up to 100%.
        values = [float(v.strip("%<")) for v in tab.page.locator(".bar-value").all_inner_texts()]
        assert sum(values) == pytest.approx(100, abs=1.5) and max(values) == values[digit]
        fill = tab.page.locator(f".bar[data-digit='{digit}'] .bar-fill").evaluate("e => e.style.width")
        assert float(fill.rstrip("%")) == pytest.approx(values[digit], abs=0.2)
        assert tab.text("#announce").startswith(f"Read {digit},")
        src = tab.page.get_attribute("#input-image", "src")
        assert src and src.startswith("data:image/png;base64,") and tab.page.is_visible("#input-image")
        # What the model saw is 28x28, shown enlarged with crisp pixels.
        size = tab.page.locator("#input-image").evaluate("e => [e.naturalWidth, e.naturalHeight]")
        assert size == [28, 28]
        if digit == 7:
            save_screenshot(tab.page, tmp_path, "serve-screenshot.png")


# Not digits: a letter A (the drawing a new user tried first) and a five-pointed star.
LETTER_A: Strokes = [[(0.3, 0.8), (0.5, 0.2), (0.7, 0.8)], [(0.38, 0.6), (0.62, 0.6)]]
STAR: Strokes = [
    [
        (0.5 + 0.3 * math.sin(k * 4 * math.pi / 5), 0.52 - 0.3 * math.cos(k * 4 * math.pi / 5))
        for k in range(6)
    ]
]


@pytest.mark.parametrize("strokes", [LETTER_A, STAR], ids=["letter A", "star"])
def test_the_page_says_when_a_drawing_is_not_a_digit(tab: Page, strokes: Strokes) -> None:
    tab.draw(strokes)
    assert tab.text("#confidence") == "That doesn't look like a digit"
    assert tab.text("#digit") == "?" and tab.winner() == []
    assert tab.text("#announce") == "That doesn't look like a digit."
    tab.page.click("#clear-button")
    tab.draw(DIGITS[7])  # and a digit after it is read as before
    assert tab.text("#digit") == "7"


def test_undo_clear_and_keyboard(tab: Page) -> None:
    assert tab.page.is_disabled("#undo-button")
    tab.draw(DIGITS[4])  # two strokes
    assert tab.text("#digit") == "4"
    tab.page.click("#undo-button")  # back to the first stroke only: a new answer
    tab.settle()
    assert tab.text("#digit") != "–" and not tab.page.is_disabled("#undo-button")
    tab.page.keyboard.press("Control+z")  # nothing left: back to the start
    assert tab.text("#digit") == "–" and tab.page.is_disabled("#undo-button")
    tab.draw(DIGITS[1])
    tab.page.keyboard.press("Escape")
    assert tab.text("#digit") == "–" and tab.winner() == []
    # Focus order by keyboard from the top of a fresh page: skip link, mode, Clear, Upload
    # (Undo is disabled: nothing to undo yet), then the footer's links.
    tab.page.reload()
    tab.page.wait_for_selector("#model-status[data-state=ready]")
    order = []
    for _ in range(5):
        tab.page.keyboard.press("Tab")
        order.append(tab.page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order[:4] == ["skip", "mode-single", "clear-button", "upload-button"], order
    # Enter on the focused Clear button clears.
    tab.page.focus("#clear-button")
    tab.page.keyboard.press("Enter")
    assert tab.text("#digit") == "–"
    # Every button has an accessible name; the result is a live region.
    for button in tab.page.locator("button").all():
        assert button.inner_text().strip() or button.get_attribute("aria-label")
    assert tab.page.get_attribute("#announce", "aria-live") == "polite"
    assert tab.page.get_attribute("#canvas", "aria-label")


def test_upload_an_image_and_a_bad_file(tab: Page, mnist: Any) -> None:
    index = 3
    png = encode(on_paper(mnist.test_images[index].numpy(), size=500))
    tab.page.set_input_files(
        "#file-input", files=[{"name": "scan.png", "mimeType": "image/png", "buffer": png}]
    )
    tab.page.wait_for_selector("#digit[data-state=value]")
    tab.settle()
    assert tab.text("#digit") == str(int(mnist.test_labels[index]))
    assert "scan.png" in tab.text("#file-note")
    assert tab.page.is_hidden("#error")
    # Not an image: the server's error is shown, in an alert region; nothing crashes.
    tab.page.set_input_files(
        "#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}]
    )
    tab.page.wait_for_selector("#error:not([hidden])")
    assert "image" in tab.text("#error") and tab.page.get_attribute("#error", "role") == "alert"
    assert tab.text("#digit") == "–"


def test_multi_digit_mode_reads_a_number(tab: Page, tmp_path: Path) -> None:
    tab.page.click("label[for=mode-multi]")
    assert tab.page.is_checked("#mode-multi") and tab.text("#draw-title") == "Write a number"
    box = tab.page.locator("#canvas").bounding_box()
    assert box["width"] == pytest.approx(3 * box["height"], rel=0.05)  # a wide pad for a row of digits
    for cell, digit in enumerate((4, 0, 7)):
        tab.draw(DIGITS[digit], cell=cell, cells=3)
    assert tab.text("#digit") == "407"
    chips = tab.page.locator(".chip")
    assert chips.count() == 3
    assert tab.page.locator("#seen-strip img").count() == 3
    # Choosing a digit shows its own probabilities.
    chips.nth(2).click()
    assert tab.page.get_attribute(".chip:nth-child(3)", "aria-pressed") == "true"
    assert tab.winner() == ["7"]
    assert tab.text("#announce").startswith("Read the number 4 0 7")
    save_screenshot(tab.page, tmp_path, "serve-multi.png")


def test_touch_drawing(browser: Any, server: Server) -> None:
    """A finger on a touch screen: Chromium's touch events become pointer events (pointerType touch)."""
    touch = Page(browser, server, has_touch=True, is_mobile=True)
    try:
        cdp = touch.context.new_cdp_session(touch.page)
        box = touch.page.locator("#canvas").bounding_box()
        points = [
            (box["x"] + 0.5 * box["width"], box["y"] + (0.2 + 0.6 * i / 12) * box["height"])
            for i in range(13)
        ]
        events = ["touchStart"] + ["touchMove"] * (len(points) - 2) + ["touchEnd"]
        for kind, (x, y) in zip(events, points, strict=True):
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [] if kind == "touchEnd" else [{"x": x, "y": y}]},
            )
        touch.settle()
        touch.page.wait_for_selector("#digit[data-state=value]")
        assert touch.text("#digit") == "1"
    finally:
        touch.close()
