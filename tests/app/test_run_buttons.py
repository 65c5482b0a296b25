"""Every Re-run / Resume / Cancel / Stop / Change-settings button on every page, clicked
through AppTest (issue 13 item 11), and Setup remembering the user's choices (item 10).

The job manager is the real one, built without its worker thread (``start=False``) so
queued runs stay queued and nothing trains; the one Stop test trains a tiny real run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobManager
from finetune_core.store import RunRecord, RunStatus, Workspace
from tests.app.test_pages import assert_ok, open_page, quick, texts, use_workspace, wait_until
from ui import services

FINISHED = "r-20260101-000000-f1n1"
STOPPED = "r-20260101-000000-5709"


@pytest.fixture
def idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Workspace, JobManager]]:
    """A workspace with a dataset, a finished and a stopped run, and a manager whose worker
    is not started (the pages get this very manager)."""
    use_workspace(monkeypatch, tmp_path / "ws")
    st.cache_resource.clear()
    ws = services.get_workspace()
    dataset = create_demo_dataset(ws, per_class=6, size=32)
    config = quick(dataset.id, name="finished", epochs=3, lr=0.02, seed=7)
    for run_id, name, status in ((FINISHED, "finished", RunStatus.SUCCEEDED),
                                 (STOPPED, "stopped", RunStatus.STOPPED)):  # fmt: skip
        ws.add_run(RunRecord(id=run_id, name=name, dataset_id=dataset.id, model="resnet18",
                             strategy="probe", status=status, creator="alice",
                             config=config.replace(name=name).to_dict()))  # fmt: skip
    manager = JobManager(ws, start=False)
    monkeypatch.setattr(services, "_start_manager", lambda root: manager)
    yield ws, manager
    st.cache_resource.clear()
    st.cache_data.clear()


def newest_other_run(ws: Workspace, *known: str) -> RunRecord:
    [new] = [r for r in ws.list_runs() if r.id not in known]
    return new


# ------------------------------------------------------------------ training page
def test_training_rerun_queues_a_copy_and_shows_it(idle: tuple[Workspace, JobManager]) -> None:
    ws, manager = idle
    at = open_page("training", run=FINISHED)
    at.button(key="rerun_run").click().run()
    assert_ok(at)  # was StreamlitAPIException: training_run written after its widget
    new = newest_other_run(ws, FINISHED, STOPPED)
    assert new.status == RunStatus.QUEUED and manager.queue_positions() == {new.id: 1}
    assert new.name == "finished (re-run)"
    assert RunConfig.from_dict(new.config).replace(name="") == RunConfig.from_dict(
        ws.get_run(FINISHED).config
    ).replace(name="")
    assert at.selectbox(key="training_run").value == new.id
    assert at.query_params["run"] == new.id
    assert "Queued at position 1" in texts(at)


def test_training_resume_and_cancel(idle: tuple[Workspace, JobManager]) -> None:
    ws, manager = idle
    at = open_page("training", run=STOPPED)
    at.button(key="resume_run").click().run()
    assert_ok(at)
    assert ws.get_run(STOPPED).status == RunStatus.QUEUED
    assert manager.queue_positions() == {STOPPED: 1}
    assert at.selectbox(key="training_run").value == STOPPED
    at.button(key="cancel_run").click().run()
    assert_ok(at)
    assert ws.get_run(STOPPED).status == RunStatus.STOPPED
    assert manager.queue_positions() == {}


def test_training_change_settings_prefills_setup(idle: tuple[Workspace, JobManager]) -> None:
    ws, _ = idle
    at = open_page("training", run=FINISHED)
    at.button(key="edit_run").click().run()
    assert_ok(at)
    assert at.title[0].value == "Setup"
    config = RunConfig.from_dict(ws.get_run(FINISHED).config)
    assert at.selectbox(key="setup_dataset").value == config.dataset
    assert at.number_input(key="cfg_epochs").value == config.epochs == 3
    assert at.number_input(key="cfg_lr").value == pytest.approx(config.lr) == 0.02
    assert at.number_input(key="cfg_seed").value == 7
    assert at.selectbox(key="cfg_strategy").value == "probe"
    assert at.radio(key="cfg_weights_source").value == "none"
    assert at.text_input(key="cfg_name").value == "", "a new run gets a fresh name"


# ------------------------------------------------------------------ runs page
def test_runs_rerun_resume_cancel_and_change_settings(idle: tuple[Workspace, JobManager]) -> None:
    ws, manager = idle
    at = open_page("runs", run=FINISHED)
    at.button(key="runs_rerun").click().run()
    assert_ok(at)
    assert at.title[0].value == "Training"
    new = newest_other_run(ws, FINISHED, STOPPED)
    assert at.query_params["run"] == new.id and new.status == RunStatus.QUEUED

    at = open_page("runs", run=new.id)
    at.button(key="runs_cancel").click().run()
    assert_ok(at)
    assert ws.get_run(new.id).status == RunStatus.STOPPED and manager.queue_positions() == {}

    at = open_page("runs", run=STOPPED)
    at.button(key="runs_resume").click().run()
    assert_ok(at)
    assert at.title[0].value == "Training" and at.query_params["run"] == STOPPED
    assert ws.get_run(STOPPED).status == RunStatus.QUEUED

    at = open_page("runs", run=FINISHED)
    at.button(key="runs_edit").click().run()
    assert_ok(at)
    assert at.title[0].value == "Setup"
    assert at.number_input(key="cfg_lr").value == pytest.approx(0.02)
    assert at.number_input(key="cfg_epochs").value == 3


def test_home_has_no_run_buttons_but_opens_runs(idle: tuple[Workspace, JobManager]) -> None:
    """Home lists recent runs with links only; Evaluation has no run-control buttons."""
    at = open_page("home")
    keys = {b.key for b in at.button}
    assert not keys & {"rerun_run", "resume_run", "stop_run", "cancel_run", "runs_rerun"}
    links = [p.proto.page for p in at.get("page_link") if p.proto.label == "Open"]
    assert len(links) == 2


# ------------------------------------------------------------------ setup remembers
def test_setup_keeps_the_chosen_dataset_and_starts_with_a_fresh_name(
    idle: tuple[Workspace, JobManager],
) -> None:
    ws, manager = idle
    second = create_demo_dataset(ws, per_class=6, size=32, classes=2, name="second")
    first = next(d for d in ws.list_datasets() if d.id != second.id)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"),
                           default_timeout=90).run()  # fmt: skip
    at.switch_page("views/setup.py").run()
    assert_ok(at)
    picker = at.selectbox(key="setup_dataset")
    assert picker.value == second.id, "the newest dataset first"
    picker.set_value(first.id).run()
    at.switch_page("views/runs.py").run()
    at.switch_page("views/setup.py").run()
    assert_ok(at)
    assert at.selectbox(key="setup_dataset").value == first.id, "kept, not the newest"

    at.radio(key="cfg_weights_source").set_value("none").run()
    at.text_input(key="cfg_name").input("my first try")
    at.text_input(key="cfg_notes").input("lr 1e-2")
    at.run()
    at.button(key="start").click().run()
    assert_ok(at)
    assert at.title[0].value == "Training"
    started = ws.get_run(at.query_params["run"])
    assert started.name == "my first try" and started.dataset_id == first.id
    at.switch_page("views/setup.py").run()
    assert_ok(at)
    assert at.text_input(key="cfg_name").value == ""
    assert at.text_input(key="cfg_notes").value == ""
    assert at.selectbox(key="setup_dataset").value == first.id
    assert manager.queue_positions() == {started.id: 1}


# ------------------------------------------------------------------ stop a real run
@pytest.mark.slow
def test_training_stop_button_stops_a_real_run(tmp_path: Path, monkeypatch) -> None:
    use_workspace(monkeypatch, tmp_path / "ws")
    st.cache_resource.clear()
    try:
        ws = services.get_workspace()
        dataset = create_demo_dataset(ws, per_class=6, size=32)
        manager = services.get_job_manager()
        run_id = manager.submit(quick(dataset.id, strategy="full", epochs=200, name="long"))
        # Running is enough: the stop request is honoured after the next batch. The long
        # timeouts are for a machine busy with other work (the setup decodes the images).
        wait_until(lambda: ws.get_run(run_id).status == RunStatus.RUNNING, timeout=180)
        at = open_page("training", run=run_id)
        at.button(key="stop_run").click().run()
        assert_ok(at)
        assert manager.wait(run_id, timeout=180) == RunStatus.STOPPED
        at.run()
        assert_ok(at)
        assert at.button(key="resume_run") and at.button(key="rerun_run")
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()
