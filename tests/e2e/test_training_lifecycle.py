"""A run belongs to the server, not to the browser tab: it survives a reload and a closed
page, and Stop ends it cleanly with its best checkpoint evaluated."""

from __future__ import annotations

import re
import time

import pytest

from finetune_core.data import ingest, make_demo_folder
from finetune_core.store import RunStatus, Workspace
from tests.helpers.e2e import (
    AppServer,
    click_button,
    live_reading,
    main,
    metric_value,
    open_app,
    run_id_from_url,
    select_option,
    set_number,
    wait_idle,
    wait_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 200
MODEL = "mobilenet_v3_small"  # the lightest model of the zoo: these runs need time, not work


@pytest.fixture(scope="module")
def dataset_id(app_server: AppServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small dataset, imported straight into the server's workspace (the upload itself
    is test_journey's business)."""
    images = make_demo_folder(
        tmp_path_factory.mktemp("images") / "shapes", classes=3, per_class=16, size=48
    )
    return ingest(Workspace(app_server.workspace), images, name="shapes").dataset.id


def start_run(page, server: AppServer, dataset_id: str) -> str:
    """Set up a from-scratch run (Full preset, random weights, no early stopping) on the
    Setup page, start it, and return its id once the Training page shows it.

    The run has far more epochs than the test waits for: each test ends it with Stop, so
    it lasts as long as the test needs it, however fast or busy this machine is."""
    open_app(page, server, f"/setup?dataset={dataset_id}&preset=full")
    select_option(page, "Architecture", MODEL)
    main(page).get_by_text("None (random initialisation)", exact=True).click()
    wait_idle(page)
    main(page).get_by_text("Advanced settings", exact=True).click()
    wait_idle(page)
    early = main(page).get_by_role("checkbox", name="Early stopping")
    if early.is_checked():
        main(page).get_by_text("Early stopping", exact=True).click()
        wait_idle(page)
    assert not early.is_checked()
    set_number(page, "Image size (px)", 32)
    set_number(page, "Epochs", EPOCHS)
    set_number(page, "Batch size", 8)
    click_button(page, "Start training", wait=False)
    page.wait_for_url(re.compile(r"/training\?run=r-"))
    return run_id_from_url(page.url)


def wait_reading(page, check, timeout: float = 120.0, what: str = "") -> dict[str, object]:
    """Poll the live view until ``check(reading)`` holds; return that reading."""
    deadline = time.monotonic() + timeout
    reading: dict[str, object] = {}
    while time.monotonic() < deadline:
        reading = live_reading(page)
        if check(reading):
            return reading
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what or check}; last reading {reading}")


def progress(reading: dict[str, object]) -> tuple[int, float]:
    """How far a run is: epochs on the curves, then the progress bar (0-100)."""
    return int(reading["points"]), float(reading["value"] or 0)


def training(reading: dict[str, object]) -> bool:
    return str(reading["text"]).startswith("Epoch") and not reading["finished"]


def stop_and_wait(page) -> None:
    """Click Stop; wait until the page shows the stopped run (after its evaluation)."""
    main(page).get_by_role("button", name=re.compile(r"\bStop$")).click()
    wait_text(page, "It can resume from its last checkpoint", timeout=300)
    wait_idle(page)
    assert shows_status(page, "Stopped")


def shows_status(page, label: str) -> bool:
    """The run's status badge (an icon, then the label) says ``label``."""
    return main(page).get_by_text(re.compile(rf"(^|\s){label}$")).count() >= 1


def shows_training(reading: dict[str, object]) -> bool:
    """The live view of a training run, with the curves of its first epoch drawn."""
    return training(reading) and bool(reading["points"])


def test_refresh_and_close_during_training(app_server, new_page, dataset_id, shot) -> None:
    page = new_page()
    run_id = start_run(page, app_server, dataset_id)
    before = wait_reading(page, shows_training, what="the first epoch")
    shot(page, "01-training")

    # Reload: the run goes on, and the page attaches to it again and follows it.
    page.reload()
    after = wait_reading(page, shows_training, what="the view after the reload")
    assert run_id_from_url(page.url) == run_id
    assert progress(after) >= progress(before), (before, after)
    wait_reading(page, lambda r: progress(r) > progress(after), what="progress after the reload")
    shot(page, "02-after-reload")

    # Close the page; a while later a new page shows the run further along.
    last_seen = live_reading(page)
    page.close()
    time.sleep(5)
    page = new_page()
    page.goto(f"{app_server.url}/training?run={run_id}")
    later = wait_reading(page, shows_training, what="the view on a new page")
    assert progress(later) > progress(last_seen), (last_seen, later)
    assert Workspace(app_server.workspace).get_run(run_id).status == RunStatus.RUNNING
    shot(page, "03-new-page")

    # End it, so the next test's run does not wait in the queue.
    stop_and_wait(page)
    assert Workspace(app_server.workspace).get_run(run_id).status == RunStatus.STOPPED


def test_stop_during_training(app_server, page, dataset_id, shot) -> None:
    run_id = start_run(page, app_server, dataset_id)
    # One epoch done: there is a best checkpoint to keep.
    wait_reading(page, lambda r: training(r) and r["points"], what="the first epoch")
    stop_and_wait(page)
    record = Workspace(app_server.workspace).get_run(run_id)
    assert record.status == RunStatus.STOPPED
    assert record.best_epoch is not None and 1 <= record.epochs_run < EPOCHS
    shot(page, "01-stopped")

    # The best checkpoint was evaluated: the Evaluation page has its numbers.
    main(page).get_by_role("link", name=re.compile("Open the evaluation")).click()
    page.wait_for_url(re.compile(rf"/evaluation\?run={run_id}"))
    wait_idle(page)
    assert re.fullmatch(r"\d{1,3}\.\d%", metric_value(page, "Accuracy"))
    assert shows_status(page, "Stopped")
    assert (Workspace(app_server.workspace).run_dir(run_id) / "eval.json").is_file()
    shot(page, "02-evaluation")
