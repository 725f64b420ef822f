"""digitrec report: real runs on a small real-MNIST subset, real PNGs decoded with Pillow."""

import io
import itertools
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from digitrec import reports
from digitrec.checkpoints import load_model, read_metrics
from digitrec.cli import main
from digitrec.config import recipe_config
from digitrec.data import bundled_mnist_dir
from digitrec.evaluation import evaluate
from digitrec.training import train

from .conftest import cli_exit_code

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_mnist_dir):
    run = tmp_path_factory.mktemp("report-run") / "mlp"
    # data_dir in the config: the report scores the same 500 test images that training validated on.
    config = recipe_config("tutorial-mlp", epochs=3, data_dir=str(small_mnist_dir))
    train(config, out_dir=run, log=None)
    return run


@pytest.fixture(scope="module")
def analysis(run_dir):
    return reports.analyze_run(run_dir)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def _decoded(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        return image.convert("L")


def test_report_command_writes_figures_and_page(run_dir, small_mnist, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    folder = run_dir / "report"
    names = {*reports.FIGURE_FILES.values(), reports.INDEX_FILE}
    assert {p.name for p in folder.iterdir()} == names  # no temp files left behind
    assert all(f"wrote {folder / name}" in out for name in names)
    for name in reports.FIGURE_FILES.values():
        path = folder / name
        assert 10_000 < path.stat().st_size < 2_000_000, (name, path.stat().st_size)
        image = _decoded(path)
        assert 600 <= image.width <= 2000 and 400 <= image.height <= 2000, (name, image.size)
        low, high = image.getextrema()
        assert low < 60 and high > 240, name  # dark text or ink on a white page, not a blank image

    page = (folder / reports.INDEX_FILE).read_text("utf-8")
    parser = _Images()
    parser.feed(page)
    assert sorted(parser.sources) == sorted(reports.FIGURE_FILES.values())
    model, _ = load_model(run_dir)
    accuracy = evaluate(model, small_mnist.test_images, small_mnist.test_labels).accuracy
    assert accuracy == read_metrics(run_dir)[-1]["val_accuracy"]
    assert f"{accuracy:.4f} ({round(accuracy * 500)} of 500 images)" in page
    assert re.search(r"<th>epochs</th><td>3</td>", page)
    assert "mlp (109,386 parameters)" in page and "tutorial-mlp" in page
    assert "differs from" not in page


def test_page_warns_when_the_test_set_is_not_the_one_trained_with(run_dir, tmp_path):
    # Scoring the full MNIST test set instead of the run's 500 images: the numbers cannot agree.
    reports.write_report(run_dir, out_dir=tmp_path, data_dir=str(bundled_mnist_dir()))
    page = (tmp_path / reports.INDEX_FILE).read_text("utf-8")
    assert "of 10000 images" in page and "differs from the last validation accuracy" in page


def test_mistakes_are_all_wrong_and_most_confident_first(analysis):
    mistakes = reports.find_mistakes(analysis.probabilities, analysis.test_labels)
    wrong = analysis.evaluation.num_examples - round(analysis.evaluation.accuracy * 500)
    assert len(mistakes) == wrong > 0
    for m in mistakes:
        assert m.true == int(analysis.test_labels[m.index]) != m.predicted
        assert m.predicted == int(analysis.probabilities[m.index].argmax())
        assert m.confidence == pytest.approx(float(analysis.probabilities[m.index].max()))
    confidences = [m.confidence for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert len(reports.find_mistakes(analysis.probabilities, analysis.test_labels, limit=5)) == 5
    # The gallery shows its count: the requested number, or fewer when there are fewer mistakes.
    figure = reports.mistakes_figure(analysis.test_images, mistakes[:7], len(mistakes))
    assert sum(1 for ax in figure.axes if ax.images) == 7


def _text_boxes(figure):
    """(text, window box) of every piece of text that a draw puts on the page."""
    from matplotlib.text import Text

    with reports.figure_style():
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        # Matplotlib keeps tick objects outside the view limits; it does not draw them.
        hidden = set()
        for ax in figure.axes:
            for axis in (ax.xaxis, ax.yaxis):
                drawn = ax.axison and axis.get_visible()  # set_axis_off() hides ticks and labels
                if not drawn:
                    hidden.add(id(axis.label))
                low, high = sorted(axis.get_view_interval())
                for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                    if not drawn or not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                        hidden.update({id(tick.label1), id(tick.label2)})
        texts = [
            t
            for t in figure.findobj(Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in hidden
        ]
        return [(t.get_text(), t.get_window_extent(renderer)) for t in texts]


def _figures(analysis):
    mistakes = reports.find_mistakes(analysis.probabilities, analysis.test_labels)
    return {
        "learning_curves": reports.learning_curves_figure(analysis.metrics, title="Learning curves: mlp"),
        "confusion_matrix": reports.confusion_matrix_figure(analysis.evaluation.confusion),
        "per_class_accuracy": reports.per_class_accuracy_figure(analysis.evaluation),
        "mistakes": reports.mistakes_figure(analysis.test_images, mistakes[:40], len(mistakes)),
        "accuracy_coverage": reports.accuracy_coverage_figure(
            analysis.probabilities, analysis.test_labels, title="Accuracy against coverage: mlp", marked=0.9
        ),
    }


def test_no_text_overlaps_or_leaves_the_figure(analysis):
    for name, figure in _figures(analysis).items():
        boxes = _text_boxes(figure)
        assert len(boxes) > 10, name
        page = figure.bbox
        for text, box in boxes:
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, (name, text)
            assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, (name, text)
        for (text_a, a), (text_b, b) in itertools.combinations(boxes, 2):
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 1 or overlap_y <= 1, (name, text_a, text_b)


def test_accuracy_coverage_curve_rises_as_coverage_falls(analysis):
    from digitrec.calibration import accuracy_coverage_curve

    coverage, accuracy = accuracy_coverage_curve(analysis.probabilities.numpy(), analysis.test_labels.numpy())
    assert coverage[-1] == 1.0 and accuracy[-1] == pytest.approx(analysis.evaluation.accuracy)
    # Answering only the most confident tenth is at least as accurate as answering everything.
    assert accuracy[len(accuracy) // 10] >= accuracy[-1]


def test_confusion_matrix_shows_every_nonzero_count(analysis):
    figure = reports.confusion_matrix_figure(analysis.evaluation.confusion)
    shown = [t.get_text() for t in figure.axes[0].texts]
    expected = [str(c) for row in analysis.evaluation.confusion for c in row if c]
    assert shown == expected


def test_one_epoch_and_zero_mistakes_still_render(analysis):
    png = reports.png_bytes(reports.learning_curves_figure(analysis.metrics[:1]))
    assert png[:8] == PNG_SIGNATURE
    png = reports.png_bytes(reports.mistakes_figure(analysis.test_images, [], 0))
    with Image.open(io.BytesIO(png)) as image:
        assert image.width > 300


def test_same_run_gives_the_same_bytes(analysis):
    a = reports.png_bytes(reports.confusion_matrix_figure(analysis.evaluation.confusion))
    b = reports.png_bytes(reports.confusion_matrix_figure(analysis.evaluation.confusion))
    assert a == b


def test_report_into_another_folder_with_fewer_mistakes(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert main(["report", str(run_dir), "--out", str(out), "--mistakes", "3"]) == 0
    capsys.readouterr()
    assert (out / "index.html").is_file() and _decoded(out / "mistakes.png").height < 600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "{tmp}/missing"], "run directory not found"),
        (["report", "{tmp}"], "config.json: missing"),
        (["report", "{run}", "--mistakes", "-1"], "--mistakes: must be >= 0"),
        (["report", "{run}", "--out", "{file}"], "exists and is not a folder"),
    ],
)
def test_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys, args, message):
    (tmp_path / "a-file").write_text("x")
    args = [a.format(tmp=tmp_path, run=run_dir, file=tmp_path / "a-file") for a in args]
    assert cli_exit_code(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "a-file").read_text() == "x"
