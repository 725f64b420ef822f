"""Generate the README's results table from real run directories (never typed by hand).

    python scripts/results_table.py RUN_DIR [RUN_DIR ...] [--readme README.md]

Runs of the same recipe (different seeds) are grouped: accuracy is shown as the mean and, with
several seeds, the spread (min-max). Training time is the sum of the logged ``epoch_seconds``
(training passes only) on the machine that trained the run. With ``--readme`` the table replaces
the text between ``<!-- results-table:start -->`` and ``<!-- results-table:end -->``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from digitrec.checkpoints import load_model, read_metrics
from digitrec.fileio import write_bytes_atomic
from digitrec.models import count_macs, count_parameters

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"


def build_table(run_dirs: list[str]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in run_dirs:
        model, config = load_model(run)
        rows = read_metrics(run)
        if not rows:
            raise SystemExit(f"{run}: no metrics.jsonl rows")
        groups[config.recipe].append(
            {
                "model": config.model,
                "params": count_parameters(model),
                "macs": count_macs(model),
                "accuracy": rows[-1]["val_accuracy"],
                "epochs": len(rows),
                "seconds": sum(r["epoch_seconds"] for r in rows),
                "seed": config.seed,
            }
        )
    lines = [
        "| recipe | model | parameters | multiply-adds / image | epochs | test accuracy | seeds "
        "| training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, runs in sorted(
        groups.items(), key=lambda item: statistics.mean(r["accuracy"] for r in item[1])
    ):
        accs = [r["accuracy"] for r in runs]
        accuracy = f"{100 * statistics.mean(accs):.2f}%"
        if len(accs) > 1:
            accuracy += f" ({100 * min(accs):.2f}-{100 * max(accs):.2f})"
        first = runs[0]
        minutes = statistics.median(r["seconds"] for r in runs) / 60
        lines.append(
            f"| {recipe} | {first['model']} | {first['params']:,} | {first['macs'] / 1e6:.2f} M "
            f"| {first['epochs']} | {accuracy} | {len(runs)} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument(
        "--readme", help="README to update between the results-table markers (default: print)"
    )
    args = parser.parse_args(argv)
    table = build_table(args.runs)
    if args.readme:
        path = Path(args.readme)
        text = path.read_text("utf-8")
        if START not in text or END not in text:
            raise SystemExit(f"{path}: markers {START} / {END} not found")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        write_bytes_atomic(path, f"{head}{START}\n{table}\n{END}{tail}".encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
