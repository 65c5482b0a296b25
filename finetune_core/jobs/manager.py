"""The job manager: a FIFO queue of runs and one worker thread per device.

One manager per server process (the app holds it in ``st.cache_resource``), so jobs
belong to the server, not to a browser tab. Workers never touch Streamlit: they
write into a lock-guarded LiveState per run, and pages read frozen snapshots.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import shlex
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_core import runs
from finetune_core.config import ConfigError, RunConfig
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.jobs import launcher
from finetune_core.jobs.launcher import MULTI_NODE_FROM_CLI
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace, new_id, utc_now
from finetune_core.training.events import Callback
from finetune_core.training.progress import LiveState, Progress, ProgressReporter
from finetune_core.training.trainer import Trainer

PostRunHook = Callable[[Workspace, str], None]


class JobError(Exception):
    """A job request cannot be done; the message says why."""


@dataclass
class _Job:
    run_id: str
    resume: bool
    stop: threading.Event
    state: LiveState
    cancelled: bool = False


class JobManager:
    """Queues, runs, stops and reports on training runs in background threads."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        post_run: list[PostRunHook] | None = None,
        extra_callbacks: Callable[[str], list[Callback]] | None = None,
        start: bool = True,
    ) -> None:
        self.workspace = workspace
        self.post_run = list(post_run or [])
        self.extra_callbacks = extra_callbacks
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._order: list[str] = []  # queued run ids, FIFO
        self._running: str | None = None
        self._worker: threading.Thread | None = None
        self._closed = False
        self.interrupted = workspace.mark_running_interrupted()
        # Queued rows from a previous process are not in our queue: park them as interrupted.
        for run in workspace.list_runs(status=RunStatus.QUEUED):
            workspace.update_run(
                run.id,
                status=RunStatus.INTERRUPTED,
                error="The server restarted before this run started; resume it to queue it again.",
            )
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="finetune-worker", daemon=True)
            self._worker.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the running job (keeping its best checkpoint) and end the worker."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.stop.set()
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout)

    # ------------------------------------------------------------------ requests
    def submit(self, config: RunConfig, *, creator: str = "") -> str:
        """Validate ``config``, record a QUEUED run and queue it; returns the run id."""

        try:
            config.validate()
        except ConfigError as exc:
            raise JobError(str(exc)) from exc
        if config.nodes != 1:
            raise JobError(MULTI_NODE_FROM_CLI)
        try:
            dataset = load_dataset(self.workspace, config.dataset)
        except DatasetNotFound as exc:
            raise JobError(str(exc)) from exc
        if dataset.health.blocks_training:
            first = dataset.health.errors[0].message if dataset.health.errors else ""
            raise JobError(
                f"The dataset {dataset.record.name!r} has errors that block training: {first}"
            )
        config = config.replace(dataset=dataset.id)
        run_id = new_id("r")
        self.workspace.add_run(
            RunRecord(
                id=run_id,
                name=config.name or f"{config.model} {config.strategy}",
                dataset_id=dataset.id,
                creator=creator,
                model=config.model,
                strategy=config.strategy,
                config=config.to_dict(),
                notes=config.notes,
            )
        )
        runs.save_config(RunPaths(self.workspace.run_dir(run_id)), config)
        self._enqueue(run_id, resume=False)
        return run_id

    def can_resume(self, run: RunRecord) -> bool:
        """STOPPED and INTERRUPTED runs, and FAILED ones with a saved epoch (a full disk,
        an out-of-memory at the smallest batch) can continue from their last checkpoint."""
        if run.status in RunStatus.RESUMABLE:
            return True
        last = RunPaths(self.workspace.run_dir(run.id)).checkpoint("last")
        return run.status == RunStatus.FAILED and last.exists()

    def resume(self, run_id: str) -> None:
        """Queue a run that :meth:`can_resume` to continue from its last checkpoint."""
        run = self._get(run_id)
        if not self.can_resume(run):
            raise JobError(
                "Only stopped or interrupted runs, or failed runs with a saved epoch, can "
                f"resume (this one is {run.status}"
                + (" with no saved epoch)." if run.status == RunStatus.FAILED else ").")
            )
        if not self.workspace.transition_run(
            run_id, (run.status,), status=RunStatus.QUEUED, error="", finished_at=None
        ):
            raise JobError("The run changed state meanwhile; refresh and try again.")
        self._enqueue(run_id, resume=True)

    def rerun(self, run_id: str, *, creator: str = "") -> str:
        """Queue a copy of ``run_id``'s config, with the run's own copy of its weights file."""
        run = self._get(run_id)
        config = RunConfig.from_dict(run.config)
        own = RunPaths(self.workspace.run_dir(run_id)).own_weights(config.weights)
        if own is not None and own.is_file():
            config = config.replace(weights=str(own))
        return self.submit(config.replace(name=f"{run.name} (re-run)"), creator=creator)

    def stop(self, run_id: str) -> bool:
        """Queued: removed from the queue (STOPPED). Running: stops after the current batch."""
        with self._lock:
            job = self._jobs.get(run_id)
            if job is None:
                return False
            if self._running != run_id:
                job.cancelled = True
                if run_id in self._order:
                    self._order.remove(run_id)
                self.workspace.transition_run(
                    run_id,
                    (RunStatus.QUEUED,),
                    status=RunStatus.STOPPED,
                    error="Removed from the queue before it started.",
                    finished_at=utc_now(),
                )
                job.state.update(status=RunStatus.STOPPED)
                return True
            job.stop.set()
            job.state.log("stop requested")
            return True

    # ------------------------------------------------------------------ views
    def snapshot(self, run_id: str) -> Progress | None:
        """Live progress of a queued/running run, else progress rebuilt from its files."""
        with self._lock:
            job = self._jobs.get(run_id)
        if job is not None:
            snap = job.state.snapshot()
            return snap
        run = self.workspace.get_run(run_id)
        if run is None:
            return None
        return progress_from_files(self.workspace, run)

    def queue_positions(self) -> dict[str, int]:
        """Queued run ids and their 1-based position (the running run is not listed)."""
        with self._lock:
            return {rid: i + 1 for i, rid in enumerate(self._order)}

    def running(self) -> str | None:
        with self._lock:
            return self._running

    def is_active(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._jobs

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until ``run_id`` finishes; returns its final status (for CLI and tests)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                active = run_id in self._jobs
            if not active:
                return self._get(run_id).status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still active after {timeout}s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ internals
    def _get(self, run_id: str) -> RunRecord:
        run = self.workspace.get_run(run_id)
        if run is None:
            raise JobError(f"No run with id {run_id!r}.")
        return run

    def _enqueue(self, run_id: str, *, resume: bool) -> None:
        with self._lock:
            if self._closed:
                raise JobError("The job manager is shutting down.")
            state = LiveState()
            state.update(status=RunStatus.QUEUED)
            self._jobs[run_id] = _Job(run_id, resume, threading.Event(), state)
            self._order.append(run_id)
        self._queue.put(run_id)

    def _work(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None:
                return
            with self._lock:
                job = self._jobs.get(run_id)
                if job is None or job.cancelled:
                    self._jobs.pop(run_id, None)
                    continue
                if run_id in self._order:
                    self._order.remove(run_id)
                self._running = run_id
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running = None
                    self._jobs.pop(run_id, None)

    def _execute(self, job: _Job) -> None:

        ws, run_id = self.workspace, job.run_id
        if not ws.transition_run(
            run_id, (RunStatus.QUEUED,), status=RunStatus.RUNNING, started_at=utc_now(), error=""
        ):
            return
        job.state.update(status=RunStatus.RUNNING)
        try:
            run = self._get(run_id)
            config = RunConfig.from_dict(run.config)
            dataset = load_dataset(ws, config.dataset)
            run_dir = ws.run_dir(run_id)
            if launcher.is_multi_process(config):
                write_run_info(run_dir, config, dataset)
                result = self._execute_distributed(job, config, run_dir)
            else:
                result = self._execute_in_thread(job, config, dataset, run_dir)
        except BaseException as exc:  # every failure ends the run as FAILED, with the reason
            ws.update_run(
                run_id,
                status=RunStatus.FAILED,
                error=_describe(exc),
                # a failed rank's own traceback beats the manager's
                traceback=getattr(exc, "details", "") or traceback.format_exc(),
                finished_at=utc_now(),
            )
            job.state.update(status=RunStatus.FAILED)
            job.state.log(f"failed: {_describe(exc)}")
            if not isinstance(exc, Exception):
                raise
            return
        record_result(ws, run_id, result)
        job.state.update(status=result.status)
        for hook in self.post_run:
            try:
                job.state.log(f"running {getattr(hook, '__name__', 'post-run step')}")
                hook(ws, run_id)
            except Exception as exc:  # evaluation problems must not lose the trained model
                job.state.log(f"post-run step failed: {_describe(exc)}")
                ws.update_run(
                    run_id, error=f"Trained, but a post-run step failed: {_describe(exc)}"
                )
        ws.update_run(run_id, finished_at=utc_now())
        job.state.log(f"finished: {result.status}")

    def _execute_in_thread(self, job: _Job, config: RunConfig, dataset: Any, run_dir: Path) -> Any:
        """The single-process path: the Trainer runs in this worker thread."""

        ws, run_id = self.workspace, job.run_id
        callbacks: list[Callback] = [
            ProgressReporter(job.state),
            StoreEpochs(ws, run_id),
        ]
        if self.extra_callbacks:
            callbacks.extend(self.extra_callbacks(run_id))
        write_run_info(run_dir, config, dataset)
        trainer = Trainer(
            config,
            dataset,
            run_dir,
            ws.cache_dir,
            callbacks=callbacks,
            stop_event=job.stop,
            resume=job.resume,
        )
        return trainer.fit()

    def _execute_distributed(self, job: _Job, config: RunConfig, run_dir: Path) -> Any:
        """Several processes: torchrun in a subprocess; live progress from its progress.json.

        In-process callbacks (``extra_callbacks``) cannot follow a run in other processes.
        """

        def store_epochs(progress: Progress) -> None:
            with contextlib.suppress(StoreError):
                self.workspace.update_run(
                    job.run_id,
                    epochs_run=len(progress.history),
                    best_epoch=progress.best_epoch,
                    best_val_accuracy=progress.best_metric,
                )

        launched = launcher.launch(
            run_dir, config, workspace=self.workspace.root, resume=job.resume
        )
        job.state.log(f"launched torchrun: {launched.nproc} processes (pid {launched.pid})")
        relay = launcher.ProgressRelay(job.state, on_epoch=store_epochs)
        return launcher.supervise(launched, job.stop, relay)


def record_result(workspace: Workspace, run_id: str, result: Any) -> None:
    """A finished training's TrainResult in the runs table (the manager's and the CLI's runs)."""
    workspace.update_run(
        run_id,
        status=result.status,
        best_val_accuracy=result.best_val_accuracy,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        train_seconds=result.train_seconds,
        error=result.stop_reason if result.status == RunStatus.STOPPED else "",
    )


class StoreEpochs(Callback):
    """Keeps the runs table current after every epoch (the runs page reads it)."""

    def __init__(self, workspace: Workspace, run_id: str) -> None:
        self.workspace, self.run_id = workspace, run_id

    def after_epoch(self, trainer: Any) -> None:
        with contextlib.suppress(StoreError):  # the run was deleted meanwhile
            self.workspace.update_run(
                self.run_id,
                epochs_run=len(trainer.history),
                best_epoch=trainer.best_epoch,
                best_val_accuracy=trainer.best_val_accuracy,
            )


def _describe(exc: BaseException) -> str:
    """The reason a user reads on the run: the error's text, with advice where we have it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The disk holding the workspace is full ({exc.strerror or 'No space left on device'})."
            " Free some space (delete old runs or datasets, or move FINETUNE_WORKSPACE to a "
            "bigger disk), then resume the run: it continues from its last saved checkpoint."
        )
    text = str(exc).strip()
    return text if text else type(exc).__name__


def write_run_info(
    run_dir: Path,
    config: RunConfig,
    dataset: Any,
    workspace: Workspace | None = None,
    *,
    run_id: str | None = None,
) -> None:
    """The run's info file: dataset fingerprint and the equivalent CLI command (the
    trainer adds the environment it runs in, see training.setup.environment).

    ``workspace`` is recorded for run folders outside the workspace (CLI runs), so
    evaluation can find the dataset again; ``run_id`` is the id of a CLI run in the
    workspace's table (default: the one already recorded, else the folder's name, as for
    the dashboard's runs).
    """
    paths = RunPaths(run_dir)
    before = runs.read_info(paths)  # a resumed run keeps its id and workspace
    runs.write_info(
        paths,
        {
            "run_id": run_id or before.get("run_id") or Path(run_dir).name,
            "workspace": str(workspace.root) if workspace is not None else before.get("workspace"),
            "dataset_id": dataset.id,
            "dataset_name": dataset.record.name,
            "dataset_fingerprint": dataset.fingerprint,
            "class_names": dataset.class_names,
            "cli": cli_command(config, run_dir, workspace),
        },
    )


def cli_command(
    config: RunConfig, run_dir: Path | None = None, workspace: Workspace | None = None
) -> str:
    """The equivalent command line for a config (shown on the setup page and stored).

    With ``run_dir`` (the command recorded in run.json) a weights file is the run's own
    copy, which stays when the upload is gone; ``workspace`` names where the dataset is.
    """
    defaults = RunConfig()
    own = RunPaths(run_dir).own_weights(config.weights) if run_dir is not None else None
    weights = str(own.resolve()) if own is not None else config.weights
    parts = [
        "python -m finetune_core"
        + (f" --workspace {shlex.quote(str(workspace.root))}" if workspace else "")
        + " train",
        f"--data {shlex.quote(config.dataset or 'DATASET')}",
        f"--model {config.model}",
        f"--weights {shlex.quote(weights)}",
        f"--strategy {config.strategy}",
        f"--epochs {config.epochs}",
        f"--image-size {config.image_size}",
        f"--batch-size {config.batch_size}",
        f"--lr {config.lr:g}",
        f"--seed {config.seed}",
    ]
    covered = {
        "dataset",
        "model",
        "weights",
        "strategy",
        "epochs",
        "image_size",
        "batch_size",
        "lr",
        "seed",
    }
    extra = {
        k: v for k, v in config.to_dict().items() if k not in covered and v != getattr(defaults, k)
    }
    for key, value in sorted(extra.items()):
        parts.append(f"--set {key}={shlex.quote(str(value))}")
    parts.append("--out runs/RUN_NAME")
    return " ".join(parts)


def progress_from_files(workspace: Workspace, run: RunRecord) -> Progress:
    """Progress of a finished (or dead) run, rebuilt from its history and the runs table."""
    history = read_history(workspace, run.id)
    summary = runs.read_summary(RunPaths(workspace.run_dir(run.id)))
    config = run.config or {}
    return Progress(
        status=run.status,
        phase=history[-1].get("phase", "") if history else "",
        epoch=len(history),
        epochs=int(config.get("epochs", len(history)) or 0),
        step=0,
        steps=0,
        elapsed_seconds=float(run.train_seconds or summary.get("train_seconds") or 0.0),
        train_loss=history[-1]["train_loss"] if history else None,
        lr=history[-1].get("lr") if history else None,
        best_epoch=run.best_epoch,
        best_metric=run.best_val_accuracy,
        batch_size=summary.get("batch_size"),
        history=tuple(history),
        log=tuple(line for line in (run.error,) if line),
    )


def read_history(workspace: Workspace, run_id: str) -> list[dict[str, Any]]:
    """A workspace run's epoch rows."""
    return runs.read_history(RunPaths(workspace.run_dir(run_id)))
