"""Reports: a run's figures as PNG files, and a page that shows them.

    digitrec report runs/tutorial-lenet-20261126-091500

writes into ``DIR/report/``::

    learning_curves.png     training and validation accuracy, training loss, per epoch
    confusion_matrix.png    heat map of (true digit, predicted digit) counts, counts in the cells
    per_class_accuracy.png  the share of each digit's test images that the model gets right
    mistakes.png            the model's most confident mistakes, with true and predicted labels
    index.html              the four figures and the headline numbers

Matplotlib draws through the Agg canvas directly (no pyplot, no GUI backend,
no global state); every file is rendered to bytes first and then written
atomically through :mod:`digitrec.fileio`.
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoints import load_model, read_metrics
from .config import TrainConfig
from .data import load_dataset
from .errors import DigitrecError
from .evaluation import EvalReport, report_from_predictions, score
from .fileio import write_bytes_atomic
from .models import count_parameters

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_DIR = "report"
FIGURE_FILES = {
    "learning_curves": "learning_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "per_class_accuracy": "per_class_accuracy.png",
    "mistakes": "mistakes.png",
    "accuracy_coverage": "accuracy_coverage.png",
}
INDEX_FILE = "index.html"
DEFAULT_MISTAKES = 40

_DPI = 110
_TRAIN_COLOR, _VAL_COLOR = "#1f77b4", "#d62728"


@dataclass(frozen=True)
class Mistake:
    index: int  # position in the test set
    true: int
    predicted: int
    confidence: float  # softmax probability of the predicted digit, in [0, 1]


@dataclass(frozen=True)
class RunAnalysis:
    """Everything a report shows, computed once."""

    run_dir: Path
    config: TrainConfig
    metrics: list[dict[str, Any]]
    evaluation: EvalReport
    dataset_name: str
    parameters: int
    test_images: torch.Tensor  # (N, 28, 28) uint8, on the CPU
    test_labels: torch.Tensor  # (N,) int64
    probabilities: torch.Tensor  # (N, 10) float32 softmax of the model's scores


def analyze_run(
    run_dir: str | os.PathLike[str], data_dir: str | None = None, device: str | torch.device = "cpu"
) -> RunAnalysis:
    """Load a run's model, score its dataset's test set, and read its metrics."""
    run_dir = Path(run_dir)
    model, config = load_model(run_dir, device)
    dataset = load_dataset(config.dataset, data_dir=data_dir or config.data_dir, test_only=True)
    scores = score(model, dataset.test_images.to(device)).cpu()  # (N, 10)
    return RunAnalysis(
        run_dir=run_dir,
        config=config,
        metrics=read_metrics(run_dir),
        evaluation=report_from_predictions(scores.argmax(1), dataset.test_labels),
        dataset_name=dataset.name,
        parameters=count_parameters(model),
        test_images=dataset.test_images,
        test_labels=dataset.test_labels,
        probabilities=torch.softmax(scores, dim=1),
    )


def find_mistakes(
    probabilities: torch.Tensor, labels: torch.Tensor, limit: int | None = None
) -> list[Mistake]:
    """Misclassified examples, the most confident first (ties: lower test index first).

    probabilities: (N, 10) rows summing to 1; labels: (N,) int.
    """
    confidence, predicted = probabilities.max(dim=1)
    wrong = (predicted != labels.to(predicted.device)).nonzero().flatten()
    # Stable sort on the negated confidence keeps equal confidences in index order.
    order = torch.sort(-confidence[wrong], stable=True).indices
    chosen = wrong[order][:limit] if limit is not None else wrong[order]
    return [Mistake(int(i), int(labels[i]), int(predicted[i]), float(confidence[i])) for i in chosen.tolist()]


# --- figures: each returns a matplotlib Figure; png_bytes() renders it ----------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DigitrecError("reports need matplotlib: pip install 'matplotlib>=3.7'") from None
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure: Agg, whatever the default backend
    return figure


def figure_style() -> Any:
    """A context with digitrec's font sizes; figures are built and saved inside it."""
    import matplotlib

    # Sizes in points; large enough to read on a laptop screen at 100 % zoom.
    return matplotlib.rc_context(
        {
            "font.size": 11,
            "axes.titlesize": 13,
            "axes.labelsize": 12,
            "xtick.labelsize": 11,
            "ytick.labelsize": 11,
            "legend.fontsize": 11,
            "figure.titlesize": 14,
        }
    )


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # Tick labels are made at draw time, so the style must hold while saving too.
    with figure_style():
        # No "Software" tag: the same run gives the same bytes whatever matplotlib wrote them.
        figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def learning_curves_figure(metrics: list[dict[str, Any]], title: str = "") -> Figure:
    """Accuracy (training, validation) and loss (training; validation when logged) per epoch."""
    from matplotlib.ticker import MaxNLocator

    with figure_style():
        figure = _figure(11, 4.4)
        acc_ax, loss_ax = figure.subplots(1, 2)
        epochs = [row["epoch"] for row in metrics]
        # With only a few epochs, markers show where the measurements are.
        marker = "o" if len(epochs) <= 30 else None
        acc_ax.plot(epochs, [r["train_accuracy"] for r in metrics], marker=marker, color=_TRAIN_COLOR)
        acc_ax.plot(epochs, [r["val_accuracy"] for r in metrics], marker=marker, color=_VAL_COLOR)
        acc_ax.set_title("Accuracy")
        acc_ax.set_ylabel("accuracy")
        acc_ax.legend(["training (running, over the epoch)", "validation (test set, end of epoch)"])
        loss_ax.plot(epochs, [r["train_loss"] for r in metrics], marker=marker, color=_TRAIN_COLOR)
        loss_legend = ["training (mean over the epoch)"]
        if all("val_loss" in r for r in metrics) and metrics:
            loss_ax.plot(epochs, [r["val_loss"] for r in metrics], marker=marker, color=_VAL_COLOR)
            loss_legend.append("validation")
        loss_ax.set_title("Loss (softmax cross-entropy)")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(loss_legend)
        for ax in (acc_ax, loss_ax):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if not metrics:
                ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
        if title:
            figure.suptitle(title)
    return figure


def confusion_matrix_figure(confusion: list[list[int]], title: str = "") -> Figure:
    """Heat map, rows = true digit, columns = predicted digit, count in every non-empty cell.

    The diagonal (correct answers, about a thousand per cell) is blue, the mistakes (a handful
    per cell) orange on their own log scale: on one shared linear scale every mistake would
    look as white as an empty cell.
    """
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    counts = np.asarray(confusion, dtype=np.int64)  # (10, 10)
    classes = len(counts)
    diagonal = np.eye(classes, dtype=bool)
    errors = np.where(diagonal, 0, counts)
    with figure_style():
        figure = _figure(7.8, 6.6)
        ax = figure.subplots()
        right_norm = Normalize(vmin=0, vmax=max(int(counts.diagonal().max()), 1) * 1.6)
        # vmin below 1 so that a single mistake is visibly tinted, not white.
        most_errors = max(int(errors.max()), 1)
        wrong_norm = LogNorm(vmin=0.4, vmax=most_errors)
        ax.imshow(np.ma.masked_where(~diagonal, counts), cmap="Blues", norm=right_norm)
        image = ax.imshow(
            np.ma.masked_where(diagonal | (counts == 0), counts), cmap="Oranges", norm=wrong_norm
        )
        colorbar = figure.colorbar(image, ax=ax, shrink=0.85)
        colorbar.set_label("mistakes per cell (log scale)")
        # Plain numbers (1, 2, 5, 10, ...) instead of powers of ten.
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= most_errors]
        colorbar.set_ticks(ticks, labels=[str(t) for t in ticks])
        colorbar.minorticks_off()
        # Counts above 999 need a smaller font to fit a cell.
        size = 10 if counts.max() < 1000 else 9
        for true in range(classes):
            for predicted in range(classes):
                count = int(counts[true, predicted])
                if count == 0:
                    continue
                norm = right_norm if true == predicted else wrong_norm
                ax.text(
                    predicted,
                    true,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if norm(count) > 0.6 else "black",  # white text on the dark cells
                )
        ax.set_xticks(range(classes))
        ax.set_yticks(range(classes))
        ax.set_xlabel("predicted digit")
        ax.set_ylabel("true digit")
        ax.xaxis.set_label_position("top")
        ax.xaxis.tick_top()
        ax.set_title(title or "Confusion matrix (test set)", pad=12)
    return figure


def per_class_accuracy_figure(report: EvalReport, title: str = "") -> Figure:
    """One bar per digit: the share of that digit's test images classified correctly (its recall)."""
    import numpy as np

    rows = report.per_class
    accuracy = np.array([row["recall"] for row in rows])
    support = [row["support"] for row in rows]
    with figure_style():
        figure = _figure(9, 4.8)
        ax = figure.subplots()
        digits = np.arange(len(rows))
        bars = ax.bar(digits, accuracy, color=_TRAIN_COLOR, width=0.7)
        ax.axhline(report.accuracy, color=_VAL_COLOR, linestyle="--", linewidth=1.5, zorder=2)
        # Zoom in on the top of the scale: per-digit accuracies differ by a few percent at most, which
        # bars starting at zero would hide. The axis label says where the axis starts.
        floor = max(0.0, np.floor((min(accuracy.min(), report.accuracy) - 0.03) * 20) / 20)
        ax.set_ylim(floor, 1.0 + (1.0 - floor) * 0.12)
        for bar, value in zip(bars, accuracy, strict=True):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                max(value, floor) + (1.0 - floor) * 0.01,
                f"{value:.3f}",
                ha="center",
                va="bottom",
                fontsize=10,
                # A white patch behind the number: the dashed overall line may run through it.
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
                zorder=3,
            )
        ax.set_xticks(digits, [f"{d}\n({n})" for d, n in zip(digits, support, strict=True)])
        ax.set_xlabel("true digit (number of test images)")
        ax.set_ylabel(f"accuracy (axis starts at {floor:.2f})" if floor > 0 else "accuracy")
        ax.grid(axis="y", alpha=0.3)
        # The overall accuracy goes in the title: a legend would sit on top of some bar.
        ax.set_title(title or f"Accuracy per digit (test set); dashed line: overall {report.accuracy:.4f}")
    return figure


def accuracy_coverage_figure(
    probabilities: Any, labels: Any, title: str = "", marked: float | None = None
) -> Figure:
    """Accuracy against coverage: answer only the most confident share of the images, how many are right?

    ``marked``: the coverage of the chosen setting (a dot on the curve), if any.
    """
    import numpy as np

    from .calibration import accuracy_coverage_curve

    coverage, accuracy = accuracy_coverage_curve(np.asarray(probabilities), np.asarray(labels))
    with figure_style():
        figure = _figure(7, 4.8)
        ax = figure.subplots()
        ax.plot(coverage, accuracy, color=_TRAIN_COLOR, linewidth=2)
        if marked is not None and len(coverage):
            index = min(len(coverage) - 1, max(0, round(marked * len(coverage)) - 1))
            ax.plot([coverage[index]], [accuracy[index]], "o", color=_VAL_COLOR)
            # The label inside the axes' lower left: clear of the tick labels, whatever the curve does.
            label = f"dot: the default setting, {coverage[index]:.1%} answered, {accuracy[index]:.2%} right"
            ax.text(
                0.03, 0.05, label, transform=ax.transAxes,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
            )  # fmt: skip
        floor = float(accuracy[len(accuracy) // 10 :].min()) if len(accuracy) else 0.9
        floor = max(0.0, np.floor((floor - 0.01) * 100) / 100)
        ax.set_ylim(floor, 1.0 + (1.0 - floor) * 0.05)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("coverage (share of images answered, most confident first)")
        ax.set_ylabel(f"accuracy of the answered (axis starts at {floor:.2f})" if floor > 0 else "accuracy")
        ax.grid(alpha=0.3)
        ax.set_title(title or "Accuracy against coverage")
    return figure


def mistakes_figure(
    images: torch.Tensor, mistakes: list[Mistake], total_mistakes: int | None = None, columns: int = 8
) -> Figure:
    """A gallery of misclassified test images, in the given order, labelled true -> predicted.

    images: (N, 28, 28) uint8, the whole test set (indexed by ``Mistake.index``).
    """
    total = len(mistakes) if total_mistakes is None else total_mistakes
    rows = max(1, -(-len(mistakes) // columns))  # ceiling division
    with figure_style():
        figure = _figure(columns * 1.45, rows * 1.85 + 0.7)
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, mistake in zip(axes.flat, mistakes, strict=False):
            # Dark ink on white paper, one image pixel per 28th of the tile, no smoothing.
            ax.imshow(images[mistake.index].cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
            confidence = _percent(mistake.confidence)
            ax.set_title(
                f"true {mistake.true} → {mistake.predicted}\n{confidence}  #{mistake.index}",
                fontsize=10,
                linespacing=1.25,
            )
        if not mistakes:
            title = (
                "No mistakes: every test image is classified correctly" if total == 0 else f"{total} mistakes"
            )
        else:
            title = (
                f"The {len(mistakes)} most confident mistakes of {total} "
                "(true digit → predicted digit, softmax probability, test-set index)"
            )
        figure.suptitle(title, fontsize=12)
    return figure


def _percent(probability: float) -> str:
    # 0.9996 would round to "100.0%", which reads as certainty; the model never is.
    return ">99.9%" if probability >= 0.9995 else f"{probability:.1%}"


# --- the page ---------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min ({value:.0f} s)"


def headline(analysis: RunAnalysis) -> dict[str, str]:
    """The numbers at the top of the page, as display strings, in display order."""
    evaluation, config, metrics = analysis.evaluation, analysis.config, analysis.metrics
    correct = round(evaluation.accuracy * evaluation.num_examples)
    train_seconds = sum(float(row.get("epoch_seconds", 0.0)) for row in metrics)
    values = {
        "test accuracy": f"{evaluation.accuracy:.4f} ({correct} of {evaluation.num_examples} images)",
        "mistakes": str(evaluation.num_examples - correct),
        "model": f"{config.model} ({analysis.parameters:,} parameters)",
        "recipe": config.recipe,
        "dataset": analysis.dataset_name,
        "epochs": str(metrics[-1]["epoch"] if metrics else 0),
        "training time": f"{_seconds(train_seconds)} (training passes only, evaluation excluded)",
        "hyper-parameters": f"batch {config.batch_size}, lr {config.lr}, momentum {config.momentum}, "
        f"weight decay {config.weight_decay}, seed {config.seed}",
    }
    if metrics and metrics[-1]["val_accuracy"] != evaluation.accuracy:
        values["note"] = (
            f"the test accuracy differs from the last validation accuracy that training logged "
            f"({metrics[-1]['val_accuracy']:.4f}): this report scored another test set than training did"
        )
    if metrics:
        values["last epoch"] = (
            f"training loss {metrics[-1]['train_loss']:.4f}, "
            f"training accuracy {metrics[-1]['train_accuracy']:.4f}, "
            f"validation accuracy {metrics[-1]['val_accuracy']:.4f}"
        )
    return values


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 0.3em 1em 0.3em 0; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; white-space: nowrap; }}
figure {{ margin: 2em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ color: #555; margin-top: 0.4em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<table>
{rows}
</table>
{figures}
<p><small>Written by digitrec {version} from <code>{run}</code>.</small></p>
</body>
</html>
"""

_CAPTIONS = {
    "learning_curves": "Learning curves. Training accuracy and loss are averaged over each epoch while "
    "the weights change; validation accuracy is measured on the test set at the end of each epoch.",
    "confusion_matrix": "Confusion matrix on the test set: row = true digit, column = predicted digit. "
    "The blue diagonal holds the correct answers; the orange cells are the mistakes, coloured on a "
    "logarithmic scale so that single mistakes show.",
    "per_class_accuracy": "Accuracy per digit: the share of each digit's test images classified "
    "correctly (its recall). The dashed line is the overall accuracy.",
    "mistakes": "The model's most confident mistakes: test images it got wrong, ordered by the "
    "softmax probability it gave its (wrong) answer. A model whose scores are bounded (the tutorial's "
    "LeNet ends in tanh, so its scores lie in [-1, 1]) never gets above about 45 %.",
    "accuracy_coverage": "Accuracy against coverage: if the model answered only its most confident "
    'share of the test images and said "not sure" for the rest, how many answers would be right. '
    "A curve that stays high to the right means its confidence tells right answers from wrong ones.",
}


def index_html(analysis: RunAnalysis) -> str:
    from . import __version__

    escape = html.escape
    rows = "\n".join(
        f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>"
        for key, value in headline(analysis).items()
    )
    figures = "\n".join(
        f'<figure>\n<img src="{escape(name)}" alt="{escape(key.replace("_", " "))}">\n'
        f"<figcaption>{escape(_CAPTIONS[key])}</figcaption>\n</figure>"
        for key, name in FIGURE_FILES.items()
    )
    title = f"digitrec report: {analysis.run_dir.name}"
    return _PAGE.format(
        title=escape(title),
        rows=rows,
        figures=figures,
        version=escape(__version__),
        run=escape(str(analysis.run_dir)),
    )


def write_report(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
    max_mistakes: int = DEFAULT_MISTAKES,
) -> list[Path]:
    """Write the figures and index.html into ``out_dir`` (default ``run_dir/report``); returns the paths."""
    if max_mistakes < 0:
        raise DigitrecError(f"max_mistakes must be >= 0, got {max_mistakes}")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / REPORT_DIR
    if out.exists() and not out.is_dir():
        raise DigitrecError(f"{out}: exists and is not a folder")
    analysis = analyze_run(run_dir, data_dir=data_dir, device=device)
    everything = find_mistakes(analysis.probabilities, analysis.test_labels)
    name = f"{analysis.config.model} ({analysis.config.recipe})"
    figures = {
        "learning_curves": learning_curves_figure(analysis.metrics, title=f"Learning curves: {name}"),
        "confusion_matrix": confusion_matrix_figure(analysis.evaluation.confusion),
        "per_class_accuracy": per_class_accuracy_figure(analysis.evaluation),
        "mistakes": mistakes_figure(analysis.test_images, everything[:max_mistakes], len(everything)),
        "accuracy_coverage": accuracy_coverage_figure(
            analysis.probabilities, analysis.test_labels, title=f"Accuracy against coverage: {name}"
        ),
    }
    written = []
    for key, figure in figures.items():
        path = out / FIGURE_FILES[key]
        write_bytes_atomic(path, png_bytes(figure))
        written.append(path)
    # The page last: once it exists, every figure it shows exists too.
    write_bytes_atomic(out / INDEX_FILE, index_html(analysis).encode("utf-8"))
    written.append(out / INDEX_FILE)
    return written
