"""The job manager: what a dashboard server (or the CLI) asks of the workspace's queue.

Runs belong to the workspace, not to this process: submitting records a QUEUED run in
the database, a :class:`Scheduler` (one per manager) claims it with a lease and starts
its own process, and every view (progress, queue, status) is read back from the
database and the run folder. So a second server, ``runs submit`` or a ``worker`` on
the same workspace share one queue, and restarting a server leaves runs training.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

from finetune_core import runs
from finetune_core.auth import audit
from finetune_core.config import ConfigError, RunConfig
from finetune_core.data import DatasetNotFound, load_dataset
from finetune_core.jobs import queue
from finetune_core.jobs.execute import PostRunHook
from finetune_core.jobs.launcher import MULTI_NODE_FROM_CLI
from finetune_core.jobs.quota import QuotaError, check_quota
from finetune_core.jobs.records import progress_from_files
from finetune_core.jobs.scheduler import Isolation, Scheduler
from finetune_core.jobs.slots import Slots
from finetune_core.models.checkpoint import parse_init_from
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace, new_id
from finetune_core.training.events import Callback
from finetune_core.training.progress import Progress, progress_from_dict, read_progress_dict

ISOLATION_ENV = "FINETUNE_RUN_ISOLATION"  # "process" (default) or "thread" (debugging)


class JobError(Exception):
    """A job request cannot be done; the message says why."""


class JobManager:
    """Submits, stops, resumes and reports on the workspace's runs; schedules on this host."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        post_run: list[PostRunHook] | None = None,
        extra_callbacks: Callable[[str], list[Callback]] | None = None,
        start: bool = True,
        isolation: Isolation | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.workspace = workspace
        if isolation is None:  # in-process callbacks can only follow a run in a thread
            isolation = "thread" if extra_callbacks else _isolation_from_env()
        try:
            self.scheduler = Scheduler(
                workspace,
                hooks=list(post_run or []),
                isolation=isolation,
                extra_callbacks=extra_callbacks,
                slots=slots,
            )
        except ValueError as exc:
            raise JobError(str(exc)) from exc
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self, timeout: float = 30.0, *, stop_runs: bool = False) -> None:
        """Stop scheduling here. Run processes keep training unless ``stop_runs``."""
        self.scheduler.close(stop_runs=stop_runs, timeout=timeout)

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        config: RunConfig,
        *,
        creator: str = "",
        parent_id: str = "",
        lineage: str = "",
        auto_resume: bool = True,
    ) -> str:
        """Validate ``config``, record a QUEUED run; returns the run id."""
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
        if config.init_from and not parent_id:  # "start from run X": its lineage, recorded
            source, _ = parse_init_from(config.init_from)
            if self.workspace.get_run(source) is not None:
                parent_id, lineage = source, "warm-start"
        try:
            check_quota(self.workspace, creator)
        except QuotaError as exc:
            raise JobError(str(exc)) from exc
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
                parent_id=parent_id,
                lineage=lineage,
                auto_resume=int(auto_resume),
                queued_at=time.time(),
            )
        )
        runs.save_config(RunPaths(self.workspace.run_dir(run_id)), config)
        detail = f"{lineage} of {parent_id}" if parent_id else f"{config.model} {config.strategy}"
        audit.record(self.workspace, creator or "anonymous", "submit", "run", run_id, detail)
        self.scheduler.wake()
        return run_id

    def can_resume(self, run: RunRecord) -> bool:
        """STOPPED and INTERRUPTED runs, and FAILED ones with a saved epoch (a full disk,
        an out-of-memory at the smallest batch) can continue from their last checkpoint."""
        if run.lease_owner:
            return False
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
        if not self.workspace.transition_run(run_id, (run.status,), status=RunStatus.QUEUED):
            raise JobError("The run changed state meanwhile; refresh and try again.")
        queue.enqueue(self.workspace, run_id, resume=True)
        self.scheduler.wake()

    def rerun(self, run_id: str, *, creator: str = "") -> str:
        """Queue a copy of ``run_id``'s config, with the run's own copy of its weights file."""
        run = self._get(run_id)
        config = RunConfig.from_dict(run.config)
        own = RunPaths(self.workspace.run_dir(run_id)).own_weights(config.weights)
        if own is not None and own.is_file():
            config = config.replace(weights=str(own))
        return self.submit(
            config.replace(name=f"{run.name} (re-run)"),
            creator=creator,
            parent_id=run_id,
            lineage="re-run",
        )

    def stop(self, run_id: str) -> bool:
        """Queued: removed from the queue (STOPPED). Running: stops after the current batch,
        whichever process trains it."""
        stopped = queue.request_stop(self.workspace, run_id)
        self.scheduler.wake()
        return stopped

    # ------------------------------------------------------------------ views
    def snapshot(self, run_id: str) -> Progress | None:
        """Progress of a run: live from its progress file while its process holds it,
        else rebuilt from its files."""
        run = self.workspace.get_run(run_id)
        if run is None:
            return None
        epochs = int((run.config or {}).get("epochs", 0) or 0)
        if run.status == RunStatus.QUEUED:
            return Progress(status=RunStatus.QUEUED, epochs=epochs, log=self._log(run))
        if not run.lease_owner:
            return progress_from_files(self.workspace, run)
        data = read_progress_dict(RunPaths(self.workspace.run_dir(run_id)).progress)
        live = progress_from_dict(data) if data else Progress(status=run.status, epochs=epochs)
        phase = "evaluating" if run.phase == "evaluating" else live.phase or run.phase
        return replace(
            live, status=run.status, phase=phase, epochs=live.epochs or epochs, log=self._log(run)
        )

    def queue_positions(self) -> dict[str, int]:
        """Queued run ids and their 1-based position in the workspace's queue."""
        return queue.positions(self.workspace)

    def queue_by_device(self) -> list[tuple[str, int, RunRecord]]:
        """Queued runs as (device they wait for, place in that device's line, record)."""
        lines: dict[str, int] = {}
        out = []
        for record in queue.queued(self.workspace):
            device = queue.waits_for(record, self.scheduler.gpus)
            lines[device] = lines.get(device, 0) + 1
            out.append((device, lines[device], record))
        return out

    def slots(self) -> list[queue.Slot]:
        """This host's slots (device, runs at once)."""
        return self.scheduler.slots()

    def active_runs(self) -> list[RunRecord]:
        """Runs whose process holds them (training or evaluating), oldest first."""
        return queue.held(self.workspace)

    def running(self) -> str | None:
        """The first run in training (pages that show one), None when none trains."""
        active = [r for r in self.active_runs() if r.status == RunStatus.RUNNING]
        return active[0].id if active else None

    def is_active(self, run_id: str) -> bool:
        run = self.workspace.get_run(run_id)
        return run is not None and (run.status in RunStatus.ACTIVE or bool(run.lease_owner))

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until ``run_id`` finishes; returns its final status (for CLI and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_active(run_id):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still active after {timeout}s")
            self.scheduler.wake()
            time.sleep(0.1)
        return self._get(run_id).status

    def _log(self, run: RunRecord) -> tuple[str, ...]:
        """The run's last log lines (run.log, their one owner)."""
        return tuple(runs.read_log(RunPaths(self.workspace.run_dir(run.id)), last=200))

    def _get(self, run_id: str) -> RunRecord:
        run = self.workspace.get_run(run_id)
        if run is None:
            raise JobError(f"No run with id {run_id!r}.")
        return run


def _isolation_from_env() -> Isolation:
    value = os.environ.get(ISOLATION_ENV, "process").strip().lower()
    return "thread" if value == "thread" else "process"
