"""The ``digitrec`` command line. Thin: every command calls the Python API.

torch is imported inside the command functions, never at module level, so
``digitrec --help`` answers in a fraction of a second. Each command's arguments
(``_add_NAME``) stand just above its handler (``cmd_NAME``); ``digitrec train``'s
flags that override a recipe come from one table, :data:`TRAIN_OPTIONS`, and
``digitrec serve``'s limits from another, :data:`SERVE_LIMITS`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from . import __version__
from .config import MODEL_DEFAULT_RECIPE, PRECISIONS, RECIPES, TrainConfig
from .errors import DigitrecError
from .predict_files import IMAGE_SUFFIXES  # torch-free and light, as --help must be

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # the shell's status for a process that SIGPIPE ended (as cat's)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _bounded(kind: type, minimum: float, inclusive: bool = True) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value):  # float("nan") and float("inf") parse, and compare as no bound expects
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if value < minimum or (not inclusive and value == minimum):
            relation = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {text}")
        return value

    return parse


def _recipe_defaults(key: str) -> str:
    """Help text: the default of ``key`` in each recipe, e.g. "tutorial-mlp: 0.02, ..."."""
    base = TrainConfig()
    values = {name: spec.get(key, getattr(base, key)) for name, spec in RECIPES.items()}
    if len(set(map(str, values.values()))) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{value} for {name}" for name, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="digitrec",
        description="Handwritten digit recognition on PyTorch: train, evaluate and use MNIST models.",
    )
    parser.add_argument("--version", action="version", version=f"digitrec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # In the order --help lists them.
    for add_command in (
        _add_train,
        _add_evaluate,
        _add_report,
        _add_export,
        _add_models,
        _add_predict,
        _add_recipes,
        _add_serve,
    ):
        add_command(commands)
    return parser


# --------------------------------------------------------------------------- train


WHAT, HYPER, HOW = "what to train", "hyper-parameters (override the recipe's)", "where and how"


@dataclass(frozen=True)
class TrainOption:
    """A ``digitrec train`` flag that sets the TrainConfig field of the same name (``--batch-size``
    sets ``batch_size``). The table of them, :data:`TRAIN_OPTIONS`, makes the parser's flags, the
    check that ``--resume`` changes nothing but ``--epochs``, and the overrides of the recipe: a new
    hyper-parameter on the command line is a TrainConfig field plus one line there."""

    field: str
    group: str  # WHAT, HYPER or HOW: the --help section
    help: str  # without the default, which is added
    parse: Callable[[str], Any] = str  # text -> value (argparse's type)
    choices: Sequence[str] | None = None
    default: str | None = None  # the default that --help states; None: each recipe's value
    switch: bool = False  # --name / --no-name

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


TRAIN_OPTIONS = (
    TrainOption(
        "model",
        WHAT,
        "model name; alone it picks the tutorial recipe: "
        + ", ".join(f"{m} -> {r}" for m, r in MODEL_DEFAULT_RECIPE.items()),
        default="mlp",
    ),
    TrainOption("recipe", WHAT, f"named recipe: {', '.join(sorted(RECIPES))}", default="tutorial-mlp"),
    TrainOption(
        "dataset",
        WHAT,
        "dataset name: mnist (bundled) or fashion-mnist (downloaded); with --data-dir, the folder is "
        "verified against this dataset's checksums",
        default="mnist, or custom with --data-dir",
    ),
    TrainOption(
        "data_dir",
        WHAT,
        "folder with the four IDX files, raw or .gz; overrides --dataset",
        default="$DIGITREC_DATA_DIR, else the bundled MNIST",
    ),
    TrainOption(
        "usps_dir",
        WHAT,
        "folder of USPS's zip.train.gz, which the default recipe's mix trains on",
        default="$DIGITREC_SHARED_DATA/usps, else ../shared/data/usps beside a source checkout",
    ),
    TrainOption("epochs", HYPER, "passes over the training set", _bounded(int, 1)),
    TrainOption("batch_size", HYPER, "global batch size", _bounded(int, 1)),
    TrainOption("lr", HYPER, "learning rate", _bounded(float, 0, inclusive=False)),
    TrainOption("momentum", HYPER, "SGD momentum", _bounded(float, 0)),
    TrainOption("weight_decay", HYPER, "L2 weight decay", _bounded(float, 0)),
    TrainOption("seed", HYPER, "random seed for initialization and shuffling", int),
    TrainOption(
        "ensemble",
        HYPER,
        "train this many models (seeds seed, seed+1, ..., each a run under DIR/members/) and save "
        "one model that averages their scores",
        _bounded(int, 1),
    ),
    TrainOption(
        "device", HOW, "auto, cpu, cuda, cuda:N or mps; auto picks CUDA, then MPS, then CPU", default="auto"
    ),
    TrainOption(
        "precision",
        HOW,
        "bf16 runs the forward pass under torch.autocast (weights stay float32); for GPUs with bf16 support",
        choices=PRECISIONS,
        default="fp32",
    ),
    TrainOption(
        "cuda_graphs",
        HOW,
        "on CUDA, replay each training step as one CUDA graph; one process, SGD with a constant "
        "learning rate or AdamW",
        default="on",
        switch=True,
    ),
)


def _add_train(commands: argparse._SubParsersAction[_Parser]) -> None:
    train = commands.add_parser(
        "train",
        help="train a model (the tutorial's recipes by default)",
        description="Train a model and write a run directory "
        "(config.json, model.safetensors, metrics.jsonl).",
    )
    groups = {title: train.add_argument_group(title) for title in (WHAT, HYPER, HOW)}
    for option in TRAIN_OPTIONS:
        help_text = f"{option.help} (default: {option.default or _recipe_defaults(option.field)})"
        if option.switch:
            groups[option.group].add_argument(
                option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            groups[option.group].add_argument(
                option.flag, type=option.parse, choices=option.choices, help=help_text
            )
    run = groups[HOW]
    run.add_argument("--out", help="run directory to create (default: runs/<recipe>-<timestamp>)")
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR after its last completed epoch; "
        "only --epochs may change (default: off)",
    )
    run.add_argument(
        "--nproc",
        type=_bounded(int, 1),
        help="train with N data-parallel processes on this machine: hands over to torchrun "
        "(torch.distributed.run --standalone) with the same arguments (default: 1, no torchrun)",
    )
    run.add_argument(
        "--max-restarts",
        type=_bounded(int, 0),
        default=0,
        help="with --nproc: restart the process group this many times after a failure, "
        "resuming from the last checkpoint (default: 0)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar per epoch (default: when stderr is a terminal)",
    )
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files into the run directory's tensorboard/ folder; "
        "needs pip install 'digitrec[tensorboard]' (default: off)",
    )
    train.set_defaults(handler=cmd_train)


def _launch_torchrun(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Hand ``digitrec train`` over to torchrun: N processes running the same command without --nproc."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    tokens = list(argv)[1:] if list(argv)[:1] == ["train"] else list(argv)
    passthrough, skip_value = [], False
    for token in tokens:
        if skip_value:
            skip_value = False
        elif token in ("--nproc", "--max-restarts"):
            skip_value = True
        elif not token.startswith(("--nproc=", "--max-restarts=")):
            passthrough.append(token)
    if args.resume is None and args.out is None:
        raise DigitrecError(
            "--nproc needs --out DIR, so that every process and every restart uses one folder"
        )
    torchrun_args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={args.nproc}", f"--max-restarts={args.max_restarts}",
         "-m", "digitrec", "train", *passthrough]
    )  # fmt: skip
    try:
        run(torchrun_args)
    except ChildFailedError as exc:
        failures = "; ".join(f"rank {rank}: exit code {f.exitcode}" for rank, f in exc.failures.items())
        raise DigitrecError(
            f"distributed training failed after {args.max_restarts} restart(s) ({failures}); "
            f"the last checkpoint in {args.resume or args.out} can be resumed with --resume"
        ) from None
    return 0


def cmd_train(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    from .checkpoints import read_config
    from .training import train

    if args.nproc and args.nproc > 1 and "RANK" not in os.environ:
        return _launch_torchrun(args, argv)
    given = [option for option in TRAIN_OPTIONS if getattr(args, option.field) is not None]
    if args.resume:
        if args.out is not None and args.out != args.resume:
            raise DigitrecError("--resume DIR continues DIR; do not pass a different --out")
        config = read_config(args.resume)
        others = [option.flag for option in given if option.field != "epochs"]
        if others:
            raise DigitrecError(
                f"--resume continues a run as configured; only --epochs may change (got {', '.join(others)})"
            )
        if args.epochs is not None:
            config.epochs = args.epochs
        train(config, out_dir=args.resume, resume=True, progress=args.progress, tensorboard=args.tensorboard)
        return 0

    config = train_config_from_args(args)
    train(config, out_dir=args.out, progress=args.progress, tensorboard=args.tensorboard)
    return 0


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe that ``--recipe`` or ``--model`` picks, with the flags given overriding its values."""
    from .config import recipe_config

    given = [option for option in TRAIN_OPTIONS if getattr(args, option.field) is not None]
    recipe = args.recipe or MODEL_DEFAULT_RECIPE.get(args.model or "mlp")
    if recipe is None:
        # A model with no recipe of its own trains with the tutorial's MLP hyper-parameters.
        recipe = "tutorial-mlp"
    # The flags given override the recipe's values (a --recipe given names this very recipe).
    return recipe_config(recipe, **{option.field: getattr(args, option.field) for option in given})


# --------------------------------------------------------------------------- evaluate


SECOND_LOOK_HELP = (
    "read a digit the model is unsure of (below 0.9) three more times, in a thinner and a thicker "
    "pen and narrower, and average the four readings: other writers' digits read better (README, 'A second "
    "look'); --no-second-look reads each once (default: on)"
)


def _add_second_look(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--second-look", action=argparse.BooleanOptionalAction, default=True, help=SECOND_LOOK_HELP
    )


def _add_evaluate(commands: argparse._SubParsersAction[_Parser]) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class precision/recall and confusion matrix of a run",
        description="Evaluate a run's model on its dataset's test set, or with --images on labelled "
        "images read as digitrec predict reads them.",
    )
    evaluate.add_argument(
        "runs",
        metavar="DIR",
        nargs="*",
        help="run directory written by digitrec train; several runs are evaluated as an ensemble "
        "(their probabilities averaged) (default: the bundled default model)",
    )
    evaluate.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over the image and its 1-pixel shifts (default: off)",
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables (default: off)"
    )
    evaluate.add_argument(
        "--data-dir", help="evaluate on the IDX files in this folder (default: the run's dataset)"
    )
    evaluate.add_argument(
        "--images",
        metavar="SOURCE",
        help="evaluate on labelled images instead, each read as digitrec predict reads it: a folder "
        "DIR/<digit>/*.png, a CSV file of file,label rows, or a named set usps:DIR (USPS test split), "
        "usps-train:DIR or optdigits-orig:DIR (default: off, the run's test set)",
    )
    evaluate.add_argument(
        "--report",
        metavar="OUT",
        help="with --images: write confusion_matrix.png, per_class_accuracy.png, mistakes.png (the 40 "
        "most confident mistakes) and mistakes.json (all of them) into the folder OUT (default: off)",
    )
    _add_second_look(evaluate)
    evaluate.add_argument("--device", default="cpu", help="device to evaluate on (default: cpu)")
    evaluate.set_defaults(handler=cmd_evaluate)


def _evaluate_images(args: argparse.Namespace) -> int:
    """digitrec evaluate --images: the user's labelled images, read as digitrec predict reads them."""
    from .handwriting import evaluate_images, open_source
    from .recognition import Recognizer

    if len(args.runs) > 1 or args.tta or args.data_dir:
        raise DigitrecError("--images evaluates one model without --tta or --data-dir")
    run = args.runs[0] if args.runs else None
    labelled = open_source(args.images)
    # The model as predict scores it (the bundled one on onnxruntime where it can).
    recognizer = (
        Recognizer.from_run(run, args.device)
        if run
        else Recognizer.default(args.device, backend="auto", threads=PREDICT_ONNX_THREADS)
    )
    recognizer.second_look = args.second_look
    result = evaluate_images(recognizer, labelled)
    model = recognizer.info()["name"]
    if args.report:
        for path in _write_images_report(args.report, labelled, result):
            print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        header = {"run": run or "default", "model": model, "images": args.images, "no_digit": result.no_digit}
        print(json.dumps({**header, **result.report.to_dict(), **result.selective}))
    else:
        from .evaluation import format_report

        print(f"{run or 'bundled default model'}: model {model}, images {args.images}")
        if result.no_digit:
            print(f"no digit found in {result.no_digit} images (counted as wrong, not in the matrix)")
        print(format_report(result.report))
        selective = result.selective
        reasons = ", ".join(f"{count} {reason}" for reason, count in selective["rejected"].items())
        print(
            f"\nat the default setting: {selective['coverage']:.2%} answered"
            + (f" (not answered: {reasons})" if reasons else "")
            + f", {selective['answered_accuracy']:.2%} of those right; "
            f"expected calibration error {selective['ece']:.2%}"
        )
    return 0


def _write_images_report(out: str, labelled: Any, result: Any) -> list[Any]:
    from pathlib import Path

    import numpy as np
    import torch

    from .fileio import write_bytes_atomic
    from .reports import (
        DEFAULT_MISTAKES,
        FIGURE_FILES,
        accuracy_coverage_figure,
        confusion_matrix_figure,
        find_mistakes,
        mistakes_figure,
        per_class_accuracy_figure,
        png_bytes,
    )

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise DigitrecError(f"{folder}: exists and is not a folder")
    found = [guess is not None for guess in result.predicted]
    mistakes = [
        m
        for m in find_mistakes(torch.from_numpy(result.probabilities), torch.tensor(labelled.labels))
        if found[m.index]
    ]
    source = labelled.source
    figures = {
        "confusion_matrix": confusion_matrix_figure(
            result.report.confusion, title=f"Confusion matrix: {source}"
        ),
        "per_class_accuracy": per_class_accuracy_figure(result.report, title=f"Accuracy per digit: {source}"),
        "accuracy_coverage": accuracy_coverage_figure(
            result.probabilities[found],
            np.asarray(labelled.labels)[found],
            title=f"Accuracy against coverage: {source}",
            marked=result.selective["coverage"] * len(found) / max(sum(found), 1),
        ),
        "mistakes": mistakes_figure(
            torch.from_numpy(result.inputs), mistakes[:DEFAULT_MISTAKES], len(mistakes)
        ),
    }
    written = []
    for key, figure in figures.items():
        write_bytes_atomic(folder / FIGURE_FILES[key], png_bytes(figure))
        written.append(folder / FIGURE_FILES[key])
    rows = [
        {
            "file": labelled.names[m.index],
            "true": m.true,
            "predicted": m.predicted,
            "confidence": m.confidence,
        }
        for m in mistakes
    ]
    rows += [
        {"file": labelled.names[i], "true": labelled.labels[i], "predicted": None, "confidence": 0.0}
        for i, ok in enumerate(found)
        if not ok
    ]
    write_bytes_atomic(folder / "mistakes.json", (json.dumps(rows, indent=1) + "\n").encode())
    written.append(folder / "mistakes.json")
    return written


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.images:
        return _evaluate_images(args)
    if args.report:
        raise DigitrecError("--report needs --images (digitrec report DIR writes a run's report)")
    from .checkpoints import load_model
    from .data import load_dataset
    from .distributed import resolve_device
    from .evaluation import format_report, report_from_predictions
    from .runs import default_model_dir

    device = resolve_device(args.device)
    runs = args.runs or [str(default_model_dir())]
    loaded = [load_model(run, device) for run in runs]
    config = loaded[0][1]
    dataset = load_dataset(config.dataset, data_dir=args.data_dir or config.data_dir, test_only=True)
    predicted, selective = _read_test_set([model for model, _ in loaded], runs, dataset, args.tta)
    report = report_from_predictions(predicted, dataset.test_labels)
    names = [c.model for _, c in loaded]
    if args.json:
        header = {"runs": runs, "models": names, "dataset": dataset.name, "tta": args.tta}
        print(json.dumps({**header, **report.to_dict(), **selective}))
    else:
        what = f"ensemble of {', '.join(runs)}" if len(runs) > 1 else f"run {runs[0]}"
        tta = ", test-time augmentation" if args.tta else ""
        print(f"{what}: model {', '.join(names)}, dataset {dataset.name} (test set{tta})")
        print(format_report(report))
        print(
            f"\nat the default setting: {selective['coverage']:.2%} answered, "
            f"{selective['answered_accuracy']:.2%} of those right; "
            f"expected calibration error {selective['ece']:.2%}"
        )
    return 0


def _read_test_set(models: list[Any], runs: list[str], dataset: Any, tta: bool) -> tuple[Any, dict[str, Any]]:
    """The test set read once: each image's predicted digit ((N,) tensor; an ensemble's or --tta's
    averaged probabilities, else one model's argmax, as training's val_accuracy takes it), and
    the coverage at the run's not-a-digit threshold, the accuracy of the answered and the ECE.
    The threshold belongs to one model's own scores: an ensemble or --tta answers every image."""
    import numpy as np
    import torch

    from .calibration import energy, selective_summary
    from .checkpoints import read_calibration
    from .evaluation import predict_proba, score

    images = dataset.test_images.to(next(models[0].parameters()).device)
    evidence = None
    with torch.no_grad():
        if len(models) == 1 and not tta:
            scores = score(models[0], images)
            predicted, probabilities = scores.argmax(1), scores.softmax(dim=1)
            evidence = energy(scores.cpu().numpy())
        else:
            probabilities = torch.stack([predict_proba(m, images, tta=tta) for m in models]).mean(dim=0)
            predicted = probabilities.argmax(1)
    below = read_calibration(runs[0]).get("not_digit_energy_below")
    rejected: list[str | None] = [None] * len(images)
    if below is not None and evidence is not None:
        rejected = ["not_a_digit" if e < below else None for e in evidence]
    probabilities_np = np.asarray(probabilities.cpu().numpy(), dtype=np.float64)
    return predicted.cpu(), selective_summary(probabilities_np, dataset.test_labels.numpy(), rejected)


# --------------------------------------------------------------------------- report


def _add_report(commands: argparse._SubParsersAction[_Parser]) -> None:
    report = commands.add_parser(
        "report",
        help="figures of a run (learning curves, confusion matrix, mistakes) and an HTML page",
        description="Write PNG figures and index.html for a run: learning curves, confusion matrix, "
        "per-digit accuracy and the most confident mistakes on the test set.",
    )
    report.add_argument("run", metavar="DIR", help="run directory written by digitrec train")
    report.add_argument("--out", help="folder to write the report into (default: DIR/report)")
    report.add_argument(
        "--mistakes",
        type=_bounded(int, 0),
        default=40,
        help="how many mistakes the gallery shows, most confident first (default: 40)",
    )
    report.add_argument(
        "--data-dir", help="report on the IDX files in this folder (default: the run's dataset)"
    )
    report.add_argument("--device", default="cpu", help="device to score the test set on (default: cpu)")
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .distributed import resolve_device
    from .reports import write_report

    written = write_report(
        args.run,
        out_dir=args.out,
        data_dir=args.data_dir,
        device=resolve_device(args.device),
        max_mistakes=args.mistakes,
    )
    for path in written:
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- export


def _add_export(commands: argparse._SubParsersAction[_Parser]) -> None:
    export = commands.add_parser(
        "export",
        help="export a run's model for other runtimes (ONNX)",
        description="Export a run's model. ONNX: input 'images' float32 (N, 1, 28, 28) in [0, 1] with a "
        "dynamic batch axis, output 'scores' (N, 10) logits.",
    )
    export.add_argument("run", metavar="DIR", help="run directory written by digitrec train")
    export.add_argument("--format", choices=["onnx"], default="onnx", help="file format (default: onnx)")
    export.add_argument("--out", help="file to write (default: DIR/model.onnx)")
    export.add_argument(
        "--opset",
        type=_bounded(int, 18),
        default=18,
        help="ONNX opset version, from 18 to the newest the installed onnx knows (default: 18)",
    )
    export.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    path = export_onnx(args.run, args.out, opset=args.opset)
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- models


def _add_models(commands: argparse._SubParsersAction[_Parser]) -> None:
    models = commands.add_parser(
        "models",
        help="list the registered models with their size and cost",
        description="List every registered model: parameters and multiply-adds per image.",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    models.set_defaults(handler=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_macs, count_parameters, create_model, list_models

    rows = []
    for name in list_models():
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "parameters": count_parameters(model),
                "macs": count_macs(model),
                "description": _first_line(name),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'model':<10} {'parameters':>11} {'mult-adds':>11}  description")
        for row in rows:
            print(f"{row['name']:<10} {row['parameters']:>11,} {row['macs']:>11,}  {row['description']}")
    return 0


def _first_line(model_name: str) -> str:
    from . import models

    doc = getattr(models, model_name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# --------------------------------------------------------------------------- recipes


def _add_recipes(commands: argparse._SubParsersAction[_Parser]) -> None:
    recipes = commands.add_parser(
        "recipes", help="list the named training recipes", description="List every recipe with its settings."
    )
    recipes.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    recipes.set_defaults(handler=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    from .config import recipe_config

    rows = [recipe_config(name).to_dict() for name in sorted(RECIPES)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            settings = ", ".join(
                f"{k}={v}" for k, v in row.items() if k not in ("recipe", "data_dir", "model_args")
            )
            print(f"{row['recipe']}: {settings}")
    return 0


# --------------------------------------------------------------------------- predict


EXIT_SOME_FAILED = 1
# Files are scored this many at a time: one batched forward each, bounded memory; the
# results of a chunk are written together.
PREDICT_CHUNK = 64
# onnxruntime's threads for predict's model: one. Its batches of at most 32 are small, the
# cores are the workers' (they normalize), and a pool of a thread per core spins between
# calls, taking CPU from them (10,000 drawings, --jobs 2: the command's process spent 18.8 s
# of CPU with a thread per core, 8.9 s with one, 13.4 s on torch).
PREDICT_ONNX_THREADS = 1
PREDICT_FORMATS = ("text", "jsonl", "csv")


def _show_input_paths(template: str, count: int) -> list[str]:
    """Where --show-input writes: the path itself for one file, else OUT-1.png, OUT-2.png, ..."""
    from pathlib import Path

    from PIL import Image

    path = Path(template)
    if path.suffix.lower() not in Image.registered_extensions():
        raise DigitrecError(f"--show-input {template}: unknown image extension (use .png)")
    if count == 1:
        return [template]
    return [str(path.with_name(f"{path.stem}-{index}{path.suffix}")) for index in range(1, count + 1)]


def _refuse_to_overwrite_inputs(inputs: list[str], outputs: list[str]) -> None:
    """Checked before anything is read: ``predict a.png --output a.png`` (or --show-input a.png)
    would replace the user's image with the results once they are in."""
    if not outputs:
        return
    read = {os.path.realpath(name) for name in inputs if name != "-"}
    for output in outputs:
        if os.path.realpath(output) in read:
            raise DigitrecError(f"{output}: is one of the images to read; writing there would replace it")


def _save_input(path: str, prediction: Any) -> None:
    """The 28x28 the model saw (several side by side with --multi), written atomically."""
    import io

    import numpy as np
    from PIL import Image

    from .fileio import write_bytes_atomic

    images = prediction.input_images or (
        [prediction.input_image] if prediction.input_image is not None else []
    )
    if not images:
        return
    buffer = io.BytesIO()
    suffix = path.rsplit(".", 1)[-1]
    Image.fromarray(np.hstack(images), "L").save(
        buffer, format=Image.registered_extensions()["." + suffix.lower()]
    )
    write_bytes_atomic(path, buffer.getvalue())


def _read_source(name: str) -> Any:
    return sys.stdin.buffer.read() if name == "-" else name


def _predict_line(name: str, prediction: Any, top_k: int | None, multi: bool) -> str:
    """One line of text output: "FILE: 7 (confidence 0.998)" and the like."""
    if multi:
        if not prediction.digits:
            return f"{name}: no digit found"
        detail = ", ".join(
            "not a digit" if d.get("rejected") == "not_a_digit"
            else f"{'?' if d['digit'] is None else d['digit']} ({d['confidence']:.3f})"
            for d in prediction.digits
        )  # fmt: skip
        return f"{name}: {prediction.number} [{detail}]"
    if not prediction.found:
        return f"{name}: no digit found"
    if prediction.rejected == "not_a_digit":
        text = f"{name}: not a digit"
    elif prediction.digit is None:
        best = max(range(10), key=lambda k: prediction.probabilities[k])
        text = f"{name}: unknown (best guess {best}, confidence {prediction.confidence:.3f})"
    else:
        text = f"{name}: {prediction.digit} (confidence {prediction.confidence:.3f})"
    if top_k:
        ranked = sorted(range(10), key=lambda k: -prediction.probabilities[k])[:top_k]
        text += (
            "  top-" + str(top_k) + ": " + ", ".join(f"{k} {prediction.probabilities[k]:.3f}" for k in ranked)
        )
    return text


def _add_predict(commands: argparse._SubParsersAction[_Parser]) -> None:
    predict = commands.add_parser(
        "predict",
        help="read handwritten digits in image files",
        description="Read the handwritten digit (or, with --multi, the row of digits) in each image "
        "file: PNG, JPEG, BMP, GIF (first frame), WebP or TIFF, any mode and size; a folder is read "
        "with its sub-folders. Each image is brought into MNIST's form first (see README), in --jobs "
        "worker processes; results come in the order given, as they are ready. Exit code 1 if any "
        "file could not be read (its row says why; the others are still read).",
    )
    predict.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="image files or folders (read with their sub-folders, sorted by path); - reads one "
        "image from stdin",
    )
    predict.add_argument(
        "--glob",
        metavar="PATTERN",
        help="in folders, read only the files whose name matches PATTERN, e.g. '*.png' "
        "(shell-style, case-sensitive; files named on the command line are always read) "
        "(default: every file with an image extension: " + ", ".join(IMAGE_SUFFIXES) + ")",
    )
    predict.add_argument(
        "--run",
        metavar="DIR",
        help="run directory of the model to use, scored by PyTorch (default: the bundled model, "
        "scored by onnxruntime from its shipped ONNX copy where installed, else PyTorch)",
    )
    predict.add_argument(
        "--onnx",
        metavar="MODEL.onnx",
        help="score with an exported ONNX model on onnxruntime, without importing torch "
        "(digitrec export; needs the onnx extra) (default: off)",
    )
    predict.add_argument(
        "--format",
        choices=PREDICT_FORMATS,
        help="text: one line per file; jsonl: JSON Lines, one object per file: file, digit, "
        "confidence, probabilities (error on failure; number and digits with --multi); csv: a "
        "header, then file, digit, confidence, (number with --multi,) error, p0..p9 (default: text)",
    )
    predict.add_argument("--json", action="store_true", help="the same as --format jsonl (default: off)")
    predict.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the results to FILE (all at once, when done: never half a file) instead of "
        "standard output (default: standard output, as they come)",
    )
    predict.add_argument(
        "--jobs",
        "-j",
        type=_bounded(int, 1),
        metavar="N",
        help="worker processes that decode and normalize images (the model runs in the main "
        "process; fewer than 9 files are read in the main process, as starting a worker takes "
        "about a second) (default: the number of cores this process may use)",
    )
    predict.add_argument(
        "--top-k",
        type=_bounded(int, 1),
        metavar="K",
        help="also show the K most likely digits with their probabilities, 1..10; in JSON, as "
        "top_k (with --multi each digit already has its probabilities; CSV has them all as "
        "p0..p9) (default: off)",
    )
    predict.add_argument(
        "--multi",
        action="store_true",
        help="read a row of several digits (a number, a postcode), left to right (default: off)",
    )
    _add_second_look(predict)
    predict.add_argument(
        "--min-confidence",
        type=_bounded(float, 0),
        metavar="P",
        help="report a digit whose probability is below P (0..1) as unknown (default: 0, never)",
    )
    predict.add_argument(
        "--show-input",
        metavar="OUT.png",
        help="save the 28x28 image the model saw (with --multi, the digits side by side); with "
        "several files, OUT-1.png, OUT-2.png, ... in the order read (default: off)",
    )
    predict.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="a progress bar on standard error: auto shows it when standard error is a terminal "
        "and there is more than one file (default: auto)",
    )
    predict.add_argument(
        "--device", default="cpu", help="device to run the model on: cpu, cuda, cuda:N, mps (default: cpu)"
    )
    predict.set_defaults(handler=cmd_predict)


def _csv_header(multi: bool) -> list[str]:
    return ["file", "digit", "confidence", *(["number"] if multi else []), "rejected", "error"] + [
        f"p{k}" for k in range(10)
    ]


def _csv_row(name: str, prediction: Any, error: str | None, multi: bool) -> list[Any]:
    """One CSV row: empty cells for what does not apply (no digit, no error, an error row's all)."""
    if error is not None:
        return [name, "", "", *([""] if multi else []), "", error] + [""] * 10
    digit = "" if prediction.digit is None else prediction.digit
    number = [prediction.number or ""] if multi else []
    # All zeros: no single digit was scored (none found; --multi with several).
    probabilities = list(prediction.probabilities) if any(prediction.probabilities) else [""] * 10
    return [name, digit, prediction.confidence, *number, prediction.rejected or "", "", *probabilities]


class _PredictOutput:
    """Rows out, in the chosen format: to stdout as they come (flushed per chunk), or
    collected for FILE (written atomically at the end); lines pass above a progress bar."""

    def __init__(self, args: argparse.Namespace, bar: Any) -> None:
        import csv
        import io

        self.format = args.format
        self.multi = args.multi
        self.top_k = args.top_k
        self.bar = bar
        self.collected: io.StringIO | None = io.StringIO() if args.output else None
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        if self.format == "csv":
            self._csv.writerow(_csv_header(self.multi))

    def _line(self, text: str) -> None:
        self._buffer.write(text + "\n")

    def row(self, name: str, prediction: Any, error: str | None) -> None:
        if self.format == "csv":
            self._csv.writerow(_csv_row(name, prediction, error, self.multi))
        elif self.format == "jsonl":
            if error is not None:
                self._line(json.dumps({"file": name, "error": error}))
                return
            row = {"file": name, **prediction.to_dict()}
            if self.top_k and prediction.found and prediction.digits is None:
                ranked = sorted(range(10), key=lambda k: -prediction.probabilities[k])[: self.top_k]
                row["top_k"] = [{"digit": k, "probability": prediction.probabilities[k]} for k in ranked]
            self._line(json.dumps(row))
        elif error is not None:
            self.flush()  # the results so far first, then the error, in order
            self._emit(f"digitrec predict: error: {error}", sys.stderr)
        else:
            self._line(_predict_line(name, prediction, self.top_k, self.multi))

    def note(self, text: str) -> None:
        """A line for the person, on stderr, after the results so far."""
        self.flush()
        self._emit(text, sys.stderr)

    def _emit(self, text: str, stream: Any) -> None:
        if self.bar is not None:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def flush(self) -> None:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        if not text:
            return
        if self.collected is not None:
            self.collected.write(text)
        else:
            self._emit(text.rstrip("\n"), sys.stdout)


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict_files import PreparedInOrder, default_jobs, expand

    if args.top_k is not None and args.top_k > 10:
        raise DigitrecError(f"--top-k must be between 1 and 10, got {args.top_k}")
    if args.min_confidence is not None and args.min_confidence > 1:
        raise DigitrecError(f"--min-confidence must be between 0 and 1, got {args.min_confidence}")
    if args.json:
        if args.format not in (None, "jsonl"):
            raise DigitrecError(f"--json is --format jsonl; it contradicts --format {args.format}")
        args.format = "jsonl"
    args.format = args.format or "text"
    if args.files.count("-") > 1:
        raise DigitrecError("- (stdin) can be given only once")
    if args.onnx and args.run:
        raise DigitrecError("--onnx and --run each choose the model; pass one of them")
    names = expand(args.files, args.glob)
    # A file name that is not valid UTF-8 (bytes from another system) arrives as surrogate
    # escapes (PEP 383); printed, it goes back as the same bytes, as ls prints it, instead of
    # a UnicodeEncodeError where stdout's errors are strict (a UTF-8 locale other than C.UTF-8).
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    show_paths = _show_input_paths(args.show_input, len(names)) if args.show_input else None
    _refuse_to_overwrite_inputs(names, ([args.output] if args.output else []) + (show_paths or []))
    # With stdin among the files, the model loads first: a broken --run is reported at once,
    # not after waiting for input. Otherwise the workers start now and work while it loads.
    recognizer = _load_recognizer(args) if "-" in names else None
    # stdin is read here, once; a worker gets the bytes.
    sources = [_read_source(name) for name in names]
    results = PreparedInOrder(sources, args.multi, args.jobs or default_jobs())
    try:
        return _predict_files(args, names, sources, show_paths, results, recognizer)
    finally:
        results.close()  # stops the workers if we leave early (Ctrl-C, a write error)


def _load_recognizer(args: argparse.Namespace) -> Any:
    from .recognition import Recognizer

    if args.onnx:
        from .onnx_runtime import OnnxScorer

        scorer = OnnxScorer(args.onnx, threads=PREDICT_ONNX_THREADS)
        recognizer = Recognizer.from_scorer(scorer, scorer.info)
    elif args.run:
        recognizer = Recognizer.from_run(args.run, args.device)
    else:
        recognizer = Recognizer.default(args.device, backend="auto", threads=PREDICT_ONNX_THREADS)
    recognizer.second_look = args.second_look
    return recognizer


def _predict_files(
    args: argparse.Namespace,
    names: list[str],
    sources: list[Any],
    show_paths: list[str] | None,
    results: Any,
    recognizer: Any,
) -> int:
    from .recognition import hint_several_digits

    if recognizer is None:
        recognizer = _load_recognizer(args)
    if results.pooled and "torch" in sys.modules:
        # The workers keep the cores busy normalizing; the model's share is small, and a
        # second torch thread here would only contend with them.
        sys.modules["torch"].set_num_threads(1)

    show_bar = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty() and len(names) > 1)
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=len(names), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)
    out = _PredictOutput(args, bar)
    failed = 0
    try:
        for start in range(0, len(names), PREDICT_CHUNK):
            chunk = [next(results) for _ in names[start : start + PREDICT_CHUNK]]
            good = [k for k, (_, error) in enumerate(chunk) if error is None]
            predictions = dict(
                zip(
                    good,
                    recognizer.predict_prepared(
                        [chunk[k][0] for k in good], min_confidence=args.min_confidence
                    ),
                    strict=True,
                )
            )
            for offset, (_, error) in enumerate(chunk):
                name = names[start + offset]
                if error is not None:
                    failed += 1
                    # The message names "<bytes>" for stdin; say "-" like the user did.
                    out.row(name, None, error.replace("<bytes>", "-", 1) if name == "-" else error)
                    continue
                prediction = predictions[offset]
                if not args.multi:
                    hint_several_digits(sources[start + offset], prediction)
                if show_paths is not None:
                    _save_input(show_paths[start + offset], prediction)
                out.row(name, prediction, None)
                if prediction.several_digits:
                    out.note(
                        f"digitrec predict: {name}: looks like {prediction.several_digits} digits; "
                        "pass --multi to read them all"
                    )
            out.flush()
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if out.collected is not None:
        from .fileio import write_bytes_atomic

        # surrogateescape: a file name that is not valid UTF-8 goes back as its own bytes.
        write_bytes_atomic(args.output, out.collected.getvalue().encode("utf-8", "surrogateescape"))
    return EXIT_SOME_FAILED if failed else 0


# --------------------------------------------------------------------------- serve


@dataclass(frozen=True)
class ServeLimit:
    """A flag of ``digitrec serve``'s "limits" group that sets the ServeConfig field of the same name
    (``--queue-timeout`` sets ``queue_timeout``; ``--graceful-timeout`` alone is serve()'s own
    argument). The table of them, :data:`SERVE_LIMITS`, makes the parser's flags and cmd_serve's
    ServeConfig: a new limit is a ServeConfig field plus one line there. A count (an int default)
    must be >= 1, a time in seconds (a float default) > 0, as ServeConfig checks."""

    field: str
    metavar: str
    default: int | float
    help: str  # without the default, which is added
    shown: str = ""  # the default as --help states it; "": the default itself
    name: str = ""  # the flag without its dashes, where it is not the field's name

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.field.replace("_", "-"))


SERVE_LIMITS = (
    ServeLimit(
        "max_body_bytes",
        "BYTES",
        2 * 1024 * 1024,
        "largest request body; more is answered 413 before decoding",
        shown="2097152, 2 MiB",
        name="max-body",
    ),
    ServeLimit(
        "max_inflight",
        "N",
        32,
        "prediction requests admitted at once per process, counted once the body is in; "
        "one more is answered 503",
    ),
    ServeLimit(
        "max_uploads",
        "N",
        128,
        "prediction bodies being received at once per process; one more is answered 503",
    ),
    ServeLimit(
        "threads",
        "N",
        2,
        "inference threads per process, off the event loop, for multi=true requests and --batch-window 0",
    ),
    ServeLimit(
        "queue_timeout",
        "SECONDS",
        5.0,
        "longest wait of an admitted request for an inference thread or a decode process before 503",
    ),
    ServeLimit(
        "header_timeout",
        "SECONDS",
        10.0,
        "longest time from a request's first byte to the end of its headers; then 408 and close",
    ),
    ServeLimit(
        "body_timeout",
        "SECONDS",
        10.0,
        "longest time to receive a request body after its headers before 408",
    ),
    ServeLimit(
        "idle_timeout",
        "SECONDS",
        5.0,
        "a connection with no request in progress is closed after this long",
    ),
    ServeLimit("graceful_timeout", "SECONDS", 30.0, "on SIGTERM, longest wait for requests in flight"),
)


def _add_serve(commands: argparse._SubParsersAction[_Parser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the drawing page and the HTTP API",
        description="Serve the drawing page at / and the HTTP API (POST /v1/predict, /v1/models, "
        "/healthz, /readyz, /metrics, /openapi.json) with FastAPI on uvicorn. "
        "SIGTERM or Ctrl-C finishes the requests in flight, then exits.",
    )
    serve.add_argument(
        "--run", metavar="DIR", help="run directory to serve (default: the bundled default model)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_bounded(int, 0), default=8000, help="TCP port, 0 for any free one (default: 8000)"
    )
    serve.add_argument(
        "--workers",
        type=_bounded(int, 1),
        default=1,
        metavar="N",
        help="server processes, each with the model (default: 1)",
    )
    speed = serve.add_argument_group("speed")
    speed.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="what scores: PyTorch, or onnxruntime on the model exported to ONNX at startup "
        "(about 5 s more, none for the bundled model, which ships its copy; needs "
        "digitrec[onnx]); auto: onnx for the bundled model where its copy and onnxruntime "
        "are there, torch otherwise (default: auto)",
    )
    speed.add_argument(
        "--batch-window",
        type=_bounded(float, 0),
        default=2.0,
        metavar="MS",
        help="milliseconds a decoded image waits for concurrent ones to share its model call; "
        "0: no batching and no decode processes, each request alone in an inference thread "
        "(default: 2)",
    )
    speed.add_argument(
        "--max-batch",
        type=_bounded(int, 1),
        default=32,
        metavar="N",
        help="images per model call at most (default: 32)",
    )
    speed.add_argument(
        "--decode-processes",
        type=_bounded(int, 0),
        default=0,
        metavar="N",
        help="processes per server process that decode and normalize images "
        "(default: 0, twice the CPUs divided by --workers)",
    )
    limits = serve.add_argument_group("limits")
    for option in SERVE_LIMITS:
        limits.add_argument(
            option.flag,
            dest=option.field,
            type=_bounded(int, 1) if isinstance(option.default, int) else _bounded(float, 0, inclusive=False),
            default=option.default,
            metavar=option.metavar,
            help=f"{option.help} (default: {option.shown or f'{option.default:g}'})",
        )
    _add_second_look(serve)
    serve.add_argument(
        "--show-run-path",
        action="store_true",
        help="/v1/models shows the run directory's path; without it, only the run's name (default: off)",
    )
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request (default: on)",
    )
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving import ServeConfig, serve

    if args.port > 65535:
        raise DigitrecError(f"--port must be <= 65535, got {args.port}")
    limits = {option.field: getattr(args, option.field) for option in SERVE_LIMITS}
    graceful_timeout = limits.pop("graceful_timeout")
    if args.batch_window > 1000:
        raise DigitrecError(f"--batch-window must be <= 1000 ms, got {args.batch_window:g}")
    config = ServeConfig(
        run=args.run,
        show_run_path=args.show_run_path,
        backend=args.backend,
        batch_window=args.batch_window / 1000,
        max_batch=args.max_batch,
        decode_processes=args.decode_processes,
        second_look=args.second_look,
        **limits,
    )
    serve(
        config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        graceful_timeout=graceful_timeout,
        access_log=args.access_log,
    )
    return 0


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    # Before NumPy, SciPy or OpenCV load their OpenBLAS: it starts a thread per core, and each
    # spins for a while after every matrix product, however small. digitrec's are small (a
    # digit's resize), its parallelism is processes and torch's threads: with one BLAS thread
    # `predict --jobs 2`'s own process spent 12.0 s of CPU on 10,000 drawings against 13.5 s.
    # The pools' workers already set it; a user's own setting stands.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "train":
            code = int(args.handler(args, list(argv) if argv is not None else sys.argv[1:]))
        else:
            code = int(args.handler(args))
        sys.stdout.flush()  # what is still buffered fails here, within reach of the handler below
        return code
    except DigitrecError as exc:
        print(f"digitrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"digitrec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`digitrec predict DIR | head`): stop quietly, with the
        # status of a process SIGPIPE ended, as cat's. stdout then points at /dev/null, so that
        # the interpreter's last flush of what is left in its buffer does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
