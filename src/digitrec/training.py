"""The training loop: plain functions, read top to bottom.

Single process::

    digitrec train --model lenet                 # the tutorial's LeNet recipe
    digitrec train --recipe tutorial-mlp --epochs 3 --out runs/mlp

Several processes (data parallel, gloo on CPU, NCCL on CUDA), wired the way
nanoGPT wires it: torchrun sets ``RANK``; there is one ``master_process`` flag;
only the master prints and writes; the saved model is the unwrapped one::

    torchrun --standalone --nproc-per-node 2 -m digitrec train --model lenet

Semantics: ``batch_size`` is the global batch. Every rank walks the same
shuffled order (drawn from the seed and the epoch) and takes its slice of each
global batch; the loss is scaled so that DDP's gradient average equals the mean
over the global batch, exactly as in one process.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .augment import augment_batch
from .checkpoints import (
    load_checkpoint,
    load_model,
    read_calibration,
    read_config,
    read_metrics,
    save_checkpoint,
    save_model,
    write_config,
    write_metrics,
)
from .config import AugmentConfig, TrainConfig
from .cuda_graphs import GraphedStep
from .data import BatchIterator, Dataset, load_dataset
from .distributed import (
    join_process_group,
    leave_process_group,
    resolve_device,
    restarted_by_torchrun,
    shard_bounds,
    torchrun_rank,
)
from .errors import DigitrecError
from .evaluation import evaluate, score
from .fused import FusedMLPStep
from .mixture import build_mixture, held_out_digits
from .models import (
    Ensemble,
    NotDigitHead,
    create_model,
    prefer_channels_last,
    with_not_digit_head,
    without_not_digit_head,
)
from .runs import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE


def make_optimizer(config: TrainConfig, model: nn.Module, capturable: bool = False) -> torch.optim.Optimizer:
    """The run's optimizer. ``capturable``: AdamW keeps its step count and learning rate in device
    tensors, so that a CUDA graph can replay its step (set the rate with ``set_learning_rate``)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adamw":
        if capturable:
            device = next(model.parameters()).device
            lr = torch.tensor(config.lr, dtype=torch.float32, device=device)
            return torch.optim.AdamW(
                model.parameters(), lr=lr, weight_decay=config.weight_decay, capturable=True, foreach=True
            )
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise DigitrecError(f"unknown optimizer {config.optimizer!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)  # in place: a captured CUDA graph reads this very tensor
        else:
            group["lr"] = lr


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``step`` (0-based) out of ``total_steps``.

    onecycle: linear warm-up from lr/25 to lr, then cosine down to lr/10^4 (Smith's one-cycle);
    cosine: linear warm-up from 0, then cosine down to 0; constant: lr throughout (the tutorial).
    """
    if config.schedule == "constant":
        return config.lr
    warm_steps = config.warmup * total_steps
    if step < warm_steps:
        start = config.lr / 25 if config.schedule == "onecycle" else 0.0
        return start + (config.lr - start) * step / warm_steps
    progress = (step - warm_steps) / max(1.0, total_steps - warm_steps)
    floor = config.lr / 1e4 if config.schedule == "onecycle" else 0.0
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay(config: TrainConfig, step: int) -> float:
    """The EMA decay after ``step`` steps (1-based): a short warm-up so that early averages are not
    dominated by the random initialization."""
    return min(config.ema, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, weight: float | torch.Tensor) -> None:
    """ema <- ema + weight * (model - ema), i.e. decay = 1 - weight, for parameters; buffers (BN
    statistics) copied. ``weight`` may be a 0-dim device tensor, for a step replayed as a CUDA graph."""
    ema_params: list[torch.Tensor] = list(ema_model.parameters())
    params = [p.detach() for p in model.parameters()]
    if isinstance(weight, torch.Tensor):
        torch._foreach_lerp_(ema_params, params, [weight] * len(params))
    else:
        torch._foreach_lerp_(ema_params, params, weight)
    for ema_buffer, buffer in zip(ema_model.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.recipe}-{stamp}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = Path(f"{base}-{number}")
    return candidate


@dataclass
class TrainResult:
    model: nn.Module  # the unwrapped model, in eval mode
    config: TrainConfig
    metrics: list[dict[str, Any]]
    run_dir: Path | None


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    dataset: Dataset | None = None,
    resume: bool = False,
    save: bool = True,
    log: Callable[[str], None] | None = print,
    progress: bool | None = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Train ``config`` and return the model and its per-epoch metrics.

    ``out_dir``: the run directory (default ``runs/<recipe>-<timestamp>``);
    ``save=False`` writes nothing. ``resume=True`` continues the run in
    ``out_dir`` after its last completed epoch. ``progress`` shows a bar per
    epoch (default: when stderr is a terminal). ``tensorboard=True`` also writes
    TensorBoard event files into ``out_dir/tensorboard`` (see :mod:`digitrec.tensorboard_log`).
    """
    config.validate()
    if config.ensemble > 1:
        return train_ensemble(
            config,
            out_dir,
            dataset,
            resume=resume,
            save=save,
            log=log,
            progress=progress,
            tensorboard=tensorboard,
        )
    if dataset is not None and dataset.name != config.dataset and Path(dataset.source).is_dir():
        # Record where the given dataset came from, so that evaluate and report score the same test set.
        config = dataclasses.replace(config, dataset=dataset.name, data_dir=dataset.source)
    if tensorboard:
        from . import tensorboard_log

        if not save:
            raise DigitrecError("tensorboard=True writes into the run directory; it needs save=True")
        tensorboard_log.summary_writer_class()  # fails now, before anything is written, if it is missing

    # --- processes: one, or many under torchrun (nanoGPT's wiring) ---
    torchrun = torchrun_rank()  # None: not started by torchrun
    ddp = torchrun is not None
    if torchrun is not None:
        import torch.distributed as dist

        rank, world_size = torchrun, int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = resolve_device(config.device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns_process_group = not dist.is_initialized()
        if owns_process_group:
            join_process_group("nccl" if device.type == "cuda" else "gloo", rank, world_size)
            # Left for interpreter shutdown, gloo's worker threads can abort the process ("terminate
            # called without an active exception", exit -6) after a run that succeeded; an error
            # that ends the run early leaves the group behind too, so atexit covers that path.
            atexit.register(leave_process_group)
    else:
        rank, world_size, device = 0, 1, resolve_device(config.device)
        owns_process_group = False
    master_process = rank == 0
    say = log if (master_process and log is not None) else (lambda _line: None)
    show_progress = master_process and (sys.stderr.isatty() if progress is None else progress)

    # --- run directory ---
    run_dir: Path | None = None
    if save:
        if out_dir is not None:
            run_dir = Path(out_dir)
        elif ddp and os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
            # Every rank, and every restart of the group, must agree on the folder: name it by the job.
            run_dir = Path("runs") / f"{config.recipe}-{os.environ['TORCHELASTIC_RUN_ID']}"
        else:
            run_dir = default_run_dir(config)
        # torchrun --max-restarts restarts the whole group after a failure: the restarted group goes on
        # from the last checkpoint, or from scratch if the failure came before the first one.
        restarted = ddp and restarted_by_torchrun(run_dir, device)
        has_checkpoint = (run_dir / CHECKPOINT_FILE).exists()
        if (resume or restarted) and not has_checkpoint:
            if resume:
                read_config(run_dir)  # it must still be a run directory (a clear error if not)
                if (run_dir / MODEL_FILE).exists():
                    # A model without its training state (the bundled model; a run pruned to
                    # ship): nothing to go on from, and starting over would overwrite the model.
                    raise DigitrecError(
                        f"{run_dir}: holds a trained model but no {CHECKPOINT_FILE} to resume from; "
                        "train a new run with --out"
                    )
            say(f"{run_dir}: no epoch had completed; starting from scratch")
            resume = False
        elif restarted:
            resume = True
        if resume:
            saved = read_config(run_dir)
            if saved.to_dict() | {"epochs": config.epochs} != config.to_dict():
                raise DigitrecError(f"{run_dir}: --resume may change only --epochs")
        elif not restarted and ((run_dir / MODEL_FILE).exists() or has_checkpoint):
            raise DigitrecError(f"{run_dir}: already holds a run; pass --resume or choose another --out")

    # --- data: resident in memory (and on the GPU when there is one) ---
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    holdout: tuple[torch.Tensor, torch.Tensor] | None = None
    if config.mix:
        # Other writers, drawn digits and non-digits (label -1) added to the training set; the test set
        # stays the dataset's. With calibrate, some training digits are held out for the temperature.
        mixture = build_mixture(
            dataset, config.mix, config.seed, usps_dir=config.usps_dir, calibrate=config.calibrate, log=say
        )
        dataset = mixture.dataset
        if mixture.holdout_images is not None and mixture.holdout_labels is not None:
            holdout = (mixture.holdout_images, mixture.holdout_labels)
    has_not_digits = bool(config.mix) and bool((dataset.train_labels < 0).any())
    dataset = dataset.to(device)
    train_batches = BatchIterator(
        dataset.train_images,
        dataset.train_labels,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
    )
    # Validation is sharded too and the counts all-reduced: every image counted once.
    val_slice = slice(*shard_bounds(len(dataset.test_images), rank, world_size))
    val_images, val_labels = dataset.test_images[val_slice], dataset.test_labels[val_slice]

    # --- model and optimizer; the same seed gives the same initial weights on every rank ---
    torch.manual_seed(config.seed)
    model = create_model(config.model, **config.model_args).to(device)
    if config.not_digit_head and not NotDigitHead.fits(model):  # said now, not after the training
        raise DigitrecError(
            f"not_digit_head: model {config.model!r} cannot take a not-a-digit head (it needs a sequence "
            "of layers ending in a linear one: cnn, fastcnn, resnet, mlp)"
        )
    model = prefer_channels_last(model)
    # On a GPU, replay each full training step as one CUDA graph (cuda_graphs.py): one process, and a
    # learning rate the graph can read (constant, or AdamW's device tensor).
    use_graphs = (
        config.cuda_graphs
        and device.type == "cuda"
        and not ddp
        and (config.optimizer == "adamw" or config.schedule == "constant")
    )
    optimizer = make_optimizer(config, model, capturable=use_graphs)
    # The weight average (EMA) is what gets evaluated and saved; the raw weights are what trains.
    ema_model = copy.deepcopy(model) if config.ema > 0 else None
    start_epoch, metrics = 0, []
    if resume and run_dir is not None:
        for stale in run_dir.glob(".*.tmp"):  # left by a write that was killed midway
            stale.unlink(missing_ok=True)
        start_epoch = load_checkpoint(run_dir, model, optimizer, ema_model)
        metrics = [row for row in read_metrics(run_dir) if row["epoch"] <= start_epoch]
        say(f"resuming {run_dir} after epoch {start_epoch}")
    if run_dir is not None and master_process:
        write_config(run_dir, config, _run_info(dataset, world_size))
    tb_writer = None
    if tensorboard and run_dir is not None and master_process:
        tb_writer = tensorboard_log.open_log(run_dir, dataset.train_images, start_epoch)
    raw_model = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    say(
        f"training {config.model} ({config.recipe}) on {dataset.name}: {len(dataset.train_images)} train / "
        f"{len(dataset.test_images)} test images, device {device}, {world_size} process(es), "
        f"batch {config.batch_size}, lr {config.lr}, {config.epochs} epochs, seed {config.seed}"
        + (", bf16 autocast" if config.precision == "bf16" else "")
    )

    # --- the step, chosen once: a replayed CUDA graph, the fused MLP step, or plain autograd ---
    # Plain SGD on a ReLU MLP in one process: the same math as autograd in fewer operations (fused.py).
    plain_sgd = config.optimizer == "sgd" and config.momentum == 0 and config.weight_decay == 0
    exact_fp32 = config.label_smoothing == 0 and config.precision == "fp32"
    fused_step = FusedMLPStep.for_model(raw_model) if plain_sgd and exact_fp32 and not ddp else None
    # Optional bf16 autocast of the forward pass and loss; the backward pass follows autocast's choices.
    # (Its cache of cast weights must be off inside a CUDA graph.)
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16", cache_enabled=not use_graphs
    )
    # The EMA weight of the coming step: a device tensor when a CUDA graph reads it, else a number.
    ema_weight = torch.zeros((), device=device) if use_graphs and ema_model is not None else None

    def autograd_step(
        x: torch.Tensor, y: torch.Tensor, global_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: forward, loss, backward, update (and the weight average). Returns the loss summed
        over this rank's samples and the number it got right, both as tensors (no host sync)."""
        with autocast:
            scores = model(x)
            if has_not_digits:
                batch_loss = loss_with_not_digits(scores, y, config.label_smoothing, config.not_digit_weight)
            else:
                batch_loss = F.cross_entropy(
                    scores, y, reduction="sum", label_smoothing=config.label_smoothing
                )
        # Mean over the global batch after DDP averages over world_size ranks.
        loss = batch_loss * (world_size / global_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # With a CUDA graph the weight average is part of the step; otherwise the loop updates it.
        if ema_model is not None and ema_weight is not None:
            update_ema(ema_model, raw_model, ema_weight)
        return batch_loss.detach(), (scores.argmax(1) == y).sum()

    graphed_step = (
        # One process: the global batch is this batch (the last one of an epoch is smaller).
        GraphedStep(lambda x, y: autograd_step(x, y, len(y)), config.batch_size) if use_graphs else None
    )

    # --- the epochs: train this rank's share, validate, all-reduce the counts, log, checkpoint ---
    augment = AugmentConfig(**config.augment)
    eval_model = ema_model if ema_model is not None else raw_model
    steps_per_epoch = len(train_batches)
    total_steps = steps_per_epoch * config.epochs
    for epoch in range(start_epoch, config.epochs):
        # Any randomness inside the epoch (dropout, augmentation) depends only on seed, epoch and rank,
        # so a resumed run continues exactly where an uninterrupted one would be.
        epoch_seed = config.seed * 100_003 + epoch * 1_009 + rank
        torch.manual_seed(epoch_seed)
        augment_generator = torch.Generator().manual_seed(epoch_seed)
        step = epoch * steps_per_epoch
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed over samples; no host sync per step
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        batches = train_batches.batches(epoch)
        if show_progress:
            from tqdm import tqdm

            batches = tqdm(
                batches,
                total=len(train_batches),
                desc=f"epoch {epoch + 1}/{config.epochs}",
                leave=False,
                unit="batch",
                file=sys.stderr,
            )
        started = time.perf_counter()
        for x, y, global_size in batches:
            if augment.enabled:
                x = augment_batch(x, augment, augment_generator)
            if config.schedule != "constant":
                set_learning_rate(optimizer, learning_rate(config, step, total_steps))
            step += 1
            if ema_weight is not None:
                ema_weight.fill_(1.0 - ema_decay(config, step))
            if graphed_step is not None:
                batch_loss, batch_correct = graphed_step(x, y)
            elif fused_step is not None:
                batch_loss, batch_correct = fused_step(x, y, optimizer.param_groups[0]["lr"], global_size)
            else:
                batch_loss, batch_correct = autograd_step(x, y, global_size)
            if ema_model is not None and ema_weight is None:
                update_ema(ema_model, raw_model, 1.0 - ema_decay(config, step))
            loss_sum += batch_loss
            correct += batch_correct
            # Training accuracy counts digits only (a non-digit has no right answer among 0-9).
            seen += int((y >= 0).sum()) if has_not_digits else len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds = time.perf_counter() - started

        val_correct = (score(eval_model, val_images).argmax(1) == val_labels).sum()
        totals = torch.stack(
            [
                loss_sum.double(),
                correct.double(),
                torch.tensor(float(seen), device=device, dtype=torch.float64),
                val_correct.double(),
            ]
        )
        if ddp:
            torch.distributed.all_reduce(totals)
        loss_total, correct_total, seen_total, val_total = totals.tolist()
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_total / seen_total,
            "train_accuracy": correct_total / seen_total,
            "val_accuracy": val_total / len(dataset.test_images),
            "epoch_seconds": round(epoch_seconds, 4),
        }
        metrics.append(row)
        say(
            f"epoch {epoch + 1:>3}/{config.epochs}  loss {row['train_loss']:.4f}  "
            f"training acc {row['train_accuracy']:.4f}  validation acc {row['val_accuracy']:.4f}  "
            f"{epoch_seconds:.2f} s"
        )
        if not math.isfinite(row["train_loss"]):
            # Diverged (a learning rate too high for the model): the weights are NaN or infinite from
            # here on. Stopped before they overwrite the last checkpoint or become the run's model.
            raise DigitrecError(
                f"training diverged: the loss is {row['train_loss']} in epoch {epoch + 1} (learning rate "
                f"{config.lr:g}); nothing of that epoch was saved: try a lower --lr"
            )
        if run_dir is not None and master_process:
            # Metrics first, then the checkpoint: a kill in between is healed by resume.
            checkpointed = False
            try:
                write_metrics(run_dir, metrics)
                save_checkpoint(run_dir, raw_model, optimizer, config, epoch + 1, ema_model)
                checkpointed = True
                save_model(run_dir / MODEL_FILE, eval_model, config, epoch + 1)
            except DigitrecError as exc:  # a full disk, say: the last checkpoint is intact
                if not checkpointed:
                    # Take this epoch's row back, so the metrics end where the checkpoint does (the
                    # failed write's temp file is gone, so the few bytes this needs are usually there).
                    with contextlib.suppress(DigitrecError):
                        write_metrics(run_dir, metrics[:-1])
                raise DigitrecError(f"{exc}; once fixed: digitrec train --resume {run_dir}") from None
        if tb_writer is not None:
            tensorboard_log.log_epoch(tb_writer, row)

    # --- not-a-digit head: fitted on the frozen features of the training set's digits and non-digits ---
    if config.not_digit_head and master_process:
        started = time.perf_counter()
        eval_model = fit_not_digit_head(
            eval_model, dataset.train_images, dataset.train_labels, config.not_digit_head, config.seed
        )
        seconds = time.perf_counter() - started
        say(f"not-a-digit head of {config.not_digit_head} units fitted in {seconds:.1f} s")

    # --- calibration: a temperature fitted on held-out digits, folded into the last layer ---
    if config.calibrate and holdout is not None and master_process:
        calibration = calibrate(eval_model, holdout[0].to(device), holdout[1].to(device))
        say(
            f"calibrated on {len(holdout[1])} held-out digits: temperature {calibration['temperature']:.3f}, "
            f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}, "
            f"not a digit below an energy of {calibration['not_digit_energy_below']:.3f}"
        )
        if run_dir is not None:
            save_model(run_dir / MODEL_FILE, eval_model, config, config.epochs)
            write_config(run_dir, config, _run_info(dataset, world_size) | {"calibration": calibration})

    # --- shutdown: the last TensorBoard figures, a summary, and the process group this call started ---
    if tb_writer is not None:
        tensorboard_log.log_mistakes(
            tb_writer, eval_model, dataset.test_images, dataset.test_labels, config.epochs
        )
        tb_writer.close()
    if graphed_step is not None:
        steps_run = total_steps - start_epoch * steps_per_epoch
        say(f"{graphed_step.replays} of {steps_run} steps ran as CUDA graph replays")
    if run_dir is not None:
        say(f"saved {run_dir}")
    if ddp:
        torch.distributed.barrier()
        if owns_process_group:
            leave_process_group()
    return TrainResult(model=eval_model.eval(), config=config, metrics=metrics, run_dir=run_dir)


def train_ensemble(
    config: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    dataset: Dataset | None = None,
    *,
    resume: bool = False,
    save: bool = True,
    log: Callable[[str], None] | None = print,
    progress: bool | None = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Train ``config.ensemble`` members one after another and save them as one averaging model.

    Member k is a whole run of its own, ``<run>/members/<k>``, from seed ``config.seed + k`` (its
    own initialization, shuffling and drawn mixture), calibrated on its own. The ensemble averages
    the members' scores; a temperature and a not-a-digit threshold are then fitted for the average
    on the same held-out digits (the mixture holds out the same ones whatever the seed, so no member
    trained on them) and the result is saved in ``<run>`` like any model. ``metrics.jsonl`` holds
    one row per epoch: the members' mean training loss and accuracy, their summed time, and as
    ``val_accuracy`` the members' mean, except in the last row, which has the ensemble's own (as
    ``evaluate`` and ``report`` measure it). ``resume`` keeps the members that finished and resumes
    the one that did not. ``tensorboard``: each member logs into its own run directory.
    """
    if dataset is not None and dataset.name != config.dataset and Path(dataset.source).is_dir():
        # As train() records it: evaluate and report then score the test set the members saw.
        config = dataclasses.replace(config, dataset=dataset.name, data_dir=dataset.source)
    master_process = (torchrun_rank() or 0) == 0
    say = log if (master_process and log is not None) else (lambda _line: None)
    run_dir: Path | None = None
    if save:
        if out_dir is not None:
            run_dir = Path(out_dir)
        elif os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
            run_dir = Path("runs") / f"{config.recipe}-{os.environ['TORCHELASTIC_RUN_ID']}"
        else:
            run_dir = default_run_dir(config)
        if resume:
            saved = read_config(run_dir)  # it must be a run directory (a clear error if not)
            if saved.to_dict() | {"epochs": config.epochs} != config.to_dict():
                raise DigitrecError(f"{run_dir}: --resume may change only --epochs")
        elif (run_dir / MODEL_FILE).exists() or (run_dir / "members").exists():
            raise DigitrecError(f"{run_dir}: already holds a run; pass --resume or choose another --out")
        if master_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, config, {"members": config.ensemble})

    members: list[nn.Module] = []
    member_metrics: list[list[dict[str, Any]]] = []
    for k in range(config.ensemble):
        member_config = dataclasses.replace(config, ensemble=1, seed=config.seed + k)
        member_dir = None if run_dir is None else run_dir / "members" / str(k)
        done = (
            resume
            and member_dir is not None
            and (member_dir / MODEL_FILE).exists()
            and [row["epoch"] for row in read_metrics(member_dir)][-1:] == [config.epochs]
            and (not config.calibrate or bool(read_calibration(member_dir)))
        )
        if done and member_dir is not None:
            say(f"ensemble member {k + 1} of {config.ensemble} ({member_dir}) had finished; kept")
            model, _ = load_model(member_dir)
            members.append(model)
            member_metrics.append(read_metrics(member_dir))
            continue
        say(f"ensemble member {k + 1} of {config.ensemble}: seed {member_config.seed}")
        result = train(
            member_config,
            out_dir=member_dir,
            dataset=dataset,
            resume=resume and member_dir is not None and (member_dir / "config.json").exists(),
            save=save,
            log=log,
            progress=progress,
            tensorboard=tensorboard,
        )
        members.append(result.model.cpu())
        member_metrics.append(result.metrics)

    ensemble = Ensemble(members).eval()
    if not master_process:
        return TrainResult(model=ensemble, config=config, metrics=[], run_dir=run_dir)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    calibration: dict[str, Any] | None = None
    if config.calibrate and config.mix:
        images, labels = held_out_digits(dataset, config.mix, usps_dir=config.usps_dir)
        calibration = calibrate(ensemble, images, labels)
        say(
            f"ensemble calibrated on {len(labels)} held-out digits: temperature "
            f"{calibration['temperature']:.3f}, ECE {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f}, not a digit below an energy of "
            f"{calibration['not_digit_energy_below']:.3f}"
        )
    accuracy = evaluate(ensemble, dataset.test_images, dataset.test_labels).accuracy
    metrics = []
    for epoch_rows in zip(*member_metrics, strict=True):
        metrics.append(
            {
                "epoch": epoch_rows[0]["epoch"],
                "train_loss": sum(r["train_loss"] for r in epoch_rows) / len(epoch_rows),
                "train_accuracy": sum(r["train_accuracy"] for r in epoch_rows) / len(epoch_rows),
                "val_accuracy": sum(r["val_accuracy"] for r in epoch_rows) / len(epoch_rows),
                "epoch_seconds": round(sum(r["epoch_seconds"] for r in epoch_rows), 4),
            }
        )
    metrics[-1]["members_val_accuracy"] = metrics[-1]["val_accuracy"]
    metrics[-1]["val_accuracy"] = accuracy
    each = ", ".join(f"{rows[-1]['val_accuracy']:.4f}" for rows in member_metrics)
    say(f"ensemble of {config.ensemble}: validation accuracy {accuracy:.4f} (members: {each})")
    if run_dir is not None:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        extra = _run_info(dataset, world_size) | {"members": config.ensemble}
        if calibration is not None:
            extra["calibration"] = calibration
        write_metrics(run_dir, metrics)
        save_model(run_dir / MODEL_FILE, ensemble, config, config.epochs)
        write_config(run_dir, config, extra)
        say(f"saved {run_dir}")
    return TrainResult(model=ensemble, config=config, metrics=metrics, run_dir=run_dir)


def loss_with_not_digits(
    scores: torch.Tensor, y: torch.Tensor, label_smoothing: float, not_digit_weight: float
) -> torch.Tensor:
    """Summed loss of a batch whose label -1 means "not a digit".

    A digit: cross-entropy with label smoothing (as F.cross_entropy computes it). A non-digit:
    ``not_digit_weight`` times the cross-entropy against the uniform distribution over the ten
    digits (outlier exposure): the model learns to spread its belief, never to pick a digit.
    Masks, not indexing, so the shapes stay fixed.
    """
    log_p = scores.float().log_softmax(dim=1)  # (B, 10)
    spread = -log_p.mean(dim=1)  # (B,) cross-entropy against uniform
    picked = -log_p.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
    digit_loss = (1.0 - label_smoothing) * picked + label_smoothing * spread
    return torch.where(y >= 0, digit_loss, not_digit_weight * spread).sum()


def calibrate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fit the temperature on held-out digits, fold it into ``model`` and pick the not-a-digit
    threshold there (calibration.py). Returns what config.json records."""
    import numpy as np

    from .calibration import (
        KEEP_HELD_OUT,
        expected_calibration_error,
        fit_temperature,
        fold_temperature,
        not_digit_threshold,
    )
    from .recognition import softmax

    model.eval()
    logits = score(model, images).double().cpu().numpy()
    truth = labels.cpu().numpy()
    temperature = fit_temperature(logits, truth)
    fold_temperature(model, temperature)
    calibrated = softmax(logits / temperature)
    # The threshold is read on what the model now outputs: with a not-a-digit head, the classifier's
    # scores divided by T less the head's shift, which the temperature does not divide.
    after = score(model, images).double().cpu().numpy()
    return {
        "temperature": round(temperature, 6),
        "held_out_digits": len(truth),
        "ece_before": round(expected_calibration_error(softmax(logits), truth), 6),
        "ece_after": round(expected_calibration_error(calibrated, truth), 6),
        "held_out_accuracy": round(float((np.argmax(logits, axis=1) == truth).mean()), 6),
        "not_digit_energy_below": round(not_digit_threshold(after, KEEP_HELD_OUT), 6),
    }


# The not-a-digit head's fit (models.NotDigitHead): AdamW on the frozen, standardized features.
# Chosen on a validation draw of non-digits (seed 1, not the benchmark's): README "Not a digit".
HEAD_EPOCHS = 20
HEAD_BATCH = 512
HEAD_LR = 1e-3
HEAD_WEIGHT_DECAY = 1e-2


def fit_not_digit_head(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, hidden: int, seed: int
) -> nn.Module:
    """``model`` inside a :class:`NotDigitHead` of ``hidden`` units (each member's, for an ensemble),
    the head fitted to tell the training set's non-digits (label -1) from its digits.

    images: (N, 28, 28) uint8, labels: (N,), on the model's device. The model's own layers are not
    changed: the head reads their features (computed once, eval mode) and learns by binary
    cross-entropy, the classes weighted to count alike. The features' standardization is folded
    into the head's first layer afterwards, so the saved head takes the raw features."""
    wrapped = with_not_digit_head(model, hidden)
    members = list(wrapped.members) if isinstance(wrapped, Ensemble) else [wrapped]
    for member in members:
        assert isinstance(member, NotDigitHead)
        _fit_head(member, images, labels, seed)
    return wrapped.eval()


def _fit_head(model: NotDigitHead, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    model.eval()
    features = score(model.body, images)  # (N, F), without autograd
    target = (labels < 0).to(torch.float32)  # 1 = not a digit
    not_digits = int(target.sum())
    if not 0 < not_digits < len(target):
        raise DigitrecError("fitting a not-a-digit head needs digits and non-digits in the training set")
    mean = features.mean(dim=0)
    std = features.std(dim=0)
    # A feature that barely varies in training must not be blown up by its tiny spread.
    spread = std[std > 0]
    std = std.clamp_min(0.1 * float(spread.median()) if len(spread) else 1.0)
    features = (features - mean) / std
    head = model.head
    torch.manual_seed(seed)
    for layer in head:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    optimizer = torch.optim.AdamW(head.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
    pos_weight = torch.tensor((len(target) - not_digits) / not_digits, device=features.device)
    head.train()
    for _ in range(HEAD_EPOCHS):
        order = torch.randperm(len(features), device=features.device)
        for start in range(0, len(order), HEAD_BATCH):
            pick = order[start : start + HEAD_BATCH]
            evidence = head(features[pick]).squeeze(1)  # (B,) logits of "not a digit"
            loss = F.binary_cross_entropy_with_logits(evidence, target[pick], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    first = head[1]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():  # W (x - m) / s + b = (W / s) x + (b - (W / s) m)
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)


def add_not_digit_head(
    run_dir: str | os.PathLike[str],
    hidden: int = 128,
    log: Callable[[str], None] | None = print,
    *,
    replace: bool = False,
) -> dict[str, Any]:
    """Give a finished, calibrated run trained with non-digits a not-a-digit head, in place: the
    head fitted as ``train`` fits it (on the run's own mixture, drawn again from its seed or read
    from the cache), the not-a-digit threshold picked again on the held-out digits; the
    temperature and every probability stay as they were. Returns the new calibration record.
    ``replace``: a run that has a head gets a new one in its place (after a change to the
    mixture's non-digits, say). The model file and config.json are each replaced atomically."""
    import json

    from .calibration import KEEP_HELD_OUT, not_digit_threshold

    say = log if log is not None else (lambda _line: None)
    run_dir = Path(run_dir)
    model, config = load_model(run_dir)
    if config.not_digit_head:
        if not replace:
            raise DigitrecError(
                f"{run_dir}: the model already has a not-a-digit head (replace=True fits a new one)"
            )
        model = without_not_digit_head(model)
    config = dataclasses.replace(config, not_digit_head=hidden).validate()
    data = json.loads((run_dir / CONFIG_FILE).read_text("utf-8"))  # load_model has checked it
    calibration = dict(data.get("calibration") or {})
    if "temperature" not in calibration:
        raise DigitrecError(f"{run_dir}: not calibrated; a not-a-digit head needs a calibrated run")
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    mixture = build_mixture(
        dataset, config.mix, config.seed, usps_dir=config.usps_dir, calibrate=True, log=say
    )
    assert mixture.holdout_images is not None
    started = time.perf_counter()
    model = fit_not_digit_head(
        model, mixture.dataset.train_images, mixture.dataset.train_labels, hidden, config.seed
    )
    say(f"not-a-digit head of {hidden} units fitted in {time.perf_counter() - started:.1f} s")
    scores = score(model, mixture.holdout_images).double().numpy()
    calibration["not_digit_energy_below"] = round(not_digit_threshold(scores, KEEP_HELD_OUT), 6)
    metrics = read_metrics(run_dir)
    save_model(run_dir / MODEL_FILE, model, config, metrics[-1]["epoch"] if metrics else config.epochs)
    extra = {key: value for key, value in data.items() if key != "train"} | {
        "calibration": calibration,
        # The command above trained the classifier; the head came after, by this function.
        "not_digit_head_added_by": f"digitrec.training.add_not_digit_head(run_dir, hidden={hidden}"
        + (", replace=True)" if replace else ")"),
    }
    write_config(run_dir, config, extra)
    say(f"{run_dir}: not a digit below an energy of {calibration['not_digit_energy_below']:.3f}")
    return calibration


def _program_name() -> str:
    name = Path(sys.argv[0]).name
    return "python -m digitrec" if name == "__main__.py" else name


def _run_info(dataset: Dataset, world_size: int) -> dict[str, Any]:
    return {
        "digitrec_version": __version__,
        "torch_version": torch.__version__,
        "dataset_source": dataset.source,
        "world_size": world_size,
        "command": " ".join([_program_name(), *sys.argv[1:]]),
        # torchrun's job id: a restarted group recognizes its own run directory by it.
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
    }
