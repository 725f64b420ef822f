"""digitrec export --format onnx: onnx.checker, and onnxruntime against PyTorch on all MNIST test images."""

import subprocess
import sys

import numpy as np
import pytest

from digitrec.checkpoints import load_model, read_calibration, read_metrics
from digitrec.cli import main
from digitrec.config import recipe_config
from digitrec.errors import DigitrecError
from digitrec.evaluation import score
from digitrec.fileio import sha256_hex
from digitrec.models import count_parameters
from digitrec.training import train

from .conftest import cli_exit_code

onnx = pytest.importorskip("onnx")  # the optional extra; dev installs it, so CI runs these
pytest.importorskip("onnxruntime")
from digitrec.onnx_runtime import OnnxScorer  # noqa: E402


@pytest.fixture(scope="module", params=["mlp", "lenet"])
def exported(request, tmp_path_factory, small_mnist_dir):
    """(run directory, .onnx path) of a model trained briefly on real digits, exported by the CLI."""
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    run = folder / "run"
    config = recipe_config(f"tutorial-{request.param}", epochs=2, data_dir=str(small_mnist_dir))
    train(config, out_dir=run, log=None)
    path = folder / "out" / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(path)]) == 0
    return run, path


def test_exported_file_passes_the_checker_and_has_the_promised_signature(exported):
    _, path = exported
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # written atomically, no temp left
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert graph_input.name == "images" and graph_output.name == "scores"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch = dims(graph_input)[0]
    assert isinstance(batch, str) and dims(graph_input) == [batch, 1, 28, 28]  # dynamic batch axis
    assert dims(graph_output) == [batch, 10]


def test_onnxruntime_agrees_with_pytorch_on_the_whole_test_set(exported, mnist):
    run, path = exported
    model, _ = load_model(run)
    expected = score(model, mnist.test_images).numpy()  # (10000, 10)
    images = mnist.test_images.numpy()[:, None].astype(np.float32) / 255.0  # (10000, 1, 28, 28) in [0, 1]
    scores = OnnxScorer(path, threads=1)(images)
    assert scores.shape == (10_000, 10) and scores.dtype == np.float32
    assert np.abs(scores - expected).max() < 1e-4
    assert np.array_equal(scores.argmax(1), expected.argmax(1))


def test_batch_axis_is_dynamic_and_metadata_travels(exported, mnist):
    run, path = exported
    scorer = OnnxScorer(path, threads=1)
    images = mnist.test_images[:7].numpy()[:, None].astype(np.float32) / 255.0
    whole = scorer(images)
    for size in (1, 3):
        np.testing.assert_allclose(scorer(images[:size]), whole[:size], atol=1e-5)
    assert scorer(images[:0]).shape == (0, 10)
    _, config = load_model(run)
    assert scorer.info["model"] == config.model and scorer.info["recipe"] == config.recipe
    assert scorer.info["epoch"] == 2 and scorer.info["val_accuracy"] == read_metrics(run)[-1]["val_accuracy"]
    assert scorer.info["config"] == config.to_dict() and scorer.info["format"] == "onnx"
    # What a Recognizer's info needs without torch, and which weights the graph was made from.
    model, _ = load_model(run)
    assert scorer.info["parameters"] == count_parameters(model)
    assert scorer.info["temperature"] == read_calibration(run).get("temperature", 1.0)
    assert scorer.info["weights_sha256"] == sha256_hex((run / "model.safetensors").read_bytes())


def test_scorer_rejects_bad_images_and_bad_files(exported, tmp_path):
    _, path = exported
    scorer = OnnxScorer(path, threads=1)
    with pytest.raises(DigitrecError, match=r"shape \(N, 1, 28, 28\)"):
        scorer(np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(DigitrecError, match="float images"):
        scorer(np.zeros((2, 1, 28, 28), dtype=np.uint8))
    with pytest.raises(DigitrecError, match="file not found"):
        OnnxScorer(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(DigitrecError, match="not a usable ONNX model"):
        OnnxScorer(garbage)


def test_scorer_runs_without_importing_torch(exported):
    _, path = exported
    code = (
        "import sys, numpy as np\n"
        "from digitrec.onnx_runtime import OnnxScorer\n"
        f"scores = OnnxScorer({str(path)!r}, threads=1)(np.zeros((4, 1, 28, 28), np.float32))\n"
        "assert scores.shape == (4, 10), scores.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{tmp}/missing"], "run directory not found"),
        (["export", "{run}", "--out", "{tmp}"], "is a folder"),
        (["export", "{run}", "--opset", "17"], "--opset: must be >= 18"),
        # Above what onnx knows the exporter fell back to opset 18 and printed a C++ assertion.
        (["export", "{run}", "--opset", "99"], "--opset must be 18-"),
        # The run's own weights, overwritten by the ONNX file before.
        (["export", "{run}", "--out", "{run}/model.safetensors"], "is a file of the run itself"),
        (["export", "{run}", "--format", "tflite"], "invalid choice"),
    ],
)
def test_bad_export_input_is_one_line_exit_2(exported, tmp_path, capsys, args, message):
    run, _ = exported
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    assert cli_exit_code(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    load_model(run)  # the run is intact


def test_predict_with_onnx_runs_without_torch(tmp_path, small_mnist, capsys):
    """digitrec predict --onnx: the same answers as the torch model, and torch is never imported."""
    import json

    from PIL import Image

    run = tmp_path / "run"
    train(recipe_config("tutorial-mlp", epochs=1), dataset=small_mnist, out_dir=run, log=None)
    onnx_path = tmp_path / "mlp.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_path)]) == 0
    image = tmp_path / "digit.png"
    Image.fromarray(255 - small_mnist.test_images[0].numpy()).resize((200, 200)).save(image)
    code = (
        "import sys\n"
        "from digitrec.cli import main\n"
        f"rc = main(['predict', '--json', '--onnx', {str(onnx_path)!r}, {str(image)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    via_onnx = json.loads(proc.stdout.strip().splitlines()[-1])
    capsys.readouterr()
    assert main(["predict", "--json", "--run", str(run), str(image)]) == 0
    via_torch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert via_onnx["digit"] == via_torch["digit"]
    assert np.allclose(via_onnx["probabilities"], via_torch["probabilities"], atol=1e-4)
    assert main(["predict", "--onnx", str(onnx_path), "--run", str(run), str(image)]) == 2
