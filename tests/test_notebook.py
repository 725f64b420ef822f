"""The tutorial as a notebook: committed without outputs, and (slow) executed end to end."""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "handwritten_digit_recognition.ipynb"
# The seed tutorial's sections, in its order.
SECTIONS = [
    "Loading data",
    "The multilayer perceptron",
    "Initialization and optimizer",
    "Training",
    "Prediction",
    "The convolutional network",
    "Initialization and optimizer",
    "Training",
    "Prediction",
    "Summary",
]


def _cells():
    return json.loads(NOTEBOOK.read_text("utf-8"))["cells"]


def test_committed_notebook_has_no_outputs():
    code_cells = [c for c in _cells() if c["cell_type"] == "code"]
    assert len(code_cells) > 10
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "".join(cell["source"])[:80]


def test_notebook_is_valid_and_follows_the_tutorials_sections():
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(NOTEBOOK, as_version=4))
    headings = [
        line.lstrip("#").strip()
        for cell in _cells()
        if cell["cell_type"] == "markdown"
        for line in "".join(cell["source"]).splitlines()
        if line.startswith("## ") or line.startswith("### ")
    ]
    assert headings == SECTIONS
    sources = "".join("".join(c["source"]) for c in _cells() if c["cell_type"] == "code")
    assert "assert mlp_report.accuracy > 0.94" in sources
    assert "assert lenet_report.accuracy > 0.98" in sources


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_notebook_runs_end_to_end(tmp_path):
    # Trains both full recipes on the full MNIST: about 10 s + 2.5 min on 2 CPU cores. The notebook's
    # assert lenet_report.accuracy > 0.98 is the suite's LeNet accuracy gate (test_accuracy_gates.py).
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cwd = tmp_path / "cwd"  # the kernel's working folder
    cwd.mkdir()
    client = nbclient.NotebookClient(
        notebook, timeout=3000, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell, the accuracy asserts included
    # Keep the executed copy for a person to read (outside the repository), before checking it.
    nbformat.write(notebook, tmp_path / "executed.ipynb")
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text.count("validation accuracy: ") == 2
    assert "epoch  10/10" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the two figures of digits
    assert not any(o.output_type == "error" for o in outputs)
    assert list(cwd.iterdir()) == []  # save=False: the notebook writes nothing
