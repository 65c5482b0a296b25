"""Continue a run for N more epochs and warm-start from another run: the configs, the
refusals, the queued child's link to its parent, and the history kept across the chain."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import lineage
from finetune_core.jobs.lineage import LineageError
from finetune_core.jobs.manager import JobError, JobManager
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace, new_id
from finetune_core.training.trainer import Trainer


def tiny(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id, name="shapes", model="resnet18", weights="none",
        strategy="finetune", epochs=2, freeze_epochs=1, image_size=32, batch_size=8,
        lr=2e-3, early_stopping=False, channels_last=False, mixed_precision="off",
    )  # fmt: skip
    return RunConfig(**{**base, **changes})


def add_run(ws: Workspace, config: RunConfig, **fields: Any) -> str:
    run_id = new_id("r")
    ws.add_run(
        RunRecord(
            id=run_id,
            name=config.name,
            dataset_id=config.dataset,
            config=config.to_dict(),
            model=config.model,
            strategy=config.strategy,
            **fields,
        )
    )
    runs.save_config(RunPaths(ws.run_dir(run_id)), config)
    return run_id


def train(ws: Workspace, ds: Any, run_id: str) -> None:
    """Train a recorded run in this process and record its outcome, as the job's process does."""
    config = RunConfig.from_dict(ws.get_run(run_id).config)
    result = Trainer(config, ds, ws.run_dir(run_id), ws.cache_dir).fit()
    ws.update_run(
        run_id, status=result.status, best_epoch=result.best_epoch, epochs_run=result.epochs_run
    )


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any, str]:
    """A SUCCEEDED 2-epoch finetune run (one frozen epoch, one unfrozen)."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    ds = create_demo_dataset(ws, per_class=8, size=32)
    run_id = add_run(ws, tiny(ds.id), status=RunStatus.RUNNING)
    train(ws, ds, run_id)
    assert ws.get_run(run_id).status == RunStatus.SUCCEEDED
    return ws, ds, run_id


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("status", "advice"),
    [
        (RunStatus.FAILED, "A failed run with a saved epoch can be resumed instead."),
        (RunStatus.QUEUED, "Resume it, or wait until it has finished."),
        (RunStatus.RUNNING, "Resume it, or wait until it has finished."),
        (RunStatus.INTERRUPTED, "Resume it, or wait until it has finished."),
    ],
)
def test_only_succeeded_or_stopped_runs_continue(
    workspace: Workspace, status: str, advice: str
) -> None:
    run_id = add_run(workspace, tiny("ds-x"), status=status)
    with pytest.raises(LineageError) as refused:
        lineage.continue_config(workspace, run_id, 3)
    assert str(refused.value) == (
        f"Only succeeded or stopped runs can continue (this one is {status}). {advice}"
    )
    assert isinstance(refused.value, JobError)  # pages that catch JobError show it


def test_a_run_without_a_model_cannot_continue(workspace: Workspace) -> None:
    run_id = add_run(workspace, tiny("ds-x"), status=RunStatus.STOPPED)
    with pytest.raises(LineageError, match="saved no model to continue from"):
        lineage.continue_config(workspace, run_id, 3)
    with pytest.raises(LineageError, match="No run with id 'r-gone'"):
        lineage.continue_config(workspace, "r-gone", 3)


# ---------------------------------------------------------------------- continue
@pytest.mark.slow
def test_continue_config_trains_the_last_checkpoint_on_with_a_new_schedule(
    parent: tuple[Workspace, Any, str],
) -> None:
    ws, ds, parent_id = parent
    config = lineage.continue_config(ws, parent_id, 3)
    original = RunConfig.from_dict(ws.get_run(parent_id).config)
    assert config.init_from == f"{parent_id}:last"
    assert (config.epochs, config.freeze_epochs, config.name) == (3, 0, "shapes (continued)")
    assert config.replace(init_from="", epochs=2, freeze_epochs=1, name="shapes") == original
    again = lineage.continue_config(ws, parent_id, 1).replace(name="shapes (continued)")
    assert again.name == "shapes (continued)"  # never "(continued) (continued)"
    with pytest.raises(LineageError, match="epochs must be between 1 and 10000"):
        lineage.continue_config(ws, parent_id, 0)


@pytest.mark.slow
def test_continuing_queues_a_child_run_linked_to_its_parent(
    parent: tuple[Workspace, Any, str],
) -> None:
    ws, _, parent_id = parent
    manager = JobManager(ws, start=False)  # records the run; nothing trains here
    try:
        child_id = lineage.submit_continue(manager, ws, parent_id, 4, creator="alice")
    finally:
        manager.shutdown()
    child = ws.get_run(child_id)
    assert (child.status, child.parent_id, child.lineage, child.creator) == (
        RunStatus.QUEUED, parent_id, "continue", "alice",
    )  # fmt: skip
    assert child.config["init_from"] == f"{parent_id}:last" and child.config["epochs"] == 4
    assert lineage.describe(ws, child) == f"continues {parent_id} (its last checkpoint)"
    ws.delete_run(child_id)


@pytest.mark.slow
def test_a_continued_runs_history_follows_its_parents(parent: tuple[Workspace, Any, str]) -> None:
    ws, ds, parent_id = parent
    child_id = add_run(
        ws,
        lineage.continue_config(ws, parent_id, 2),
        status=RunStatus.RUNNING,
        parent_id=parent_id,
        lineage=lineage.CONTINUE,
    )
    train(ws, ds, child_id)
    history = lineage.lineage_history(ws, child_id)
    assert [(r["run_id"], r["run_epoch"], r["epoch"]) for r in history] == [
        (parent_id, 1, 1), (parent_id, 2, 2), (child_id, 1, 3), (child_id, 2, 4),
    ]  # fmt: skip
    parent_rows = runs.read_history(RunPaths(ws.run_dir(parent_id)))
    assert history[1]["train_loss"] == parent_rows[1]["train_loss"]
    assert [r["phase"] for r in history[2:]] == ["unfrozen", "unfrozen"]  # no frozen warm-up
    assert all(r["best_epoch"] >= 3 for r in history[2:])  # the child's best, numbered on
    assert lineage.describe(ws, ws.get_run(child_id)) == (
        f"continues {parent_id} (its last checkpoint, epoch 2)"
    )
    assert lineage.lineage_history(ws, parent_id) == [
        {**row, "run_id": parent_id, "run_epoch": row["epoch"]} for row in parent_rows
    ]
    ws.delete_run(child_id)


# ---------------------------------------------------------------------- warm start
@pytest.mark.slow
def test_warm_start_checks_the_source_fits_before_queueing(
    parent: tuple[Workspace, Any, str],
) -> None:
    ws, ds, parent_id = parent
    config = lineage.warm_start_config(ws, parent_id, tiny(ds.id, strategy="probe"))
    assert config.init_from == parent_id and config.strategy == "probe"
    with pytest.raises(LineageError) as arch:
        lineage.warm_start_config(ws, parent_id, tiny(ds.id, model="mobilenet_v3_small"))
    assert str(arch.value).startswith(
        f"Cannot start from run {parent_id}: it is a resnet18 model and this run builds "
        "mobilenet_v3_small. Choose a run with the same model"
    )
    two = create_demo_dataset(ws, per_class=4, size=32, classes=2, name="two")
    with pytest.raises(LineageError, match="with triangle that this dataset does not have"):
        lineage.warm_start_config(ws, parent_id, tiny(two.id))
    busy = add_run(ws, tiny(ds.id), status=RunStatus.RUNNING)
    assert [r.id for r in lineage.warm_start_sources(ws, "resnet18", ds.id)] == [parent_id]
    assert lineage.warm_start_sources(ws, "resnet18", two.id) == []  # other classes
    assert lineage.warm_start_sources(ws, "mobilenet_v3_small", ds.id) == []
    with pytest.raises(LineageError, match="still running: start from it once it has finished"):
        lineage.warm_start_config(ws, busy, tiny(ds.id))
    manager = JobManager(ws, start=False)
    try:
        warm_id = lineage.submit_warm_start(manager, ws, parent_id, tiny(ds.id), creator="bob")
    finally:
        manager.shutdown()
    warm = ws.get_run(warm_id)
    assert (warm.parent_id, warm.lineage) == (parent_id, "warm-start")
    assert lineage.describe(ws, warm) == f"warm-started from {parent_id} (its best checkpoint)"
    assert lineage.lineage_history(ws, warm_id) == []  # a warm start has its own history
    ws.update_run(busy, status=RunStatus.FAILED)
    for run_id in (warm_id, busy):
        ws.delete_run(run_id)
