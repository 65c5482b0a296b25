"""The body of a run's own process: train a claimed run, record the outcome, evaluate.

``python -m finetune_core runs exec RUN_ID`` (started by a scheduler, in its own
session) calls :func:`execute_run`; so does a scheduler thread in thread isolation.
While it works, a heartbeat thread renews the run's lease and turns a stop request in
the database into the trainer's stop flag, so any server, worker or CLI can stop it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from finetune_core import resources, runs
from finetune_core.config import RunConfig
from finetune_core.data import load_dataset
from finetune_core.jobs import launcher, queue
from finetune_core.jobs.records import StoreEpochs, record_result, write_run_info
from finetune_core.jobs.slots import read_slots
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, StoreError, Workspace, utc_now
from finetune_core.training.events import Callback
from finetune_core.training.progress import LiveState, Progress, ProgressFile
from finetune_core.training.trainer import Trainer, TrainResult

PostRunHook = Callable[[Workspace, str], None]


class Heartbeat:
    """Renews a run's lease every few seconds; sets ``stop`` when a stop is requested or
    the lease is lost (the run was deleted, or another process took it over)."""

    def __init__(
        self, workspace: Workspace, run_id: str, token: str, stop: threading.Event
    ) -> None:
        self.workspace, self.run_id, self.token, self.stop = workspace, run_id, token, stop
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(queue.HEARTBEAT_SECONDS):
            try:
                ours, stop = queue.heartbeat(self.workspace, self.run_id, self.token)
            except Exception:  # a busy disk or database: try again next beat
                continue
            if not ours:
                self.lost = True
            if stop and not self.stop.is_set():
                self.stop.set()
                with contextlib.suppress(Exception):
                    runs.append_log(RunPaths(self.workspace.run_dir(self.run_id)), "stop requested")


def hook_name(hook: PostRunHook) -> str:
    """``module:function`` for a post-run hook a run process can import."""
    name = f"{hook.__module__}:{hook.__qualname__}"
    if "<" in hook.__qualname__:
        raise ValueError(
            f"The post-run step {hook!r} is not a module-level function, so a run process "
            "cannot import it; define it at the top of a module."
        )
    return name


def hooks_from_names(names: Iterable[str]) -> list[PostRunHook]:
    """The post-run hooks named ``module:function``."""
    hooks = []
    for name in names:
        module, _, attr = name.partition(":")
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
        hooks.append(target)
    return hooks


def execute_run(
    workspace: Workspace,
    run_id: str,
    token: str,
    *,
    hooks: Sequence[PostRunHook] = (),
    extra_callbacks: Sequence[Callback] = (),
    stop: threading.Event | None = None,
    own_process: bool = False,
) -> int:
    """Train the run ``token`` holds, record its result, run the post-run steps; the exit
    code for the process (0 when the run ended as it should, stopped included).

    ``own_process``: this process is the run's alone, so the memory limit an admin set
    (FINETUNE_RUN_MEMORY_LIMIT) applies to it."""
    stop = stop or threading.Event()
    record = workspace.get_run(run_id)
    if record is None or record.lease_owner != token:
        return 3  # not ours (deleted, or the claim was taken over): nothing to do
    run_dir = workspace.run_dir(run_id)
    paths = RunPaths(run_dir)
    with Heartbeat(workspace, run_id, token, stop):
        queue.set_phase(workspace, run_id, token, "training")
        try:
            if own_process:
                resources.apply_memory_limit(resources.memory_limit_bytes())
            config = _within_share(workspace, record, paths)
            result = _train(workspace, run_id, config, run_dir, resume=bool(record.resume),
                            stop=stop, extra=extra_callbacks)  # fmt: skip
        except BaseException as exc:  # every failure ends the run as FAILED, with the reason
            runs.append_log(paths, f"failed: {describe(exc)}")
            queue.release(
                workspace,
                run_id,
                token,
                status=RunStatus.FAILED,
                error=describe(exc),
                traceback=getattr(exc, "details", "") or traceback.format_exc(),
                finished_at=utc_now(),
            )
            return 1
        record_result(workspace, run_id, result)
        queue.set_phase(workspace, run_id, token, "evaluating")
        _post_run(workspace, run_id, hooks)
        runs.append_log(paths, f"finished: {result.status}")
        queue.release(workspace, run_id, token, finished_at=utc_now())
    return 0


def _within_share(workspace: Workspace, record: RunRecord, paths: RunPaths) -> RunConfig:
    """The run's config with its threads cut to the cores it may use: a CPU run shares
    the cores with the other CPU slots; nobody gets more than this process's cores."""
    config = RunConfig.from_dict(record.config)
    if record.device.startswith("cuda"):
        allowed = resources.available_cores()
    else:
        allowed = resources.cores_for_run(read_slots(workspace).cpu)
    threads, note = resources.run_threads(config.num_threads, allowed)
    if note:
        runs.append_log(paths, note)
    return config.replace(num_threads=threads)


def _train(
    workspace: Workspace,
    run_id: str,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    stop: threading.Event,
    extra: Sequence[Callback],
) -> TrainResult:
    dataset = load_dataset(workspace, config.dataset)
    write_run_info(run_dir, config, dataset)
    if launcher.is_multi_process(config):
        return _train_distributed(workspace, run_id, config, run_dir, resume=resume, stop=stop)
    trainer = Trainer(
        config,
        dataset,
        run_dir,
        workspace.cache_dir,
        callbacks=[ProgressFile(run_dir), StoreEpochs(workspace, run_id), *extra],
        stop_event=stop,
        resume=resume,
    )
    return trainer.fit()


def _train_distributed(
    workspace: Workspace,
    run_id: str,
    config: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    stop: threading.Event,
) -> TrainResult:
    """Several processes: torchrun below this one; rank 0 writes the progress file."""

    def store_epochs(progress: Progress) -> None:
        with contextlib.suppress(StoreError):
            workspace.update_run(
                run_id,
                epochs_run=len(progress.history),
                best_epoch=progress.best_epoch,
                best_val_accuracy=progress.best_metric,
            )

    launched = launcher.launch(run_dir, config, workspace=workspace.root, resume=resume)
    runs.append_log(
        RunPaths(run_dir), f"launched torchrun: {launched.nproc} processes (pid {launched.pid})"
    )
    relay = launcher.ProgressRelay(LiveState(), on_epoch=store_epochs)
    return launcher.supervise(launched, stop, relay)


def _post_run(workspace: Workspace, run_id: str, hooks: Sequence[PostRunHook]) -> None:
    """Evaluation and report: a failure is recorded on the run, the trained model stays."""
    paths = RunPaths(workspace.run_dir(run_id))
    for hook in hooks:
        name = getattr(hook, "__name__", "post-run step")
        try:
            runs.append_log(paths, f"running {name}")
            hook(workspace, run_id)
        except Exception as exc:  # evaluation problems must not lose the trained model
            with contextlib.suppress(Exception):
                runs.append_log(paths, f"post-run step failed: {describe(exc)}")
            with contextlib.suppress(StoreError):
                workspace.update_run(
                    run_id, error=f"Trained, but a post-run step failed: {describe(exc)}"
                )


def describe(exc: BaseException) -> str:
    """The reason a user reads on the run: the error's text, with advice where we have it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"The disk holding the workspace is full ({exc.strerror or 'No space left on device'})."
            " Free some space (delete old runs or datasets, or move FINETUNE_WORKSPACE to a "
            "bigger disk), then resume the run: it continues from its last saved checkpoint."
        )
    text = str(exc).strip()
    return text if text else type(exc).__name__
