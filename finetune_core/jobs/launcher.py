"""Scale-out, the launching side: start torchrun for a run and supervise it.

The job manager or the CLI calls :func:`launch`, which starts torchrun as a subprocess
(its own session) from an argument list; :func:`supervise` follows the run folder's
progress file, turns stop into SIGTERM and the exit into a result, and
:meth:`Launch.close` makes sure no process outlives the run. The ranks' side is
``finetune_core.training.ddp``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.fsutil import read_json
from finetune_core.jobs.procs import descendants, start_time
from finetune_core.runs import RunPaths
from finetune_core.training.ddp import die_with_parent, stop_on_signals
from finetune_core.training.progress import (
    LiveState,
    Progress,
    progress_from_dict,
    read_progress_dict,
)
from finetune_core.training.trainer import TrainResult

SHUTDOWN_SECONDS = 60  # torchrun's grace for ranks to finish the batch and save after SIGTERM
MULTI_NODE_FROM_CLI = (
    "Runs over several machines start from the command line on every machine "
    "(torchrun with a rendezvous endpoint, see docs/distributed.md); the dashboard launches "
    "runs on this machine only. Set nodes to 1 here."
)


class DistributedRunError(RuntimeError):
    """A multi-process run failed; ``details`` holds the rank's traceback and torchrun's output."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def read_errors(run_dir: Path) -> list[dict[str, Any]]:
    """The ranks' recorded errors, first one first (later ones are usually consequences)."""
    rows = []
    for path in sorted(RunPaths(run_dir).errors.glob("rank-*.json")):
        try:
            row = read_json(path)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return sorted(rows, key=lambda r: r.get("time", 0.0))


_PROGRESS_FIELDS = set(Progress.__dataclass_fields__)
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
        data = read_progress_dict(path)
        if data is None:
            return
        self._version = version
        progress = progress_from_dict(data)
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


_BOOTSTRAP = "from finetune_core.jobs.launcher import torchrun_main; torchrun_main()"


def torchrun_main() -> None:
    """torchrun, ending with its parent (the manager thread) so it cannot be orphaned."""
    from torch.distributed.run import main  # torch's launcher: only in the bootstrap process

    die_with_parent(signal.SIGTERM)
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
    cmd += ["train", "--config", str(RunPaths(run_dir).config), "--out", str(run_dir)]
    if resume:
        cmd.append("--resume")
    if quiet:
        cmd.append("--quiet")
    return cmd


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
                started = start_time(pid)
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
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(start_time(p) == s for p, s in self._known.items()):
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
    """Start torchrun for the run in ``run_dir`` (its config must exist).

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
    paths = RunPaths(run_dir)
    paths.progress.unlink(missing_ok=True)
    for stale in paths.errors.glob("rank-*.json"):
        stale.unlink(missing_ok=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_SECONDS))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = paths.launch_log
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
    progress_path = RunPaths(run.run_dir).progress
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
    """The outcome of a finished launch, from rank 0's summary and the ranks' errors."""

    code = run.poll()
    paths = RunPaths(run.run_dir)
    summary = runs.read_summary(paths)
    fresh = (
        bool(summary)
        and paths.summary.stat().st_mtime >= run.started - 1
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
    runs.save_config(RunPaths(out), config)
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
