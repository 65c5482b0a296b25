"""Scale-out: one run on several GPUs or machines through torchrun and DistributedDataParallel.

The training process side (inside ``torchrun``): :func:`setup` joins the process group
from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), picks nccl on CUDA and gloo
on CPU, and gives the trainer a :class:`DistContext`. Ranks agree on stop every batch
(:func:`agree`), so all of them end at the same step; only rank 0 writes files.
:class:`ProgressFile` mirrors rank 0's live progress into ``RUN_DIR/progress.json``.

The launching side (the job manager or the CLI): :func:`launch` starts torchrun as a
subprocess from an argument list, :func:`supervise` follows ``progress.json``, turns
stop into SIGTERM and the exit into a result, and :meth:`Launch.close` makes sure no
process outlives the run.

Batch size is the *global* batch: each optimizer step splits the same images the
single-process run would use across the ranks, so a config trains the same way on one
device or many (DDP averages the gradients of the pieces).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from finetune_core import runs
from finetune_core.config import ConfigError
from finetune_core.device import resolve_device
from finetune_core.fsutil import atomic_write_json, read_json
from finetune_core.runs import RunPaths
from finetune_core.training.callbacks import Callback, LiveState, Progress, ProgressReporter
from finetune_core.training.trainer import TrainResult

if TYPE_CHECKING:
    from finetune_core.config import RunConfig
    from finetune_core.training.trainer import Trainer, TrainResult

PROGRESS_FILE = "progress.json"
LAUNCH_LOG = "launch.log"
ERRORS_DIR = "errors"
FAIL_RANK_ENV = "FINETUNE_TEST_FAIL_RANK"  # fault injection for tests: this rank raises
TIMEOUT_ENV = "FINETUNE_DIST_TIMEOUT_MIN"  # collective timeout (rank 0 may decode a big cache)
SHUTDOWN_SECONDS = 60  # torchrun's grace for ranks to finish the batch and save after SIGTERM
MULTI_NODE_FROM_CLI = (
    "Runs over several machines start from the command line on every machine "
    "(torchrun with a rendezvous endpoint, see the README); the dashboard launches runs "
    "on this machine only. Set nodes to 1 here."
)


class DistributedRunError(RuntimeError):
    """A multi-process run failed; ``details`` holds the rank's traceback and torchrun's output."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


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

    _die_with_parent(signal.SIGKILL)  # torchrun gone (even SIGKILLed): nobody awaits this rank
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
    from torch.nn.parallel import DistributedDataParallel

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


def _die_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent ends (no orphans)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent ended before prctl took effect
        os.kill(os.getpid(), sig)


# ---------------------------------------------------------------------- rank-side callbacks
class ProgressFile(ProgressReporter):
    """Rank 0's live progress, written atomically to ``RUN_DIR/progress.json``.

    Same fields as :class:`~finetune_core.training.callbacks.Progress` (history included), plus
    ``log_total`` so a reader can tell which log lines are new.
    """

    def __init__(self, run_dir: Path, interval: float = 0.25) -> None:
        super().__init__(LiveState(), interval)
        self.path = Path(run_dir) / PROGRESS_FILE
        self.log_total = 0
        self._written = 0.0

    def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < self.interval:
            return
        self._written = now
        data = progress_to_dict(self.state.snapshot())
        data["log_total"] = self.log_total
        atomic_write_json(self.path, data)

    def on_fit_start(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        super().on_fit_start(trainer, logs)
        self._flush(force=True)

    def on_epoch_start(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        super().on_epoch_start(trainer, logs)
        self._flush()

    def on_batch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        super().on_batch_end(trainer, logs)
        self._flush()

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        super().on_epoch_end(trainer, logs)
        self._flush(force=True)

    def on_fit_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self.state.update(status="STOPPED" if trainer.stop_event.is_set() else "SUCCEEDED")
        self._flush(force=True)

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.state.update(status="FAILED")
        self.on_log(trainer, f"failed: {exc}")

    def on_log(self, trainer: Trainer, message: str) -> None:
        super().on_log(trainer, message)
        self.log_total += 1
        self._flush(force=True)


class FaultInjection(Callback):
    """Raises after the first training batch (tests set FINETUNE_TEST_FAIL_RANK to a rank)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_batch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if logs.get("epoch", 0) >= 1 and logs.get("step", 0) >= 1:
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
    """Write a rank's exception to ``RUN_DIR/errors/rank-N.json`` (the launcher shows it)."""
    try:
        yield
    except BaseException as exc:
        if ctx.enabled:
            record_error(ctx, run_dir, exc)
        raise


def record_error(ctx: DistContext, run_dir: Path, exc: BaseException) -> None:
    import socket

    atomic_write_json(
        Path(run_dir) / ERRORS_DIR / f"rank-{ctx.rank}.json",
        {
            "rank": ctx.rank,
            "host": socket.gethostname(),
            "time": time.time(),
            "type": type(exc).__name__,
            "message": str(exc).strip() or type(exc).__name__,
            "traceback": "".join(traceback.format_exception(exc)),
        },
    )


def read_errors(run_dir: Path) -> list[dict[str, Any]]:
    """The ranks' recorded errors, first one first (later ones are usually consequences)."""
    rows = []
    for path in sorted((Path(run_dir) / ERRORS_DIR).glob("rank-*.json")):
        try:
            row = read_json(path)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return sorted(rows, key=lambda r: r.get("time", 0.0))


# ---------------------------------------------------------------------- progress.json
_PROGRESS_FIELDS = {f.name for f in fields(Progress)}


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    data = asdict(progress)
    data["history"] = list(progress.history)
    data["log"] = list(progress.log)
    return data


def read_progress(path: Path) -> Progress | None:
    """The Progress stored in a progress.json, or None when missing or unreadable."""
    data = _read_progress_dict(Path(path))
    return None if data is None else _progress_from_dict(data)


def _read_progress_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _progress_from_dict(data: dict[str, Any]) -> Progress:
    values = {k: v for k, v in data.items() if k in _PROGRESS_FIELDS}
    values["history"] = tuple(values.get("history") or ())
    values["log"] = tuple(values.get("log") or ())
    return Progress(**values)


_RELAYED = tuple(sorted(_PROGRESS_FIELDS - {"status", "log", "updated_at"}))


@dataclass
class ProgressRelay:
    """Copies a progress.json into the manager's LiveState (status and log stay the manager's)."""

    state: LiveState
    on_epoch: Callable[[Progress], None] | None = None
    _log_seen: int = 0
    _epochs_seen: int = 0
    _version: tuple[int, int, int] = (0, 0, -1)

    def follow(self, path: Path) -> None:
        """Relay ``path`` if it changed since the last call."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        version = (stat.st_mtime_ns, stat.st_ino, stat.st_size)  # every write is a new inode
        if version == self._version:
            return
        data = _read_progress_dict(path)
        if data is None:
            return
        self._version = version
        progress = _progress_from_dict(data)
        self.state.update(**{name: getattr(progress, name) for name in _RELAYED})
        total = int(data.get("log_total", len(progress.log)))
        new = total - self._log_seen
        for line in progress.log[-new:] if new > 0 else ():
            # lines carry rank 0's "HH:MM:SS " stamp; the LiveState adds its own
            self.state.log(line[9:] if line[2:3] == ":" and line[8:9] == " " else line)
        self._log_seen = total
        if len(progress.history) != self._epochs_seen:
            self._epochs_seen = len(progress.history)
            if self.on_epoch is not None:
                self.on_epoch(progress)


# ---------------------------------------------------------------------- launching
def resolve_devices(config: RunConfig) -> int:
    """Processes per machine: the config's number, or every visible GPU for ``all``."""
    if config.devices == "all":
        if config.device != "cpu" and torch.cuda.is_available():
            return torch.cuda.device_count()
        return 1
    return int(config.devices)


def is_multi_process(config: RunConfig) -> bool:
    """True when the config asks for more than one training process."""
    return resolve_devices(config) > 1 or config.nodes > 1


def visible_gpus() -> int:
    """GPUs this machine shows (the setup page offers ``devices`` when there are several)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_count_options(gpus: int) -> list[int | str]:
    """Choices for the setup page's ``devices`` field on a machine with ``gpus`` GPUs."""
    if gpus < 2:
        return [1]
    return [*range(1, gpus + 1), "all"]


_BOOTSTRAP = "from finetune_core.training.ddp import _torchrun_main; _torchrun_main()"


def _torchrun_main() -> None:
    """torchrun, ending with its parent (the manager thread) so it cannot be orphaned."""
    from torch.distributed.run import main

    _die_with_parent(signal.SIGTERM)
    main(sys.argv[1:])


def torchrun_command(
    run_dir: Path,
    *,
    nproc: int,
    nnodes: int = 1,
    workspace: Path | None = None,
    rdzv_endpoint: str = "",
    rdzv_id: str = "",
    resume: bool = False,
    quiet: bool = True,
) -> list[str]:
    """The argument list that starts a run's ranks (torchrun through this interpreter)."""
    run_dir = Path(run_dir)
    cmd = [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc),
    ]
    if rdzv_endpoint:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        cmd += ["--rdzv-id", rdzv_id or run_dir.name]
    elif nnodes == 1:
        cmd += ["--standalone"]  # a free local port: runs never collide
    else:
        raise ValueError(
            f"A run over {nnodes} machines needs a rendezvous endpoint (HOST:PORT of one of them)."
        )
    cmd += ["--max-restarts", "0", "-m", "finetune_core"]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    cmd += ["train", "--config", str(run_dir / "config.json"), "--out", str(run_dir)]
    if resume:
        cmd.append("--resume")
    if quiet:
        cmd.append("--quiet")
    return cmd


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return []
    tree, out, todo = _proc_children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Launch:
    """A running torchrun subprocess and the processes it started."""

    proc: subprocess.Popen
    run_dir: Path
    nproc: int
    started: float  # time.time() at launch
    log_path: Path
    stop_requested_at: float | None = None
    _known: dict[int, str] = field(default_factory=dict)  # pid -> start time (pid reuse guard)
    _log_handle: Any = None
    _tracked_at: float = -1e9

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def track(self, *, every: float = 1.0) -> None:
        """Remember the ranks' pids, so they can be ended even if torchrun dies first."""
        now = time.monotonic()
        if now - self._tracked_at < every:
            return
        self._tracked_at = now
        for pid in descendants(self.proc.pid):
            if pid not in self._known:
                started = _start_time(pid)
                if started is not None:
                    self._known[pid] = started

    def request_stop(self) -> None:
        """SIGTERM to torchrun: it forwards it to the ranks, which stop after the batch."""
        if self.stop_requested_at is None and self.proc.poll() is None:
            self.stop_requested_at = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def close(self, timeout: float = 10.0) -> None:
        """End torchrun and every rank still alive; safe to call more than once."""
        if self.proc.poll() is None:
            self.track(every=0.0)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, started in self._known.items():
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(_start_time(p) == s for p, s in self._known.items()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def output_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def launch(
    run_dir: Path,
    config: RunConfig,
    *,
    workspace: Path | None = None,
    resume: bool = False,
    rdzv_endpoint: str = "",
    rdzv_id: str = "",
    env: dict[str, str] | None = None,
    log_to_file: bool = True,
) -> Launch:
    """Start torchrun for the run in ``run_dir`` (its config.json must exist).

    Output goes to ``RUN_DIR/launch.log`` (or this terminal with ``log_to_file=False``).
    The subprocess gets its own session, so a terminal's Ctrl-C reaches only the launcher,
    which turns it into a graceful stop.
    """
    run_dir = Path(run_dir)
    nproc = resolve_devices(config)
    gpus = visible_gpus()
    if config.device != "cpu" and 0 < gpus < nproc:
        raise ValueError(
            f"devices={config.devices} asks for {nproc} GPUs on this machine, but {gpus} "
            f"are visible: choose devices=all or at most {gpus}."
        )
    cmd = torchrun_command(
        run_dir,
        nproc=nproc,
        nnodes=config.nodes,
        workspace=workspace,
        rdzv_endpoint=rdzv_endpoint,
        rdzv_id=rdzv_id,
        resume=resume,
        quiet=log_to_file,
    )
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    for stale in (run_dir / ERRORS_DIR).glob("rank-*.json"):
        stale.unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_SECONDS))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = run_dir / LAUNCH_LOG
    handle = log_path.open("ab") if log_to_file else None
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT if handle else None,
            env=child_env,
            start_new_session=True,
        )
    except BaseException:
        if handle is not None:
            handle.close()
        raise
    return Launch(proc, run_dir, nproc, time.time(), log_path, _log_handle=handle)


def supervise(
    run: Launch,
    stop_event: threading.Event,
    relay: ProgressRelay | None = None,
    *,
    interval: float = 0.25,
) -> TrainResult:
    """Follow a launched run to its end; stop_event becomes SIGTERM. Returns rank 0's result.

    Raises DistributedRunError (with the first failing rank's message) when it failed.
    Whatever happens, no process of the run is left behind.
    """
    progress_path = run.run_dir / PROGRESS_FILE
    try:
        while run.poll() is None:
            run.track()
            if stop_event.is_set():
                run.request_stop()
                waited = time.monotonic() - (run.stop_requested_at or time.monotonic())
                if waited > SHUTDOWN_SECONDS + 30:
                    break  # torchrun did not end its ranks in time: close() kills them
            if relay is not None:
                relay.follow(progress_path)
            time.sleep(interval)
    finally:
        run.close()
    if relay is not None:
        relay.follow(progress_path)
    return run_result(run, stopped=stop_event.is_set())


def run_result(run: Launch, *, stopped: bool) -> TrainResult:
    """The outcome of a finished launch, from rank 0's metrics.json and the ranks' errors."""

    code = run.poll()
    summary = read_json(run.run_dir / "metrics.json", None)
    fresh = (
        isinstance(summary, dict)
        and (run.run_dir / "metrics.json").stat().st_mtime >= run.started - 1
        and summary.get("status") in ("SUCCEEDED", "STOPPED")
    )
    if fresh and (code == 0 or stopped):
        status = "STOPPED" if stopped else summary["status"]
    elif stopped:
        status, summary = "STOPPED", {}
    else:
        errors = read_errors(run.run_dir)
        tail = run.output_tail()
        if errors:
            first = errors[0]
            message = f"rank {first.get('rank')} failed: {first.get('message')}"
            details = f"{first.get('traceback', '')}\n--- torchrun output (last lines) ---\n{tail}"
        else:
            last = _last_error_line(tail)
            message = f"torchrun exited with code {code}" + (f": {last}" if last else "")
            details = tail
        raise DistributedRunError(message, details)

    history = runs.read_history(RunPaths(run.run_dir))
    return TrainResult(
        status=status,
        epochs_run=int(summary.get("epochs_run", len(history))),
        best_epoch=summary.get("best_epoch"),
        best_val_accuracy=summary.get("val_accuracy"),
        best_val_loss=summary.get("val_loss"),
        train_seconds=float(summary.get("train_seconds") or time.time() - run.started),
        stop_reason=summary.get("stop_reason") or ("stopped by user" if stopped else ""),
        batch_size=int(summary.get("batch_size") or 0),
        events=list(summary.get("events") or []),
        history=history,
    )


def _last_error_line(output: str) -> str:
    """The last ``SomeError: message`` line of a rank's output (not torchrun's own summary)."""
    import re

    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
    for line in reversed(output.splitlines()):
        line = line.strip()
        if pattern.match(line) and "ChildFailedError" not in line:
            return line
    return ""


# ---------------------------------------------------------------------- the CLI launcher
def launch_from_cli(
    config: RunConfig,
    out: Path,
    *,
    workspace: Path | None,
    resume: bool,
    rdzv_endpoint: str = "",
    rdzv_id: str = "",
) -> int:
    """``train`` outside torchrun with devices/nodes > 1: run torchrun here and wait.

    Ctrl-C or SIGTERM becomes a graceful stop of every rank; the exit code is torchrun's
    (130 when stopped on request, like an interrupted single-process run).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    stop = threading.Event()
    try:
        run = launch(
            out,
            config,
            workspace=workspace,
            resume=resume,
            rdzv_endpoint=rdzv_endpoint,
            rdzv_id=rdzv_id,
            log_to_file=False,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"launched {run.nproc} process(es) per machine on {config.nodes} machine(s)", flush=True)
    with stop_on_signals(stop, second_ends=True):
        try:
            while run.poll() is None:
                run.track()
                if stop.is_set():
                    run.request_stop()
                time.sleep(0.25)
        finally:
            run.close()
    return 130 if stop.is_set() else int(run.poll() or 0)
