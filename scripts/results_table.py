"""Generate the README's results table from real run directories (never typed by hand).

    python scripts/results_table.py RUN [RUN ...] [--tta] [--ensemble RUN,RUN,...] [--readme README.md]

Runs of the same recipe (different seeds) are grouped: accuracy is shown as the mean and, with
several seeds, the spread (min-max). Training time is the sum of the logged ``epoch_seconds``
(training passes only) on the machine that trained the run. ``--tta`` adds a column with the
accuracy under test-time augmentation (``digitrec evaluate --tta``), evaluated now. Each
``--ensemble`` adds a row for those runs' averaged probabilities, evaluated now, as
``digitrec evaluate RUN RUN ...`` does. With ``--readme`` the table replaces the text between
``<!-- results-table:start -->`` and ``<!-- results-table:end -->``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from digitrec.checkpoints import load_model, read_metrics
from digitrec.config import TrainConfig
from digitrec.data import load_dataset
from digitrec.errors import DigitrecError
from digitrec.evaluation import evaluate
from digitrec.models import count_macs, count_parameters


def _test_accuracy(loaded: list[tuple[Any, TrainConfig]], tta: bool) -> float:
    """Accuracy of one loaded run, or of several averaged, on the test set their configs name."""
    config = loaded[0][1]
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    return evaluate([m for m, _ in loaded], dataset.test_images, dataset.test_labels, tta=tta).accuracy


def ensemble_label(recipes: list[str]) -> str:
    """ "3 best + best-mlp" for the recipes of an ensemble's members, in order of first appearance."""
    counts: dict[str, int] = {}
    for recipe in recipes:
        counts[recipe] = counts.get(recipe, 0) + 1
    return " + ".join(f"{count} {recipe}" if count > 1 else recipe for recipe, count in counts.items())


def _percent(values: list[float]) -> str:
    text = f"{100 * statistics.mean(values):.2f}%"
    if len(values) > 1:
        text += f" ({100 * min(values):.2f}-{100 * max(values):.2f})"
    return text


def build_table(run_dirs: list[str], tta: bool = False, ensembles: list[list[str]] | None = None) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in run_dirs:
        loaded = load_model(run)
        model, config = loaded
        rows = read_metrics(run)
        if not rows:
            raise SystemExit(f"{run}: no metrics.jsonl rows")
        groups[config.recipe].append(
            {
                "model": config.model,
                "params": count_parameters(model),
                "macs": count_macs(model),
                "accuracy": rows[-1]["val_accuracy"],
                "tta": _test_accuracy([loaded], tta=True) if tta else None,
                "epochs": len(rows),
                "seconds": sum(r["epoch_seconds"] for r in rows),
                "seed": config.seed,
            }
        )
    tta_head, tta_rule = (" with TTA |", "---|") if tta else ("", "")
    lines = [
        "| recipe | model | parameters | multiply-adds / image | epochs | test accuracy |"
        f"{tta_head} seeds | training time |",
        f"|---|---|---|---|---|---|{tta_rule}---|---|",
    ]
    for recipe, runs in sorted(
        groups.items(), key=lambda item: statistics.mean(r["accuracy"] for r in item[1])
    ):
        first = runs[0]
        minutes = statistics.median(r["seconds"] for r in runs) / 60
        tta_cell = f" {_percent([r['tta'] for r in runs])} |" if tta else ""
        lines.append(
            f"| {recipe} | {first['model']} | {first['params']:,} | {first['macs'] / 1e6:.2f} M "
            f"| {first['epochs']} | {_percent([r['accuracy'] for r in runs])} |{tta_cell} {len(runs)} "
            f"| {minutes:.1f} min |"
        )
    for members in ensembles or []:
        members_loaded = [load_model(run) for run in members]
        configs = [config for _, config in members_loaded]
        models = sorted({c.model for c in configs})
        seeds = ", ".join(str(c.seed) for c in configs)
        tta_cell = f" {_percent([_test_accuracy(members_loaded, tta=True)])} |" if tta else ""
        lines.append(
            f"| ensemble of {ensemble_label([c.recipe for c in configs])} | {' + '.join(models)} | | | "
            f"| {_percent([_test_accuracy(members_loaded, tta=False)])} |{tta_cell} {seeds} | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--tta", action="store_true", help="add accuracy with test-time augmentation")
    parser.add_argument(
        "--ensemble",
        action="append",
        default=[],
        metavar="RUN,RUN,...",
        help="add a row for these runs averaged (repeatable; default: none)",
    )
    parser.add_argument(
        "--readme", help="README to update between the results-table markers (default: print)"
    )
    args = parser.parse_args(argv)
    table = build_table(args.runs, args.tta, [e.split(",") for e in args.ensemble])
    if args.readme:
        # Run as a script, this folder is on sys.path and the repository is not: benchmarks/ is there.
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from benchmarks.readme import replace_marked_block

        try:
            replace_marked_block(args.readme, "results-table", table)
        except DigitrecError as exc:
            raise SystemExit(str(exc)) from None
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
