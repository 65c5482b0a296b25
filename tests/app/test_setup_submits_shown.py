"""The Setup page submits exactly what it shows (issue 15 item 1): a loaded config whose
values a widget cannot show is refused on load with its reasons, nothing changed; one it
can show is shown as it is, and Start stores exactly the shown values. "Start from run"
sets init_from (issue 14 item 6)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.manager import JobManager
from finetune_core.store import RunStatus, Workspace
from tests.app.test_pages import app_ws, assert_ok, open_page, plain, quick, texts  # noqa: F401
from ui import services

WIDGET_KINDS = ("number_input", "selectbox", "text_input", "checkbox")


def shown(at: AppTest) -> dict[str, Any]:
    """Every config widget's value as the page shows it, by field name."""
    values: dict[str, Any] = {}
    for kind in WIDGET_KINDS:
        for widget in getattr(at, kind):
            if widget.key and widget.key.startswith("cfg_"):
                values[widget.key.removeprefix("cfg_")] = widget.value
    return values


def upload_config(at: AppTest, config: dict[str, Any], name: str = "run.json") -> None:
    data = json.dumps(config).encode()
    at.file_uploader(key="config_upload").set_value((name, data, "application/json"))
    at.run()
    assert_ok(at)


def errors(at: AppTest) -> str:
    return "\n".join(plain(str(e.value)) for e in at.error)


def test_a_config_the_widgets_cannot_show_is_refused_on_load(app_ws: Workspace) -> None:  # noqa: F811
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    before = shown(at)
    assert before["epochs"] == 5 and before["num_threads"] == 0  # the Recommended preset

    upload_config(at, {"epochs": 20_000, "num_threads": 100_000, "momentum": 2})
    text = errors(at)
    assert "These settings were not loaded (nothing changed)" in text
    assert "epochs must be between 1 and 10000 (got 20000)" in text
    assert "num_threads must be between 0 and 1024 (got 100000)" in text
    assert "momentum must be between 0 and 0.999 (got 2.0)" in text
    assert shown(at) == before  # nothing changed
    assert "--epochs 5 " in at.code[-1].value + " "

    upload_config(at, {"lr": "NaN"}, name="nan.json")
    assert "lr must be a finite number (got 'NaN')" in errors(at)
    assert shown(at) == before


def test_a_config_within_the_ranges_is_shown_as_it_is(app_ws: Workspace) -> None:  # noqa: F811
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    config = {"epochs": 5000, "num_threads": 1024, "seed": 2**31 - 1, "lr": 7.5, "weights": "none"}
    upload_config(at, config)
    assert not at.error, errors(at)
    values = shown(at)
    assert (values["epochs"], values["num_threads"], values["seed"]) == (5000, 1024, 2**31 - 1)
    assert values["lr"] == pytest.approx(7.5)
    assert "--epochs 5000" in at.code[-1].value


def test_a_queued_config_from_another_page_is_checked_the_same_way(app_ws: Workspace) -> None:  # noqa: F811
    # Runs -> "Open in Setup" queues an old run's config; one from before the ranges
    # (image_size 100000) is refused with its reason instead of showing 1024 and running
    # 100000.
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    before = shown(at)
    old = {**RunConfig(dataset=dataset.id).to_dict(), "image_size": 100_000, "nodes": 2}
    at.session_state["setup_pending_config"] = old
    at.run()
    assert_ok(at)
    text = errors(at)
    assert "image_size must be between 16 and 1024 (got 100000)" in text
    assert "nodes=2: runs on several machines start from the command line" in text
    assert shown(at) == before


def test_a_form_value_its_widget_cannot_show_is_replaced_by_the_shown_one(
    app_ws: Workspace,  # noqa: F811
) -> None:
    # The safety net under the load checks: whatever puts a value into the form that its
    # widget cannot show, the widget's value wins, is said, and Start waits a rerun.
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    values = at.session_state["setup_values"]
    at.session_state["setup_values"] = {**values, "epochs": 20_000}
    at.run()
    assert_ok(at)
    assert "epochs was 20000, which this field cannot show; it is now 5" in errors(at)
    assert at.button(key="start").disabled
    assert at.number_input(key="cfg_epochs").value == 5
    assert at.session_state["setup_values"]["epochs"] == 5
    at.run()
    assert "--epochs 5 " in at.code[-1].value


@pytest.mark.slow
def test_start_submits_exactly_the_shown_values_and_the_start_run(app_ws: Workspace) -> None:  # noqa: F811
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    manager = JobManager(app_ws)
    try:
        first = manager.submit(quick(dataset.id, epochs=1, name="first"), creator="")
        assert manager.wait(first, timeout=180) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()

    at = open_page("setup", dataset=dataset.id)
    at.radio(key="cfg_weights_source").set_value("none").run()
    loaded = quick(
        dataset.id, name="loaded", epochs=1, seed=12345, num_threads=1, lr=0.0123, lr_mult=7.0,
        warmup_pct=0.3, es_min_delta=0.002, es_patience=4, label_smoothing=0.1, probe_views=1,
        grad_clip=2.5, weight_decay=0.02, notes="from a file",
    ).to_dict()  # fmt: skip
    upload_config(at, loaded)
    assert not at.error, errors(at)
    options = at.selectbox(key="cfg_init_from").options
    assert options[0].startswith("none") and any(first in o for o in options)
    at.selectbox(key="cfg_init_from").set_value(first).run()
    assert_ok(at)
    assert "validation accuracy" in texts(at)
    values = shown(at)
    for name in ("epochs", "seed", "num_threads", "lr", "strategy", "image_size", "init_from"):
        assert name in values, f"{name} has no widget on the page"

    at.button(key="start").click().run()
    assert_ok(at)
    runs = [r for r in app_ws.list_runs() if r.id != first]
    [run] = runs
    stored = run.config
    for name, value in values.items():
        if name == "batch_auto":  # the checkbox for batch_size="auto"
            assert (stored["batch_size"] == "auto") is value
            continue
        if isinstance(value, float):
            assert math.isclose(stored[name], value, rel_tol=1e-9), name
        else:
            assert stored[name] == value, (name, stored[name], value)
    assert stored["init_from"] == first
    assert (stored["seed"], stored["num_threads"], stored["epochs"]) == (12345, 1, 1)
    assert stored["weights"] == "none"
    live = services.get_job_manager()
    live.stop(run.id)
    live.wait(run.id, timeout=180)
