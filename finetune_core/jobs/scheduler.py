"""The scheduler: claims queued runs for free slots, starts their processes, reaps them.

One runs inside every dashboard server (a thread) and in ``python -m finetune_core
worker``. Each tick it (1) reaps the run processes it started: one that ended without
recording a result (SIGKILL, a segfault, the out-of-memory killer) makes the run FAILED
with the signal or exit code and its last log lines; (2) sweeps expired leases: a run
whose process is gone becomes INTERRUPTED (and queued again if it resumes by itself),
a live process is left alone whoever started it; (3) claims runs for free slots.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import torch

from finetune_core import runs
from finetune_core.jobs import procs, queue
from finetune_core.jobs.execute import PostRunHook, execute_run, hook_name
from finetune_core.jobs.slots import Slots, read_slots
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace, utc_now
from finetune_core.training.events import Callback

Isolation = Literal["process", "thread"]
LEASE_ENV = "FINETUNE_LEASE"  # the run process's lease token
HOOKS_ENV = "FINETUNE_RUN_HOOKS"  # its post-run steps, "module:function,..."
OTHER_HOST_GRACE = 3.0  # leases of other machines: how many lease periods before "gone"
TAIL_LINES = 15


@dataclass
class _Child:
    run_id: str
    token: str
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    log: IO[bytes] | None = None

    def exit_code(self) -> int | None:
        """None while it runs; the process's exit code (or 0 for an ended thread)."""
        if self.proc is not None:
            return self.proc.poll()
        return None if self.thread is not None and self.thread.is_alive() else 0


def host_slots(slots: Slots, gpus: int) -> list[queue.Slot]:
    """This host's slots: one per GPU (``slots.gpu`` runs each) and the CPU."""
    out = [queue.Slot(f"cuda:{i}", slots.gpu) for i in range(gpus)]
    out.append(queue.Slot("cpu", slots.cpu))
    return out


class Scheduler:
    """Runs the workspace's queue on this host (see the module docstring)."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        hooks: Sequence[PostRunHook] = (),
        isolation: Isolation = "process",
        extra_callbacks: Callable[[str], list[Callback]] | None = None,
        slots: Slots | None = None,
        interval: float = 0.5,
    ) -> None:
        self.workspace = workspace
        self.hooks = list(hooks)
        self.hook_names = [hook_name(h) for h in hooks] if isolation == "process" else []
        self.isolation = isolation
        self.extra_callbacks = extra_callbacks
        self.fixed_slots = slots
        self.interval = interval
        self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        self.children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed.clear()
            self._thread = threading.Thread(
                target=self._loop, name="finetune-scheduler", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def is_alive(self) -> bool:
        """Whether the scheduling loop runs (it survives any one failing tick)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self, *, stop_runs: bool = False, timeout: float = 30.0) -> None:
        """Stop scheduling. Run processes keep training (they belong to the workspace)
        unless ``stop_runs``; runs in threads of this process always stop."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            children = list(self.children.values())
        for child in children:
            if child.thread is not None or stop_runs:
                queue.request_stop(self.workspace, child.run_id)
                child.stop.set()
        deadline = time.monotonic() + timeout
        for child in children:
            if child.thread is not None:
                child.thread.join(max(0.0, deadline - time.monotonic()))
            elif stop_runs and child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
        self.tick(claim=False)

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self.tick()
            except Exception as exc:  # a store hiccup must never end the scheduler
                with contextlib.suppress(Exception):
                    sys.stderr.write(f"finetune scheduler: {exc!r}\n")
            self._wake.wait(self.interval)
            self._wake.clear()

    # ------------------------------------------------------------------ one tick
    def tick(self, *, claim: bool = True) -> None:
        self._reap()
        self._sweep()
        if claim and not self._closed.is_set():
            while self._claim_one():
                pass

    def slots(self) -> list[queue.Slot]:
        return host_slots(self.fixed_slots or read_slots(self.workspace), self.gpus)

    def _claim_one(self) -> bool:
        token = queue.new_token()
        claimed = queue.claim(self.workspace, token, self.slots(), gpus=self.gpus)
        if claimed is None:
            return False
        record, slot = claimed
        try:
            child = self._start(record, token, slot)
        except Exception as exc:  # could not start the process: the run fails, we go on
            queue.release(self.workspace, record.id, token, status=RunStatus.FAILED,
                          error=f"The run's process could not start: {exc}",
                          finished_at=utc_now())  # fmt: skip
            return True
        with self._lock:
            self.children[record.id] = child
        return True

    def _start(self, record: RunRecord, token: str, slot: queue.Slot) -> _Child:
        paths = RunPaths(self.workspace.run_dir(record.id))
        paths.root.mkdir(parents=True, exist_ok=True)
        runs.append_log(paths, f"claimed for {slot.device} on {queue.HOST}")
        child = _Child(record.id, token)
        if self.isolation == "thread":
            extra = self.extra_callbacks(record.id) if self.extra_callbacks else []
            child.thread = threading.Thread(
                target=execute_run,
                args=(self.workspace, record.id, token),
                kwargs={"hooks": self.hooks, "extra_callbacks": extra, "stop": child.stop},
                name=f"run-{record.id}",
                daemon=True,
            )
            child.thread.start()
            return child
        child.log = paths.launch_log.open("ab")
        try:
            child.proc = subprocess.Popen(
                run_command(self.workspace.root, record.id),
                stdin=subprocess.DEVNULL,
                stdout=child.log,
                stderr=subprocess.STDOUT,
                env=self._child_env(token, slot, record),
                start_new_session=True,  # a server restart or Ctrl-C leaves the run training
            )
        except BaseException:
            child.log.close()
            raise
        started = procs.start_time(child.proc.pid) or ""
        queue.attach(self.workspace, record.id, token, child.proc.pid, started)
        runs.append_log(paths, f"run process started (pid {child.proc.pid})")
        return child

    def _child_env(self, token: str, slot: queue.Slot, record: RunRecord) -> dict[str, str]:
        env = {**os.environ, LEASE_ENV: token, HOOKS_ENV: ",".join(self.hook_names)}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")) if p
        )
        env.setdefault("PYTHONUNBUFFERED", "1")
        device = str((record.config or {}).get("device", "auto"))
        if slot.device.startswith("cuda:") and not device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = slot.device.split(":", 1)[1]  # "cuda" = this slot
        return env

    def _reap(self) -> None:
        with self._lock:
            ended = [(c, code) for c in self.children.values()
                     if (code := c.exit_code()) is not None]  # fmt: skip
            for child, _ in ended:
                self.children.pop(child.run_id, None)
        for child, code in ended:
            if child.log is not None:
                child.log.close()
            self._settle(child, code)

    def _settle(self, child: _Child, code: int) -> None:
        """A run process ended: if it did not release its lease, it died without a result."""
        record = self.workspace.get_run(child.run_id)
        if record is None or record.lease_owner != child.token:
            return
        how = procs.describe_exit(code) if child.proc is not None else "ended without a result"
        tail = last_lines(self.workspace, record.id)
        if record.status == RunStatus.RUNNING:
            changes = {
                "status": RunStatus.FAILED,
                "error": f"The run's process {how} before the run ended."
                + (f" Last lines: {tail[-1]}" if tail else ""),
            }
        else:  # trained and recorded; it died while evaluating or reporting
            changes = {"error": f"Trained, but the run's process {how} during evaluation."}
        queue.release(self.workspace, record.id, child.token, traceback="\n".join(tail),
                      finished_at=utc_now(), **changes)  # fmt: skip
        with contextlib.suppress(Exception):
            runs.append_log(RunPaths(self.workspace.run_dir(record.id)), changes["error"])

    def _sweep(self) -> None:
        """Expired leases of processes that are gone: INTERRUPTED, or queued again."""
        queue.interrupt_unleased(self.workspace)
        with self._lock:
            mine = set(self.children)
        for record in queue.expired(self.workspace):
            if record.id in mine:
                continue
            if record.host == queue.HOST:
                if procs.alive(record.pid, record.pid_started):
                    continue  # alive but slow to renew (a busy disk): not ours to judge
            elif (record.lease_until or 0) > time.time() - OTHER_HOST_GRACE * queue.LEASE_SECONDS:
                continue
            self._interrupt(record)

    def _interrupt(self, record: RunRecord) -> None:
        paths = RunPaths(self.workspace.run_dir(record.id))
        if record.status != RunStatus.RUNNING:  # finished training; evaluation was cut off
            queue.release(self.workspace, record.id, record.lease_owner,
                          error="Trained, but its process ended during evaluation.")  # fmt: skip
            return
        resumes = bool(record.auto_resume) and paths.checkpoint("last").exists()
        message = (
            "The run's process ended without a result (killed, or its machine restarted)"
            + (
                "; it resumes by itself from its last checkpoint."
                if resumes
                else "; resume it to continue from its last checkpoint."
            )  # fmt: skip
        )
        if not queue.release(self.workspace, record.id, record.lease_owner,
                             status=RunStatus.INTERRUPTED, error=message,
                             finished_at=utc_now()):  # fmt: skip
            return  # someone else settled it first
        with contextlib.suppress(Exception):
            runs.append_log(paths, message)
        if resumes:
            with contextlib.suppress(StoreError):
                queue.enqueue(self.workspace, record.id, resume=True)

    # ------------------------------------------------------------------ views
    def running_here(self) -> list[str]:
        with self._lock:
            return list(self.children)


def run_command(workspace_root: Path, run_id: str) -> list[str]:
    """The run process's command line (the CLI's hidden ``runs exec``)."""
    return [sys.executable, "-m", "finetune_core", "--workspace", str(workspace_root),
            "runs", "exec", run_id]  # fmt: skip


def last_lines(workspace: Workspace, run_id: str, count: int = TAIL_LINES) -> list[str]:
    """The run's last log lines, then its process's own output (a segfault's message)."""
    paths = RunPaths(workspace.run_dir(run_id))
    lines = runs.read_log(paths, last=count)
    try:
        output = paths.launch_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        output = []
    return lines + [line for line in output[-count:] if line.strip()]
