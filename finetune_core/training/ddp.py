"""Scale-out, the rank side: one run on several GPUs or machines with DistributedDataParallel.

Inside ``torchrun``, :func:`setup` joins the process group from torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK), picks nccl on CUDA and gloo on CPU, and gives the trainer
a :class:`DistContext`. Ranks agree on stop every batch (:func:`agree`), so all of them
end at the same step; only rank 0 writes files, and it mirrors its live progress into the
run folder's progress file. The launching side (starting torchrun, supervising it) is
``finetune_core.jobs.launcher``.

Batch size is the *global* batch: each optimizer step splits the same images the
single-process run would use across the ranks, so a config trains the same way on one
device or many (DDP averages the gradients of the pieces).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from finetune_core.config import ConfigError, RunConfig
from finetune_core.device import resolve_device
from finetune_core.fsutil import atomic_write_json
from finetune_core.runs import RunPaths
from finetune_core.training.events import Callback
from finetune_core.training.progress import ProgressFile

FAIL_RANK_ENV = "FINETUNE_TEST_FAIL_RANK"  # fault injection for tests: this rank raises
TIMEOUT_ENV = "FINETUNE_DIST_TIMEOUT_MIN"  # collective timeout (rank 0 may decode a big cache)


# ---------------------------------------------------------------------- the process group
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; the default is the plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()
_control_group: Any = None  # a gloo group for CPU-side flags when the main backend is nccl


def under_torchrun() -> bool:
    """True inside a process started by torchrun (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_context() -> DistContext:
    """The context torchrun's environment variables describe (SINGLE outside torchrun)."""
    if not under_torchrun():
        return SINGLE
    env = os.environ
    world = int(env["WORLD_SIZE"])
    return DistContext(
        rank=int(env["RANK"]),
        world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def current() -> DistContext:
    """The context of the initialised process group, SINGLE when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    env = env_context()
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each rank of a multi-GPU job owns the GPU of its local rank."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def threads_per_rank(num_threads: int, ctx: DistContext) -> int:
    """Intra-op threads: the config's value, or the cores shared among this machine's ranks."""
    if not ctx.enabled or num_threads:
        return num_threads
    return max(1, (os.cpu_count() or 1) // max(1, ctx.local_world_size))


def setup(config: RunConfig) -> DistContext:
    """Join torchrun's process group (a no-op returning SINGLE outside torchrun)."""
    global _control_group
    ctx = env_context()
    if not ctx.enabled:
        return SINGLE

    if config.strategy == "probe":
        raise ConfigError(
            "The probe strategy trains on one device (it is quick already): run it without "
            "torchrun, or choose another strategy."
        )

    die_with_parent(signal.SIGKILL)  # torchrun gone (even SIGKILLed): nobody awaits this rank
    device = rank_device(resolve_device(config.device), ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "30")))
    backend = backend_for(device)
    dist.init_process_group(backend=backend, timeout=timeout)
    _control_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return current()


def teardown(ctx: DistContext) -> None:
    """Leave the process group (safe to call when there is none)."""
    global _control_group
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def agree(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on any rank (stop at the same step everywhere)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return bool(t.item())


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(t, src=0, group=_control_group)
    return bool(t.item())


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


def all_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sums over all ranks (float64 on the CPU)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_control_group)
    return t.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier(group=_control_group)


@contextlib.contextmanager
def local_main_first(ctx: DistContext) -> Iterator[None]:
    """Local rank 0 runs the block first (decoding the image cache once per machine)."""
    if not ctx.enabled:
        yield
        return
    if ctx.local_rank != 0:
        barrier(ctx)
    yield
    if ctx.local_rank == 0:
        barrier(ctx)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP over the parameters that currently require grad (rebuild when that set changes)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's BatchNorm statistics everywhere, so every rank evaluates the saved model."""
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


# ---------------------------------------------------------------------- stop signals
@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event, *, second_ends: bool = False) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop_event`` (finish the batch, keep the best checkpoint).

    Ranks keep handling repeats (torchrun may signal twice, and SIGKILLs after its grace
    period); with ``second_ends`` a second signal gets the previous behaviour back, so a
    second Ctrl-C ends a launcher at once. Only usable from the main thread.
    """
    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in sigs}

    def handler(signum: int, frame: Any) -> None:
        stop_event.set()
        if second_ends:
            for s in sigs:
                signal.signal(s, previous[s])

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, previous[s])


def die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent ends (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before prctl took effect
        os.kill(os.getpid(), sig)


class FaultInjection(Callback):
    """Raises after the first training batch (tests set FINETUNE_TEST_FAIL_RANK to a rank)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def after_batch(self, trainer: Any) -> None:
        if trainer.phase.trains:
            raise RuntimeError(f"injected failure on rank {self.rank} ({FAIL_RANK_ENV})")


def rank_callbacks(ctx: DistContext, run_dir: Path) -> list[Callback]:
    """The callbacks a rank adds: the progress file on rank 0, fault injection where asked."""
    out: list[Callback] = []
    if ctx.enabled and ctx.is_main:
        out.append(ProgressFile(run_dir))
    if ctx.enabled and os.environ.get(FAIL_RANK_ENV, "") == str(ctx.rank):
        out.append(FaultInjection(ctx.rank))
    return out


@contextlib.contextmanager
def errors_recorded(ctx: DistContext, run_dir: Path) -> Iterator[None]:
    """Write a rank's exception to the run folder's errors (the launcher shows it)."""
    try:
        yield
    except BaseException as exc:
        if ctx.enabled:
            record_error(ctx, run_dir, exc)
        raise


def record_error(ctx: DistContext, run_dir: Path, exc: BaseException) -> None:
    atomic_write_json(
        RunPaths(run_dir).rank_error(ctx.rank),
        {
            "rank": ctx.rank,
            "host": socket.gethostname(),
            "time": time.time(),
            "type": type(exc).__name__,
            "message": str(exc).strip() or type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc)),
        },
    )
