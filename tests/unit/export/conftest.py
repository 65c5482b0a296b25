"""The export tests' shared, really trained run."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobManager
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunFolder
from finetune_core.store import RunStatus, Workspace


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One resnet18 run trained for real on the demo dataset, shared by the export tests."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    dataset = create_demo_dataset(ws, per_class=12, size=40)
    manager = JobManager(ws)
    try:
        run_id = manager.submit(
            RunConfig(
                dataset=dataset.id,
                name="shapes probe",
                model="resnet18",
                weights="none",
                strategy="probe",
                epochs=3,
                image_size=32,
                batch_size=16,
                lr=1e-2,
                channels_last=False,
                mixed_precision="off",
            )
        )
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    run = RunFolder(ws.run_dir(run_id))
    return {"ws": ws, "dataset": dataset, "run": run, "loaded": load_run_model(run)}
