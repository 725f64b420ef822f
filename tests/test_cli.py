import json
import os
import subprocess
import sys

import pytest

from digitrec.checkpoints import read_metrics
from digitrec.cli import build_parser, main

from .conftest import cli_exit_code


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, contextlib, io\nfrom digitrec.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['train', '--help'])\n    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "digitrec", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("digitrec ")


def test_every_option_states_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest != "help" and action.option_strings:
                assert "default" in (action.help or ""), f"digitrec {name} {action.option_strings[0]}"


def test_train_then_evaluate(tmp_path, small_mnist_dir, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            "mlp",
            "--data-dir",
            str(small_mnist_dir),
            "--epochs",
            "2",
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch   2/2" in out and "validation acc" in out
    assert main(["evaluate", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == read_metrics(run)[-1]["val_accuracy"]
    assert len(report["per_class"]) == 10 and len(report["confusion_matrix"]) == 10
    assert sum(map(sum, report["confusion_matrix"])) == 500
    # Evaluating reads the test split only: a folder of the two t10k files is enough.
    test_only = tmp_path / "test-only"
    test_only.mkdir()
    for path in small_mnist_dir.glob("t10k-*"):
        (test_only / path.name).write_bytes(path.read_bytes())
    assert main(["evaluate", str(run), "--data-dir", str(test_only), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["accuracy"]
    assert main(["evaluate", str(run)]) == 0
    text = capsys.readouterr().out
    assert "precision" in text and "confusion matrix" in text
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]


def test_models_and_recipes_listings(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lenet"]["macs"] == 2_293_000 and rows["mlp"]["parameters"] == 109_386
    assert main(["recipes"]) == 0
    assert "tutorial-lenet: model=lenet" in capsys.readouterr().out


def _bad_idx_dir(tmp_path, small_mnist_dir):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(small_mnist_dir, folder)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "0"], "--epochs: must be >= 1"),
        (["train", "--lr", "0"], "--lr: must be > 0"),
        (["train", "--lr", "-1"], "--lr: must be > 0"),
        (["train", "--lr", "inf"], "--lr: expected a finite number, got 'inf'"),
        (["train", "--weight-decay", "nan"], "--weight-decay: expected a finite number, got 'nan'"),
        (["predict", "x.png", "--min-confidence", "nan"], "--min-confidence: expected a finite number"),
        (["train", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["train", "--epochs", "ten"], "expected an integer"),
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["train", "--recipe", "nope"], "unknown recipe 'nope'"),
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--device", "tpu:9"], "device"),
        (["train", "--data-dir", "{tmp}/nowhere"], "data folder not found"),
        (["train", "--data-dir", "{bad}"], "corrupt or truncated gzip"),
        (["train", "--resume", "{tmp}/missing"], "run directory not found"),
        (["evaluate", "{tmp}/missing"], "run directory not found"),
        (["evaluate", "{tmp}"], "config.json: missing"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, small_mnist_dir, capsys, args, message, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    bad = _bad_idx_dir(tmp_path, small_mnist_dir) if "{bad}" in args else None
    args = [a.format(tmp=tmp_path, bad=bad) for a in args]
    if args[0] == "train" and "--resume" not in args:
        args += ["--out", str(tmp_path / "out")]
    assert cli_exit_code(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_the_cli_gives_openblas_one_thread_unless_told_otherwise(monkeypatch, capsys):
    """Set before NumPy loads (OpenBLAS reads it then): its spinning threads cost the process
    pools' workers CPU for no gain on digitrec's small matrices. A user's own value stands."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert main(["recipes"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert main(["recipes"]) == 0
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
    capsys.readouterr()
    code = "import digitrec.cli, sys; assert 'numpy' not in sys.modules, 'numpy loaded before main() runs'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_usage_errors_exit_2_via_the_console_script():
    proc = subprocess.run(
        [sys.executable, "-m", "digitrec", "train", "--epochs", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
