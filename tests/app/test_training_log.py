"""The Training page shows a finished run's own log file (issue 13 item 12): why early
stopping ended it, the weights report, and how the fit ended, from run.log, so a server
restart (a fresh job manager, no live lines) still shows them."""

from __future__ import annotations

import pytest

from finetune_core import runs
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobManager
from finetune_core.runs import RunPaths
from finetune_core.store import RunStatus, Workspace
from tests.app.test_pages import app_ws, assert_ok, open_page, quick  # noqa: F401 - fixture


@pytest.mark.slow
def test_training_page_shows_the_run_log_after_the_run(app_ws: Workspace) -> None:  # noqa: F811
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    config = quick(dataset.id, strategy="full", epochs=4, early_stopping=True, es_patience=1,
                   es_min_delta=1.0, schedule="constant", warmup_pct=0.0)  # fmt: skip
    manager = JobManager(app_ws)  # trains, then ends: the page's manager has no live lines
    try:
        run_id = manager.submit(config)
        assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    logged = runs.read_log(RunPaths(app_ws.run_dir(run_id)))
    assert any("early stopping: the best epoch (1) was not beaten" in line for line in logged)

    at = open_page("training", run=run_id)
    assert_ok(at)
    [expander] = [e for e in at.expander if e.label == "Run log"]
    [code] = expander.code
    assert code.value.splitlines() == logged
