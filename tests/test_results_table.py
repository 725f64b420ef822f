"""scripts/results_table.py: the README's results table comes from real runs, ensembles included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from digitrec.config import recipe_config
from digitrec.training import train

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "results_table.py"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, small_mnist_dir) -> list[Path]:
    runs = []
    for seed in (1, 2):
        run = tmp_path_factory.mktemp("runs") / f"mlp-{seed}"
        train(
            recipe_config("tutorial-mlp", epochs=1, seed=seed, data_dir=str(small_mnist_dir)),
            out_dir=run,
            log=None,
        )
        runs.append(run)
    return runs


def _table(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def _evaluate_json(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "digitrec", "evaluate", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_seeds_grouped_with_tta_and_an_ensemble_row(two_runs):
    runs = [str(r) for r in two_runs]
    lines = _table(*runs, "--tta", "--ensemble", ",".join(runs))
    assert "with TTA" in lines[0]
    (recipe_row,) = [line for line in lines if line.startswith("| tutorial-mlp |")]
    cells = [c.strip() for c in recipe_row.strip("|").split("|")]
    assert cells[1] == "mlp" and cells[7] == "2"  # model; two seeds in one row
    (ensemble_row,) = [line for line in lines if line.startswith("| ensemble of 2 tutorial-mlp |")]
    cells = [c.strip() for c in ensemble_row.strip("|").split("|")]
    plain, tta = _evaluate_json(*runs), _evaluate_json(*runs, "--tta")
    # The table's ensemble figures are exactly what `digitrec evaluate` reports for the same runs.
    assert cells[5] == f"{100 * plain['accuracy']:.2f}%"
    assert cells[6] == f"{100 * tta['accuracy']:.2f}%"
    assert cells[7] == "1, 2"


def test_readme_markers_replaced_in_place(two_runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\noutro\n")
    _table(str(two_runs[0]), "--readme", str(readme))
    text = readme.read_text()
    assert text.startswith("intro\n<!-- results-table:start -->\n| recipe |")
    assert "old" not in text and text.endswith("<!-- results-table:end -->\noutro\n")


def test_ensemble_label_counts_each_recipe():
    from scripts.results_table import ensemble_label

    assert ensemble_label(["best", "best", "best", "best-mlp"]) == "3 best + best-mlp"
    assert ensemble_label(["fast", "best"]) == "fast + best"
