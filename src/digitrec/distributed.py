"""Where a process runs: its device, and its place in a torchrun process group.

Shared by training (which joins and leaves the group, and shards the validation
set) and by everything that only picks a device: ``evaluate``, ``report``,
``predict`` and the server's :class:`~digitrec.recognition.Recognizer`.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from .errors import DigitrecError
from .runs import CONFIG_FILE


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DigitrecError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DigitrecError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DigitrecError(f"device {name!r} requested but MPS is not available")
    return device


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it (``RANK`` set), else None.

    A ``RANK`` left in the shell (a cluster's job script, another launcher) without the rest of
    what torchrun sets is the user's to fix: one line, not torch's rendezvous traceback.
    """
    value = os.environ.get("RANK")
    if value is None:
        return None
    missing = [name for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise DigitrecError(
            f"RANK={value} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            "start a distributed run with torchrun (or digitrec train --nproc N), or unset RANK"
        )
    try:
        rank, world_size = int(value), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise DigitrecError(
            f"RANK={value!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} must be whole numbers "
            "(torchrun sets them)"
        ) from None
    if not 0 <= rank < world_size:
        raise DigitrecError(f"RANK={rank} must be between 0 and WORLD_SIZE-1={world_size - 1}")
    return rank


def join_process_group(backend: str, rank: int, world_size: int) -> None:
    """Join the process group that torchrun set up in the environment.

    torchrun's agent hosts one TCPStore for the whole job and hands it to every restart of the worker
    group, but the workers' side of ``env://`` does not prefix keys per attempt
    (``torch.distributed.rendezvous._create_c10d_store``). A restarted group then reads addresses its
    dead predecessors published, and gloo fails to connect ("connectFullMesh ... Connection refused")
    or waits on stale barrier counts. On one node every worker sees the same restart count, so a
    per-attempt key prefix gives each restart a clean store. Across nodes restart counts can differ
    (a node restarts without counting when another node failed), so there the README asks for
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which makes torchrun start a fresh store every round.
    """
    import torch.distributed as dist

    # A bounded wait: if a peer never shows up (a dead machine), fail within minutes so that torchrun
    # can restart the group, instead of hanging for torch's default 30.
    timeout = timedelta(minutes=2)
    one_node = os.environ.get("LOCAL_WORLD_SIZE") == str(world_size)
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared_store and one_node:
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
        agent_store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            world_size,
            is_master=False,
            timeout=timeout,
        )
        store = dist.PrefixStore(f"digitrec/attempt_{attempt}", agent_store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    if (
        shared_store
        and not one_node
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0
        and rank == 0
    ):
        print(
            "warning: restarts across machines need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 set for torchrun "
            "on every machine, or the restarted group may fail to connect (see the README)",
            file=sys.stderr,
        )


def restarted_by_torchrun(run_dir: Path, device: torch.device) -> bool:
    """Whether this group is a torchrun restart of the job that wrote ``run_dir``; every rank agrees.

    This process's ``TORCHELASTIC_RESTART_COUNT`` alone does not tell: across machines, an agent whose
    own workers did not fail restarts them without counting, so after a failure on another machine its
    workers saw 0, took the run directory for another run's, exited ("already holds a run") and spent
    a restart of their own; under load the other machine's workers could then fail in turn, past
    their restarts. The job's id (``TORCHELASTIC_RUN_ID``, recorded in config.json by the first
    round) is the same on every machine, and the flag is all-reduced so that all ranks decide alike.
    """
    import torch.distributed as dist

    counted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    same_job = run_id != "none" and _recorded_run_id(run_dir) == run_id
    # Every rank reads config.json before this collective, and rank 0 rewrites it only after it.
    flag = torch.tensor([int(counted or same_job)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _recorded_run_id(run_dir: Path) -> str | None:
    """The torchrun job id that config.json records, if any (None for a missing or unreadable file)."""
    try:
        value = json.loads((run_dir / CONFIG_FILE).read_text("utf-8")).get("torchelastic_run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def leave_process_group() -> None:
    """Destroy the default process group if one is still up (idempotent; safe at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s share of ``count`` items: contiguous, sizes differing by one."""
    per_rank, extra = divmod(count, world_size)
    start = rank * per_rank + min(rank, extra)
    return start, start + per_rank + (1 if rank < extra else 0)
